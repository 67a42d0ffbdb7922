//! The agent's link to the master: joining with a token, then a session
//! loop that reconnects forever with exponential back-off and jitter.
//!
//! Invariant: a desired state is acked only after the persister reported it
//! durable; the session loop never waits for the disk itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use fogmesh_common::codec::{forward_frames, read_frame, write_frame};
use fogmesh_common::pki::{cert_validity, node_key_and_csr, renewal_due, JoinToken};
use fogmesh_common::tls::{quic_join_client_config, quic_node_client_config, QuicTiming};
use fogmesh_common::wire::{
    AgentMessage, AppDesired, Capacity, DesiredState, Hello, JoinRequest, MasterMessage, MetricsSettings, NodeStatus, Refusal, PROTOCOL_VERSION,
};
use quinn::Endpoint;
use tokio::sync::{mpsc, watch};

use crate::autonomy::{Autonomy, Link};
use crate::identity::{CurrentIdentity, Identity, NodeInfo};
use crate::persister::Command;
use crate::silence::SilenceWatch;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a master that finished the handshake may take to welcome the
/// node. While thousands of nodes reconnect at once the master queues
/// their hellos for many seconds; leaving then throws the handshake away
/// and queues another (at 10 s, 1,384 of 10,000 simulated nodes did). A
/// dead master is noticed sooner: the session's idle timeout ends it.
const WELCOME_PATIENCE: Duration = Duration::from_secs(60);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct JoinOptions {
    pub master: String,
    pub token: String,
    pub public_ip: Option<String>,
    pub name: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Take over a node already registered with this public IP.
    pub replace: bool,
}

/// Presents the join token and a CSR; returns the identity the master
/// issued and where to send metrics.
pub async fn join(opts: &JoinOptions) -> Result<(Identity, MetricsSettings)> {
    let token: JoinToken = opts.token.trim().parse().map_err(|e| anyhow!("malformed join token: {e}"))?;
    let (addr, host) = resolve(&opts.master).await?;
    let public_ip = match &opts.public_ip {
        Some(ip) => ip.parse::<IpAddr>().with_context(|| format!("--public-ip {ip} is not an IP address"))?.to_string(),
        None => detect_ip_towards(addr)?,
    };
    let asked_name = opts.name.clone().unwrap_or_else(|| format!("node-{}", public_ip.replace(['.', ':'], "-")));
    let (key_pem, csr_pem) = node_key_and_csr(&asked_name)?;
    let endpoint = client_endpoint(addr)?;
    let config = quic_join_client_config(&token.ca_fingerprint)?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with(config, addr, &host)?)
        .await
        .with_context(|| format!("no answer from the master at {} within {CONNECT_TIMEOUT:?}", opts.master))?
        .with_context(|| format!("connect to the master at {} (does the token belong to this master?)", opts.master))?;
    let (mut send, mut recv) = conn.open_bi().await.context("open the join stream")?;
    let request = JoinRequest {
        protocol_version: PROTOCOL_VERSION,
        token: opts.token.trim().to_string(),
        csr_pem,
        name: opts.name.clone(),
        public_ip: public_ip.clone(),
        labels: opts.labels.clone(),
        replace: opts.replace,
    };
    write_frame(&mut send, &AgentMessage::Join(request)).await?;
    let reply: Option<MasterMessage> = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut recv)).await.context("the master did not answer the join")??;
    conn.close(0u32.into(), b"joined");
    match reply {
        Some(MasterMessage::Joined(resp)) => Ok((
            Identity {
                info: NodeInfo { node_name: resp.node_name, master: opts.master.clone(), public_ip, labels: opts.labels.clone() },
                key_pem,
                cert_pem: resp.cert_pem,
                ca_pem: resp.ca_pem,
            },
            resp.metrics,
        )),
        Some(MasterMessage::Refused { reason, .. }) => bail!("the master refused to join this node: {reason}"),
        Some(_) => bail!("the master answered the join with an unexpected message"),
        None => bail!("the master closed the connection without answering the join"),
    }
}

