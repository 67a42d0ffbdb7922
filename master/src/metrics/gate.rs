//! The MQTT door of the embedded broker.
//!
//! rumqttd checks that a client certificate chains to the CA, but it knows
//! nothing of revocation, cannot close a live connection from outside, and
//! lets any client publish or subscribe anywhere under any client id. So
//! agents never reach it directly: the master terminates their TLS here,
//! asks the registry whether the certificate is a node's current one, checks
//! the CONNECT and every packet the client sends against what that node may
//! do, and forwards the packets to rumqttd on a loopback listener that takes
//! only the master's per-start secret login. A revocation (node removed or
//! replaced) closes the node's live connections at once.
//!
//! ```text
//! agent ──TLS (node cert)──▶ gate: node_of_certificate, check_connect, check_packet ──▶ rumqttd (127.0.0.1, login)
//!       ◀────────────────────────────── bytes as the broker sent them ◀───────────────┘
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use fogmesh_common::metrics::batch::{acks_topic, metrics_topic, MAX_BATCH_BYTES};
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Login, Packet};
use rumqttc::mqttbytes::{check, Error as MqttError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::cluster::Cluster;

/// The largest packet a client may send: a metrics batch and its headers.
pub const MAX_PACKET_BYTES: usize = MAX_BATCH_BYTES + 4096;
/// TLS handshake plus CONNECT must arrive within this.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// How agents must name their MQTT sessions: `fogmesh-agent-NODE-SUFFIX`.
pub const CLIENT_ID_PREFIX: &str = "fogmesh-agent-";

/// The broker behind the door and the login only the master knows.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub login: Login,
}

/// What the door refused, for `/metrics`.
#[derive(Default)]
pub struct GateCounters {
    /// Certificates that are not a registered node's current one.
    pub refused_certificate: AtomicU64,
    /// CONNECTs with another node's client id, a last will, or not MQTT 3.1.1.
    pub refused_connect: AtomicU64,
    /// Connections closed for a publish or subscribe outside the node's topics.
    pub refused_packet: AtomicU64,
    /// Live connections closed because their certificate was revoked.
    pub closed_revoked: AtomicU64,
}

/// Serves the door until the process ends.
pub async fn serve(listener: TcpListener, tls: TlsAcceptor, cluster: Arc<Cluster>, upstream: Upstream, counters: Arc<GateCounters>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "MQTT door cannot accept connections");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, cluster, upstream, counters) = (tls.clone(), cluster.clone(), upstream.clone(), counters.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, peer, tls, &cluster, &upstream, &counters).await {
                tracing::debug!(%peer, error = %format!("{e:#}"), "MQTT connection ended");
            }
        });
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, tls: TlsAcceptor, cluster: &Cluster, upstream: &Upstream, counters: &GateCounters) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let (mut client, node, cert, connect, mut pending) = tokio::time::timeout(CONNECT_DEADLINE, async {
        let mut client = tls.accept(tcp).await.context("TLS handshake")?;
        // The verifier made sure there is one, under the CA.
        let cert = client.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
        let cert = cert.ok_or_else(|| anyhow!("no client certificate"))?;
        let mut pending = BytesMut::with_capacity(4096);
        let connect = match read_packet(&mut client, &mut pending).await? {
            Some(Packet::Connect(connect)) => connect,
            Some(other) => bail!("expected CONNECT, got {other:?}"),
            None => bail!("closed before CONNECT"),
        };
        let node = cluster.node_of_certificate(&cert);
        anyhow::Ok((client, node, cert, connect, pending))
    })
    .await
    .context("no TLS handshake and CONNECT in time")??;

    let node = match node {
        Ok(node) => node,
        Err((reason, _)) => {
            counters.refused_certificate.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, client_id = %connect.client_id, %reason, "MQTT connection refused");
            return refuse(&mut client, ConnectReturnCode::NotAuthorized).await;
        }
    };
    if let Err(why) = check_connect(&node, &connect) {
        counters.refused_connect.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %node, client_id = %connect.client_id, "MQTT connection refused: {why}");
        return refuse(&mut client, why.code).await;
    }

    let broker = TcpStream::connect(upstream.addr).await.with_context(|| format!("reach the embedded broker at {}", upstream.addr))?;
    let _ = broker.set_nodelay(true);
    let (mut from_broker, mut to_broker) = broker.into_split();
    let mut authenticated = connect;
    authenticated.login = Some(upstream.login.clone());
    let mut out = BytesMut::new();
    Packet::Connect(authenticated).write(&mut out, MAX_PACKET_BYTES).map_err(|e| anyhow!("re-encode CONNECT: {e}"))?;
    to_broker.write_all(&out).await?;

    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let mut revocations = cluster.watch_revocations();
    let downstream = tokio::io::copy(&mut from_broker, &mut client_tx);
    tokio::pin!(downstream);
    let upstream_pump = async {
        loop {
            let Some(frame) = read_frame(&mut client_rx, &mut pending).await? else { return anyhow::Ok(()) };
            let packet = Packet::read(&mut frame.clone(), MAX_PACKET_BYTES).map_err(|e| anyhow!("malformed packet: {e:?}"))?;
            if let Err(why) = check_packet(&node, &packet) {
                counters.refused_packet.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, %node, "MQTT connection closed: {why}");
                return Ok(());
            }
            to_broker.write_all(&frame).await?;
        }
    };
    tokio::pin!(upstream_pump);
    loop {
        tokio::select! {
            result = &mut upstream_pump => return result,
            result = &mut downstream => return result.map(|_| ()).context("from the broker"),
            changed = revocations.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                if let Err((reason, _)) = cluster.node_of_certificate(&cert) {
                    counters.closed_revoked.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, %node, %reason, "MQTT connection closed: certificate revoked");
                    return Ok(());
                }
            }
        }
    }
}

