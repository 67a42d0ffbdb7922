//! The master's QUIC endpoint: agents join here and keep one control stream
//! open per connection, over which the master pushes desired state.
//!
//! Each connection is handled in its own task; a bad peer (garbage, oversized
//! frames, wrong identity) ends only its own connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use fogmesh_common::codec::{forward_frames, read_frame, write_frame, CodecError};
use fogmesh_common::pki::{cert_fingerprint_der, cert_fingerprint_pem, cert_validity_der};
use fogmesh_common::tls::peer_certificate_der;
use fogmesh_common::wire::{AgentMessage, DesiredState, MasterMessage, Refusal};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::policy_keeper;

/// How long a new connection may take to say who it is.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

pub async fn serve(cluster: Arc<Cluster>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            if let Err(e) = handle_connection(cluster, incoming).await {
                tracing::info!(%peer, error = %format!("{e:#}"), "agent connection ended");
            }
        });
    }
}

async fn handle_connection(cluster: Arc<Cluster>, incoming: quinn::Incoming) -> Result<()> {
    let conn = incoming.await.context("QUIC handshake")?;
    let peer = conn.remote_address();
    let (mut send, mut recv) = tokio::time::timeout(FIRST_FRAME_TIMEOUT, conn.accept_bi())
        .await
        .context("no control stream opened in time")??;
    let first: AgentMessage = tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut recv))
        .await
        .context("no first frame in time")??
        .ok_or_else(|| anyhow!("stream closed before the first frame"))?;
    match first {
        AgentMessage::Join(req) => {
            let reply = match cluster.join(&req).await {
                Ok(resp) => MasterMessage::Joined(resp),
                Err(reason) => {
                    tracing::warn!(%peer, public_ip = %req.public_ip, %reason, "join refused");
                    MasterMessage::Refused { reason, kind: Refusal::Other }
                }
            };
            finish_with(&conn, &mut send, &reply).await
        }
        AgentMessage::Renew { csr_pem } => {
            // Typically from a node back after its certificate expired: the
            // handshake let the expired certificate through for this alone.
            let cert = peer_certificate_der(&conn);
            let reply = match renew(&cluster, cert.as_deref(), &csr_pem).await {
                Ok((node, cert_pem)) => {
                    tracing::info!(%peer, %node, "certificate renewed for a returning node");
                    MasterMessage::Renewed { cert_pem }
                }
                Err((reason, kind)) => {
                    tracing::warn!(%peer, %reason, "certificate renewal refused");
                    MasterMessage::Refused { reason, kind }
                }
            };
            finish_with(&conn, &mut send, &reply).await
        }
        AgentMessage::Hello(hello) => {
            let cert = peer_certificate_der(&conn);
            if let Some(reason) = cert.as_deref().and_then(expired) {
                tracing::warn!(%peer, node = %hello.node_name, %reason, "agent refused");
                return finish_with(&conn, &mut send, &MasterMessage::Refused { reason, kind: Refusal::Other }).await;
            }
            match cluster.hello(cert.as_deref(), &hello).await {
                Ok(node) => {
                    let presented = cert.as_deref().map(cert_fingerprint_der).unwrap_or_default();
                    control_loop(cluster, conn, send, recv, Session { node, presented }, hello.acked_generation).await
                }
                Err((reason, kind)) => {
                    tracing::warn!(%peer, node = %hello.node_name, %reason, "agent refused");
                    finish_with(&conn, &mut send, &MasterMessage::Refused { reason, kind }).await
                }
            }
        }
        other => {
            let reason = format!("expected Join or Hello as the first frame, got {}", message_name(&other));
            finish_with(&conn, &mut send, &MasterMessage::Refused { reason, kind: Refusal::Other }).await
        }
    }
}

/// Sends a last message and waits briefly for the agent to read it.
async fn finish_with(conn: &quinn::Connection, send: &mut SendStream, msg: &MasterMessage) -> Result<()> {
    write_frame(send, msg).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    Ok(())
}

/// Which node a session is, and the certificate it connected with (renewals
/// in the session replace it).
struct Session {
    node: String,
    presented: String,
}