/// What a session needs from the rest of the agent.
pub struct SessionContext {
    /// Who the node is; renewals in a session replace key and certificate.
    pub identity: CurrentIdentity,
    /// Where complete desired states go to be stored (and then applied).
    pub commands: mpsc::UnboundedSender<Command>,
    /// Newest durably stored generation: what the agent acks.
    pub durable: watch::Receiver<u64>,
    pub status: watch::Receiver<NodeStatus>,
    pub capacity: Capacity,
    pub runtime_version: String,
    pub timing: QuicTiming,
    /// A shared client endpoint (the simulator runs many nodes on one); the
    /// agent opens one per session when `None`.
    pub endpoint: Option<Endpoint>,
    /// Where the master's metrics settings go (the metrics pipeline keeps them).
    pub metrics_settings: Option<watch::Sender<Option<MetricsSettings>>>,
    /// Whether a session is up, for the local scaling policies.
    pub link: Option<watch::Sender<Link>>,
    /// Local scaling decisions to report once the master is back.
    pub autonomy: Option<Arc<Autonomy>>,
}

/// Keeps a session with the master open, reconnecting forever. Workloads
/// keep running whatever happens here.
pub async fn run_forever(ctx: SessionContext) {
    let node = ctx.identity.get().info.node_name.clone();
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let result = session(&ctx).await;
        if let Some(link) = &ctx.link {
            link.send_if_modified(|l| {
                let was_up = *l == Link::Up;
                if was_up {
                    *l = Link::Down { since: Instant::now() };
                }
                was_up
            });
        }
        match result {
            Ok(()) => tracing::info!(%node, "the master closed the session; workloads keep running"),
            Err(SessionError::Refused { reason, kind: Refusal::Revoked }) => {
                tracing::error!(%node, %reason, "the master removed this node: removing its workloads; join again with a new token to return");
                let _ = ctx.commands.send(Command::Decommission { reason });
                backoff = MAX_BACKOFF;
            }
            Err(SessionError::Refused { reason, kind: Refusal::Replaced }) => {
                tracing::error!(%node, %reason, "another agent took over this node: leaving its containers alone; this agent does nothing more");
                let _ = ctx.commands.send(Command::HandOff { reason });
                backoff = MAX_BACKOFF;
            }
            Err(SessionError::Refused { reason, .. }) => {
                // Keep the identity and the workloads; an operator must act.
                tracing::error!(%node, %reason, "the master refused this node; workloads keep running; retrying later");
                backoff = MAX_BACKOFF;
            }
            Err(SessionError::Failed(e)) => tracing::warn!(%node, "{e:#}; workloads keep running"),
        }
        // A session that lasted was a success: start over from the shortest wait.
        if started.elapsed() > Duration::from_secs(30) && backoff < MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        let wait = with_jitter(backoff);
        tracing::info!(%node, retry_in = ?wait, "reconnecting to the master");
        tokio::time::sleep(wait).await;
        backoff = next_backoff(backoff);
    }
}