/// Why a CONNECT is refused, and the return code that says so.
#[derive(Debug, PartialEq)]
pub struct Refused {
    pub code: ConnectReturnCode,
    pub why: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// A node's CONNECT: its client id must be `fogmesh-agent-NODE-SUFFIX` for
/// its own certificate's node (so no client can take another's session or
/// the master's ingest id), and no last will (it would publish to a topic
/// chosen at connect, past the packet checks).
pub fn check_connect(node: &str, connect: &Connect) -> Result<(), Refused> {
    let named = connect
        .client_id
        .strip_prefix(CLIENT_ID_PREFIX)
        .and_then(|rest| rest.rsplit_once('-'))
        .filter(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|(name, _)| name);
    if named != Some(node) {
        return Err(Refused {
            code: ConnectReturnCode::BadClientId,
            why: format!("client id '{}' is not {CLIENT_ID_PREFIX}{node}-SUFFIX, as the certificate of node '{node}' requires", connect.client_id),
        });
    }
    if let Some(will) = &connect.last_will {
        return Err(Refused { code: ConnectReturnCode::NotAuthorized, why: format!("a last will (to '{}') is not allowed", will.topic) });
    }
    Ok(())
}

/// What a node may send after CONNECT: publish its own metrics, subscribe
/// to its own acks, acknowledge, ping, leave.
pub fn check_packet(node: &str, packet: &Packet) -> Result<(), String> {
    match packet {
        Packet::Publish(p) => {
            let own = metrics_topic(node);
            if p.topic != own {
                return Err(format!("node '{node}' published to '{}'; it may publish only to '{own}'", p.topic));
            }
            if p.retain {
                return Err(format!("node '{node}' published a retained message to '{own}'"));
            }
            Ok(())
        }
        Packet::Subscribe(s) => {
            let own = acks_topic(node);
            match s.filters.iter().find(|f| f.path != own) {
                Some(f) => Err(format!("node '{node}' subscribed to '{}'; it may subscribe only to '{own}'", f.path)),
                None => Ok(()),
            }
        }
        Packet::Unsubscribe(_)
        | Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::PingReq
        | Packet::Disconnect => Ok(()),
        Packet::Connect(_) => Err(format!("node '{node}' sent a second CONNECT")),
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
            Err(format!("node '{node}' sent a packet only a broker sends ({packet:?})"))
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(client: &mut S, code: ConnectReturnCode) -> Result<()> {
    let mut out = BytesMut::new();
    Packet::ConnAck(ConnAck::new(code, false)).write(&mut out, 16).map_err(|e| anyhow!("encode CONNACK: {e}"))?;
    client.write_all(&out).await?;
    client.shutdown().await?;
    Ok(())
}

async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S, pending: &mut BytesMut) -> Result<Option<Packet>> {
    match read_frame(stream, pending).await? {
        Some(mut frame) => Ok(Some(Packet::read(&mut frame, MAX_PACKET_BYTES).map_err(|e| anyhow!("malformed packet: {e:?}"))?)),
        None => Ok(None),
    }
}

/// The next whole packet's bytes, as sent; `None` when the stream ended
/// between packets. The size limit is checked on the fixed header, before
/// the body is read.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, pending: &mut BytesMut) -> Result<Option<BytesMut>> {
    loop {
        match check(pending.iter(), MAX_PACKET_BYTES) {
            Ok(header) => return Ok(Some(pending.split_to(header.frame_length()))),
            Err(MqttError::InsufficientBytes(_)) => {}
            Err(e) => bail!("bad packet: {e:?}"),
        }
        if stream.read_buf(pending).await? == 0 {
            if pending.is_empty() {
                return Ok(None);
            }
            bail!("stream ended inside a packet");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{LastWill, Publish, Subscribe};
    use rumqttc::mqttbytes::QoS;

    fn connect(id: &str) -> Connect {
        Connect::new(id)
    }

    #[test]
    fn a_node_connects_only_under_its_own_client_id() {
        assert_eq!(check_connect("fog", &connect("fogmesh-agent-fog-1a2b3c4d")), Ok(()));
        // A name that merely starts like another node's is that other node.
        for id in ["fogmesh-agent-fog-b-1a2b3c4d", "fogmesh-master-ingest", "fogmesh-agent-fog-", "fogmesh-agent-fog", "fog", "fogmesh-agent-fo-g"] {
            let refused = check_connect("fog", &connect(id)).expect_err(id);
            assert_eq!(refused.code, ConnectReturnCode::BadClientId, "{id}");
            assert!(refused.why.contains("fogmesh-agent-fog-SUFFIX"), "{}", refused.why);
        }
        assert_eq!(check_connect("fog-b", &connect("fogmesh-agent-fog-b-1a2b3c4d")), Ok(()));
    }

    #[test]
    fn a_last_will_is_refused() {
        let mut c = connect("fogmesh-agent-fog-1");
        c.last_will = Some(LastWill::new("fogmesh/v1/nodes/other/metrics", "x", QoS::AtLeastOnce, false));
        assert_eq!(check_connect("fog", &c).map_err(|r| r.code), Err(ConnectReturnCode::NotAuthorized));
    }

    #[test]
    fn a_node_publishes_and_subscribes_only_on_its_own_topics() {
        let publish = |topic: &str| Packet::Publish(Publish::new(topic, QoS::AtLeastOnce, vec![1]));
        assert_eq!(check_packet("fog", &publish("fogmesh/v1/nodes/fog/metrics")), Ok(()));
        assert!(check_packet("fog", &publish("fogmesh/v1/nodes/edge/metrics")).unwrap_err().contains("may publish only to 'fogmesh/v1/nodes/fog/metrics'"));
        assert!(check_packet("fog", &publish("fogmesh/v1/nodes/fog/acks")).is_err());
        let mut retained = Publish::new("fogmesh/v1/nodes/fog/metrics", QoS::AtLeastOnce, vec![1]);
        retained.retain = true;
        assert!(check_packet("fog", &Packet::Publish(retained)).is_err());

        let subscribe = |topic: &str| Packet::Subscribe(Subscribe::new(topic, QoS::AtLeastOnce));
        assert_eq!(check_packet("fog", &subscribe("fogmesh/v1/nodes/fog/acks")), Ok(()));
        for filter in ["#", "fogmesh/v1/nodes/+/acks", "fogmesh/v1/nodes/edge/acks", "fogmesh/v1/nodes/fog/metrics"] {
            assert!(check_packet("fog", &subscribe(filter)).unwrap_err().contains("may subscribe only to 'fogmesh/v1/nodes/fog/acks'"), "{filter}");
        }
        assert_eq!(check_packet("fog", &Packet::PingReq), Ok(()));
        assert!(check_packet("fog", &Packet::Connect(connect("fogmesh-agent-fog-1"))).is_err());
    }

    #[tokio::test]
    async fn frames_are_read_whole_and_oversized_ones_refused_from_their_header() {
        let mut bytes = BytesMut::new();
        let mut publish = Publish::new("t", QoS::AtLeastOnce, vec![7; 100]);
        publish.pkid = 1;
        Packet::Publish(publish).write(&mut bytes, usize::MAX).unwrap();
        Packet::PingReq.write(&mut bytes, 16).unwrap();
        let mut stream: &[u8] = &bytes[..];
        let mut pending = BytesMut::new();
        assert!(matches!(read_packet(&mut stream, &mut pending).await.unwrap(), Some(Packet::Publish(p)) if p.payload.len() == 100));
        assert!(matches!(read_packet(&mut stream, &mut pending).await.unwrap(), Some(Packet::PingReq)));
        assert!(read_packet(&mut stream, &mut pending).await.unwrap().is_none());

        // A header announcing more than the limit: refused before the body exists.
        let head: &[u8] = &[0x32, 0xff, 0xff, 0xff, 0x7f];
        let mut stream = head;
        let err = read_packet(&mut stream, &mut BytesMut::new()).await.unwrap_err();
        assert!(format!("{err}").contains("bad packet"), "{err}");
    }
}