/// A renewal for the certificate a connection holds: the node and its new certificate.
/// Revocation wins: a removed node learns it here, as at a hello.
async fn renew(cluster: &Cluster, cert_der: Option<&[u8]>, csr_pem: &str) -> Result<(String, String), (String, Refusal)> {
    let der = cert_der.ok_or_else(|| ("no client certificate: join first with a token (fogmesh-agent join)".to_string(), Refusal::Other))?;
    let node = cluster.node_of_certificate(der)?;
    let cert_pem = cluster.renew_certificate(&node, &cert_fingerprint_der(der), csr_pem).await.map_err(|reason| (reason, Refusal::Other))?;
    Ok((node, cert_pem))
}

/// Why an expired certificate may not open a session (it may only renew).
fn expired(der: &[u8]) -> Option<String> {
    let (_, not_after) = cert_validity_der(der).ok()?;
    (not_after < std::time::SystemTime::now()).then(|| {
        "the node certificate has expired; the agent renews it first (update the agent if it does not)".to_string()
    })
}

async fn control_loop(
    cluster: Arc<Cluster>,
    conn: quinn::Connection,
    mut send: SendStream,
    recv: RecvStream,
    session: Session,
    agent_generation: u64,
) -> Result<()> {
    let node = session.node.clone();
    let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    let peer = conn.remote_address();
    cluster.mark_connected(&node, id);
    tracing::info!(%node, %peer, agent_generation, "agent connected");
    let result = run_session(&cluster, &mut send, recv, session, id, agent_generation, peer).await;
    if result.is_ok() {
        // Dropping the connection discards unsent frames: let the agent read
        // the last ones (e.g. a removal) and hang up first.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
    cluster.mark_disconnected(&node, id);
    tracing::info!(%node, %peer, "agent disconnected");
    result
}

async fn run_session(
    cluster: &Arc<Cluster>,
    send: &mut SendStream,
    recv: RecvStream,
    session: Session,
    id: u64,
    agent_generation: u64,
    peer: SocketAddr,
) -> Result<()> {
    let Session { node, mut presented } = session;
    let node = node.as_str();
    let heartbeat_ms = cluster.config.heartbeat_interval.as_millis() as u64;
    write_frame(send, &MasterMessage::Welcome { node_name: node.to_string(), heartbeat_interval_ms: heartbeat_ms }).await?;
    // Where to send metrics: at every session, so a changed broker reaches every agent.
    write_frame(send, &MasterMessage::Metrics(cluster.config.metrics.clone())).await?;
    // The node is ready now: hostless workloads may be placed on it.
    cluster.reschedule_soon();

    let mut desired_changed = cluster.watch_desired();
    let mut sent = agent_generation;
    sent = push_if_newer(cluster, send, node, sent).await?;

    let (tx, mut frames) = mpsc::channel::<Result<AgentMessage, CodecError>>(16);
    let reader = tokio::spawn(forward_frames(recv, tx));
    // No periodic tick per session: at thousands of sessions the wake-ups
    // alone cost more than the heartbeats. A frame pushes the silence
    // deadline back, and is when a replaced connection notices.
    let silence = tokio::time::sleep(cluster.config.offline_after);
    tokio::pin!(silence);
    let (taken_tx, mut taken_rx) = mpsc::channel::<i64>(4);
    // Renewals wait for the disk: off the loop, like scaling reports.
    let (renewed_tx, mut renewed_rx) = mpsc::channel::<Result<String, String>>(1);
    let result = loop {
        tokio::select! {
            Some(renewal) = renewed_rx.recv() => match renewal {
                Ok(cert_pem) => {
                    presented = cert_fingerprint_pem(&cert_pem)?;
                    write_frame(send, &MasterMessage::Renewed { cert_pem }).await?;
                }
                Err(reason) => {
                    tracing::warn!(%node, %reason, "certificate renewal refused");
                    let _ = write_frame(send, &MasterMessage::Refused { reason, kind: Refusal::Other }).await;
                    let _ = send.finish();
                    break Ok(());
                }
            },
            Some(up_to_ms) = taken_rx.recv() => {
                write_frame(send, &MasterMessage::ScalingReportTaken { up_to_ms }).await?;
            }
            frame = frames.recv() => {
                let msg = match frame {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => break Err(anyhow!(e).context(format!("bad frame from node {node} at {peer}"))),
                    None => break Ok(()),
                };
                silence.as_mut().reset(tokio::time::Instant::now() + cluster.config.offline_after);
                if !cluster.is_current_connection(node, id) {
                    break Err(anyhow!("a newer connection of node {node} replaced this one"));
                }
                // None of these waits for the disk: heartbeats keep flowing.
                match msg {
                    AgentMessage::Heartbeat => cluster.record_seen(node),
                    AgentMessage::Ack { generation } => cluster.record_ack(node, generation)?,
                    AgentMessage::Status(status) => cluster.record_status(node, &status)?,
                    AgentMessage::Renew { csr_pem } => {
                        let (cluster, node, presented, renewed) = (cluster.clone(), node.to_string(), presented.clone(), renewed_tx.clone());
                        tokio::spawn(async move {
                            let _ = renewed.send(cluster.renew_certificate(&node, &presented, &csr_pem).await).await;
                        });
                    }
                    AgentMessage::ScalingReport(decisions) => {
                        // Off the loop: recording and adopting waits for the disk.
                        let (cluster, node, taken) = (cluster.clone(), node.to_string(), taken_tx.clone());
                        tokio::spawn(async move {
                            match policy_keeper::take_report(&cluster, &node, decisions).await {
                                Ok(up_to) => {
                                    let _ = taken.send(up_to).await;
                                }
                                Err(e) => tracing::warn!(%node, error = %format!("{e:#}"), "cannot take the agent's scaling report; it will send it again"),
                            }
                        });
                    }
                    other => break Err(anyhow!("unexpected {} from node {node}", message_name(&other))),
                }
            }
            changed = desired_changed.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                match cluster.store.with_node(node, |n| n.holds_cert(&presented)) {
                    None => {
                        // Decommission: the agent drops its containers, then is refused.
                        let empty = DesiredState { generation: cluster.store.next_generation()?, ..Default::default() };
                        let _ = push(send, &empty).await;
                        let reason = "this node was removed from the cluster and its certificate revoked".to_string();
                        let _ = write_frame(send, &MasterMessage::Refused { reason, kind: Refusal::Revoked }).await;
                        let _ = send.finish();
                        break Ok(());
                    }
                    Some(false) => {
                        // Another agent joined as this node: its containers are that agent's now.
                        let reason = "another agent joined as this node (--replace); this agent's certificate is revoked".to_string();
                        let _ = write_frame(send, &MasterMessage::Refused { reason, kind: Refusal::Replaced }).await;
                        let _ = send.finish();
                        break Ok(());
                    }
                    Some(true) => {}
                }
                sent = push_if_newer(cluster, send, node, sent).await?;
            }
            () = &mut silence => {
                break Err(anyhow!("node {node} was silent for {:?}", cluster.config.offline_after));
            }
        }
    };
    reader.abort();
    result
}