enum SessionError {
    Refused { reason: String, kind: Refusal },
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SessionError {
    fn from(e: E) -> Self {
        SessionError::Failed(e.into())
    }
}

async fn session(ctx: &SessionContext) -> Result<(), SessionError> {
    let identity = ctx.identity.get();
    let master = identity.info.master.clone();
    let (addr, host) = resolve(&master).await?;
    let endpoint = match &ctx.endpoint {
        Some(e) => e.clone(),
        None => client_endpoint(addr)?,
    };
    let connect = |identity: &Identity| -> Result<quinn::Connecting> {
        let config = quic_node_client_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem, &ctx.timing)?;
        Ok(endpoint.connect_with(config, addr, &host)?)
    };
    let reach = |connecting: quinn::Connecting| async {
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow!("master unreachable: no answer from {master} within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| anyhow!("master unreachable at {master}: {e}"))
    };
    let identity = if certificate_expired(&identity.cert_pem) {
        // Back after the certificate ran out: the old key proves who this
        // is one last time, for a new certificate (no new token needed).
        let conn = reach(connect(&identity)?).await?;
        let renewed = renew_expired(ctx, &conn).await;
        conn.close(0u32.into(), b"renewed");
        renewed?;
        ctx.identity.get()
    } else {
        identity
    };
    let conn = reach(connect(&identity)?).await?;
    let result = run_session(ctx, &identity, &conn).await;
    // Say why the link ended in terms of the link when it was the link.
    let result = match (result, conn.close_reason()) {
        (Err(SessionError::Failed(e)), Some(reason)) => Err(SessionError::Failed(link_failure(&master, &reason, &ctx.timing, &conn.stats()).unwrap_or(e))),
        (other, _) => other,
    };
    conn.close(0u32.into(), b"bye");
    result
}

/// The path's figures say whether it was slow or lossy before it went silent.
fn unreachable_message(master: &str, silent: Duration, stats: &quinn::ConnectionStats) -> String {
    format!(
        "master unreachable: no answer from {master} for {silent:.1?} (round trip was {:.1?}, {} of {} packets lost)",
        stats.path.rtt, stats.path.lost_packets, stats.path.sent_packets
    )
}

/// A readable account of a connection that ended, or `None` when the
/// connection itself is fine (the failure was elsewhere).
fn link_failure(master: &str, reason: &quinn::ConnectionError, timing: &QuicTiming, stats: &quinn::ConnectionStats) -> Option<anyhow::Error> {
    use quinn::ConnectionError::*;
    Some(match reason {
        TimedOut => anyhow!("{}", unreachable_message(master, timing.idle_timeout, stats)),
        ApplicationClosed(close) => anyhow!("the master at {master} closed the connection: {}", String::from_utf8_lossy(&close.reason)),
        Reset => anyhow!("the master at {master} no longer knows this session (it restarted, or ended the session while this node was silent)"),
        LocallyClosed => return None,
        other => anyhow!("lost the connection to the master at {master}: {other}"),
    })
}

/// Whether a certificate's time is up (an unreadable one counts as not:
/// the master says what is wrong with it).
fn certificate_expired(cert_pem: &str) -> bool {
    cert_validity(cert_pem).is_ok_and(|(_, not_after)| not_after <= SystemTime::now())
}

/// The whole exchange of a connection made with an expired certificate.
async fn renew_expired(ctx: &SessionContext, conn: &quinn::Connection) -> Result<(), SessionError> {
    let node = ctx.identity.get().info.node_name;
    let (key_pem, csr_pem) = node_key_and_csr(&node)?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &AgentMessage::Renew { csr_pem }).await?;
    match tokio::time::timeout(WELCOME_PATIENCE, read_frame(&mut recv)).await.map_err(|_| anyhow!("the master did not answer the renewal within {WELCOME_PATIENCE:?}"))?? {
        Some(MasterMessage::Renewed { cert_pem }) => {
            ctx.identity.renewed(key_pem, cert_pem).context("store the renewed certificate")?;
            tracing::info!(%node, "the expired node certificate was renewed");
            Ok(())
        }
        Some(MasterMessage::Refused { reason, kind }) => Err(SessionError::Refused { reason, kind }),
        Some(_) => Err(anyhow!("the master answered the renewal with an unexpected message").into()),
        None => Err(anyhow!("the master closed the renewal without an answer").into()),
    }
}

/// When the session asks for a new certificate: at two thirds of this one's life.
fn renewal_instant(cert_pem: &str) -> tokio::time::Instant {
    let due = renewal_due(cert_pem).unwrap_or_else(|_| SystemTime::now() + Duration::from_secs(3600));
    tokio::time::Instant::now() + due.duration_since(SystemTime::now()).unwrap_or_default()
}

/// If the master does not answer a renewal, the session asks again after this.
const RENEWAL_RETRY: Duration = Duration::from_secs(60);

async fn run_session(ctx: &SessionContext, identity: &Identity, conn: &quinn::Connection) -> Result<(), SessionError> {
    let info = &identity.info;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut durable = ctx.durable.clone();
    let acked = *durable.borrow_and_update();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node_name: info.node_name.clone(),
        public_ip: info.public_ip.clone(),
        labels: info.labels.clone(),
        capacity: ctx.capacity.clone(),
        runtime_version: ctx.runtime_version.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        acked_generation: acked,
    };
    write_frame(&mut send, &AgentMessage::Hello(hello)).await?;
    let heartbeat = match tokio::time::timeout(WELCOME_PATIENCE, read_frame(&mut recv))
        .await
        .map_err(|_| anyhow!("the master at {} did not welcome this node within {WELCOME_PATIENCE:?}", info.master))??
    {
        Some(MasterMessage::Welcome { heartbeat_interval_ms, .. }) => Duration::from_millis(heartbeat_interval_ms.clamp(500, 60_000)),
        Some(MasterMessage::Refused { reason, kind }) => return Err(SessionError::Refused { reason, kind }),
        Some(_) => return Err(anyhow!("the master did not welcome this node").into()),
        None => return Err(anyhow!("the master closed the stream").into()),
    };
    tracing::info!(master = %info.master, node = %info.node_name, generation = acked, "connected to the master");
    if let Some(link) = &ctx.link {
        link.send_replace(Link::Up);
    }
    if let Some(autonomy) = &ctx.autonomy {
        let report = autonomy.pending_report();
        if !report.is_empty() {
            tracing::info!(decisions = report.len(), "reporting the scaling decisions made while offline");
            write_frame(&mut send, &AgentMessage::ScalingReport(report)).await?;
        }
    }

    let (tx, mut frames) = mpsc::channel(8);
    let reader = tokio::spawn(forward_frames(recv, tx));
    let mut status = ctx.status.clone();
    let mut tick = tokio::time::interval(heartbeat);
    let counts = || {
        let stats = conn.stats();
        (stats.udp_rx.datagrams, stats.udp_tx.datagrams)
    };
    let (received, sent) = counts();
    let mut silence = SilenceWatch::new(&ctx.timing, received, sent, Instant::now());
    let mut look = tokio::time::interval(silence.period());
    let mut incoming = IncomingState::default();
    let mut renew_at = renewal_instant(&identity.cert_pem);
    // The new key of a renewal the master has not answered yet.
    let mut renewing: Option<String> = None;
    let first = status.borrow_and_update().clone();
    write_frame(&mut send, &AgentMessage::Status(first)).await?;
    let result = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(MasterMessage::DesiredApp { generation, app })) => incoming.add(generation, app),
                Some(Ok(MasterMessage::DesiredDone { generation, apps })) => {
                    let state = match incoming.finish(generation, apps) {
                        Ok(state) => state,
                        Err(e) => break Err(e.into()),
                    };
                    let stored = *durable.borrow();
                    if state.generation <= stored {
                        // Already durable: ack at once (e.g. a resend after reconnect).
                        write_frame(&mut send, &AgentMessage::Ack { generation: stored }).await?;
                    } else {
                        tracing::info!(generation = state.generation, containers = state.containers.len(), "new desired state received");
                        let _ = ctx.commands.send(Command::Apply(state));
                    }
                }
                Some(Ok(MasterMessage::Refused { reason, kind })) => break Err(SessionError::Refused { reason, kind }),
                Some(Ok(MasterMessage::ScalingReportTaken { up_to_ms })) => {
                    if let Some(autonomy) = &ctx.autonomy {
                        autonomy.report_taken(up_to_ms);
                    }
                }
                Some(Ok(MasterMessage::Metrics(settings))) => {
                    if let Some(tx) = &ctx.metrics_settings {
                        tx.send_if_modified(|current| {
                            let changed = current.as_ref() != Some(&settings);
                            *current = Some(settings);
                            changed
                        });
                    }
                }
                Some(Ok(MasterMessage::Renewed { cert_pem })) => match renewing.take() {
                    Some(key_pem) => match ctx.identity.renewed(key_pem, cert_pem) {
                        Ok(()) => {
                            renew_at = renewal_instant(&ctx.identity.get().cert_pem);
                            tracing::info!(node = %info.node_name, "node certificate renewed");
                        }
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot take the renewed certificate; asking again later"),
                    },
                    None => tracing::warn!("ignoring a certificate this node did not ask for"),
                },
                Some(Ok(_)) => tracing::warn!("ignoring an unexpected message from the master"),
                Some(Err(e)) => break Err(anyhow::Error::from(e).context("bad frame from the master").into()),
                None => break Ok(()),
            },
            changed = durable.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let generation = *durable.borrow_and_update();
                write_frame(&mut send, &AgentMessage::Ack { generation }).await?;
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let current = status.borrow_and_update().clone();
                write_frame(&mut send, &AgentMessage::Status(current)).await?;
            }
            _ = tick.tick() => write_frame(&mut send, &AgentMessage::Heartbeat).await?,
            () = tokio::time::sleep_until(renew_at) => {
                let (key_pem, csr_pem) = node_key_and_csr(&info.node_name)?;
                renewing = Some(key_pem);
                renew_at = tokio::time::Instant::now() + RENEWAL_RETRY;
                tracing::info!(node = %info.node_name, "renewing the node certificate");
                write_frame(&mut send, &AgentMessage::Renew { csr_pem }).await?;
            }
            _ = look.tick() => {
                let (received, sent) = counts();
                if let Some(silent) = silence.silent(received, sent, Instant::now()) {
                    let message = unreachable_message(&info.master, silent.for_, &conn.stats());
                    break Err(anyhow!("{message}; {} datagrams sent meanwhile went unanswered", silent.unanswered).into());
                }
            }
        }
    };
    reader.abort();
    result
}