/// Sends the node's desired state if it is newer than what the agent has.
async fn push_if_newer(cluster: &Cluster, send: &mut SendStream, node: &str, sent: u64) -> Result<u64> {
    let desired = cluster.store.desired(node)?;
    if desired.generation > sent {
        tracing::info!(%node, generation = desired.generation, containers = desired.containers.len(), "sending desired state");
        push(send, &desired).await?;
        return Ok(desired.generation);
    }
    Ok(sent)
}

/// One frame per app, then the end marker: the frame limit bounds one app
/// on one node (checked at submit), never the node's whole state.
async fn push(send: &mut SendStream, desired: &DesiredState) -> Result<()> {
    let parts = desired.per_app();
    let apps = parts.len() as u32;
    for app in parts {
        write_frame(send, &MasterMessage::DesiredApp { generation: desired.generation, app }).await?;
    }
    write_frame(send, &MasterMessage::DesiredDone { generation: desired.generation, apps }).await?;
    Ok(())
}

fn message_name(msg: &AgentMessage) -> &'static str {
    match msg {
        AgentMessage::Join(_) => "Join",
        AgentMessage::Hello(_) => "Hello",
        AgentMessage::Heartbeat => "Heartbeat",
        AgentMessage::Ack { .. } => "Ack",
        AgentMessage::Status(_) => "Status",
        AgentMessage::ScalingReport(_) => "ScalingReport",
        AgentMessage::Renew { .. } => "Renew",
    }
}