/// A desired state arriving app by app.
#[derive(Default)]
struct IncomingState {
    generation: u64,
    parts: Vec<AppDesired>,
}

impl IncomingState {
    fn add(&mut self, generation: u64, app: AppDesired) {
        if generation != self.generation {
            self.generation = generation;
            self.parts.clear();
        }
        self.parts.push(app);
    }

    /// The whole state once `DesiredDone` arrived, if every part came.
    fn finish(&mut self, generation: u64, apps: u32) -> Result<DesiredState> {
        let parts = if generation == self.generation { std::mem::take(&mut self.parts) } else { Vec::new() };
        if parts.len() != apps as usize {
            bail!("the master sent {} of {apps} app parts of desired state {generation}", parts.len());
        }
        Ok(DesiredState::from_parts(generation, parts))
    }
}

/// `HOST:PORT` to an address and the name to verify the master as.
async fn resolve(master: &str) -> Result<(SocketAddr, String)> {
    let (host, _) = master.rsplit_once(':').ok_or_else(|| anyhow!("--master {master} must be HOST:PORT"))?;
    let addr = tokio::net::lookup_host(master)
        .await
        .with_context(|| format!("resolve the master address {master}"))?
        .next()
        .ok_or_else(|| anyhow!("the master address {master} resolves to nothing"))?;
    Ok((addr, host.trim_matches(['[', ']']).to_string()))
}

fn client_endpoint(master: SocketAddr) -> Result<Endpoint> {
    let bind: SocketAddr = if master.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse()?;
    Endpoint::client(bind).context("open a UDP socket for QUIC")
}

/// The local address this machine uses to reach the master (no packet is
/// sent). Behind NAT pass --public-ip instead.
fn detect_ip_towards(master: SocketAddr) -> Result<String> {
    let bind = if master.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(master)?;
    Ok(socket.local_addr()?.ip().to_string())
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// Spreads reconnects of many agents: a random factor between 0.5 and 1.5.
fn with_jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let factor = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte) {
        Ok(()) => 0.5 + f64::from(byte[0]) / 255.0,
        Err(_) => 1.0,
    };
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_and_jitter_stays_within_half() {
        let mut b = MIN_BACKOFF;
        let mut seen = vec![];
        for _ in 0..8 {
            seen.push(b.as_secs());
            b = next_backoff(b);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60]);
        let waits: Vec<Duration> = (0..200).map(|_| with_jitter(Duration::from_secs(10))).collect();
        assert!(waits.iter().all(|w| *w >= Duration::from_secs(5) && *w <= Duration::from_secs(15)));
        assert!(waits.iter().any(|w| *w != waits[0]), "jitter varies");
    }

    /// A master that takes longer than the connect timeout to welcome a
    /// node, as one does while thousands reconnect at once. The agent must
    /// keep the session it has: giving up throws a finished TLS handshake
    /// away and adds another to the master's queue.
    #[tokio::test]
    async fn a_slow_welcome_keeps_the_session() {
        use fogmesh_common::pki::ClusterCa;
        use fogmesh_common::tls::quic_server_config;

        let ca = ClusterCa::generate("test").expect("ca");
        let (cert, key) = ca.issue_server_cert(&["127.0.0.1".to_string()]).expect("server cert");
        let server = quinn::Endpoint::server(
            quic_server_config(ca.cert_pem(), &cert, &key, &QuicTiming::default()).expect("server config"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("server endpoint");
        let (node_key, csr) = node_key_and_csr("slow-welcome").expect("csr");
        let node_cert = ca.sign_node_csr(&csr, "slow-welcome", 1).expect("node cert");
        let (commands, _commands_rx) = mpsc::unbounded_channel();
        let (_durable_tx, durable) = watch::channel(0);
        let (_status_tx, status) = watch::channel(NodeStatus::default());
        let ctx = SessionContext {
            identity: CurrentIdentity::new(Identity {
                info: NodeInfo {
                    node_name: "slow-welcome".into(),
                    master: server.local_addr().expect("addr").to_string(),
                    public_ip: "127.0.0.1".into(),
                    labels: vec![],
                },
                key_pem: node_key,
                cert_pem: node_cert,
                ca_pem: ca.cert_pem().to_string(),
            },
                None,
            ),
            commands,
            durable,
            status,
            capacity: Capacity { cpus: 1, memory_bytes: 1 << 30, disk_bytes: 1 << 30, arch: "test".into(), os: "linux".into() },
            runtime_version: "test".into(),
            timing: QuicTiming::default(),
            endpoint: None,
            metrics_settings: None,
            link: None,
            autonomy: None,
        };
        let agent = tokio::spawn(run_forever(ctx));

        let conn = server.accept().await.expect("a connection").await.expect("handshake");
        let (mut send, mut recv) = conn.accept_bi().await.expect("control stream");
        let hello: Option<AgentMessage> = read_frame(&mut recv).await.expect("hello");
        assert!(matches!(hello, Some(AgentMessage::Hello(_))), "expected a hello, got {hello:?}");
        tokio::time::sleep(CONNECT_TIMEOUT + Duration::from_secs(2)).await;
        let welcome = MasterMessage::Welcome { node_name: "slow-welcome".into(), heartbeat_interval_ms: 1000 };
        write_frame(&mut send, &welcome).await.expect("the session was still open for the welcome");
        let status: Option<AgentMessage> = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut recv))
            .await
            .expect("the agent's status after the welcome")
            .expect("a frame");
        assert!(matches!(status, Some(AgentMessage::Status(_))), "the agent left the session instead: {status:?}");
        agent.abort();
    }
}
