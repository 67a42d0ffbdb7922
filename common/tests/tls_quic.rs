//! Real quinn endpoints on 127.0.0.1 with the configs from `tls`.
//!
//! Every client dials the server name "127.0.0.1", which the master's
//! certificate carries as an IP SAN.

use std::net::SocketAddr;
use std::time::Duration;

use fogmesh_common::codec::{read_frame, write_frame};
use fogmesh_common::pki::{node_key_and_csr, node_name_from_cert, ClusterCa};
use fogmesh_common::tls::{
    peer_certificate_der, quic_join_client_config, quic_node_client_config, quic_server_config,
};
use fogmesh_common::wire::{AgentMessage, MasterMessage, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::timeout;

const SERVER_NAME: &str = "127.0.0.1";
const LIMIT: Duration = Duration::from_secs(20);

/// What the server saw on one connection.
#[derive(Debug)]
enum Seen {
    /// Handshake done; the peer's node name if it showed a certificate,
    /// and the first message it sent.
    Served {
        node: Option<String>,
        had_cert: bool,
        msg: Option<Box<AgentMessage>>,
    },
    /// The handshake or the stream failed.
    Failed(String),
}

struct Server {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    _endpoint: quinn::Endpoint,
}

/// A master-like server: answers the first frame of the first stream with
/// `Welcome` naming the peer (or "anonymous"), then waits for the client to
/// close.
fn start_server(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Server {
    let config = quic_server_config(ca_pem, cert_pem, key_pem, &Default::default()).expect("server config");
    let endpoint =
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = endpoint.local_addr().expect("local addr");
    let (tx, seen) = mpsc::unbounded_channel();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let seen = serve(incoming).await.unwrap_or_else(Seen::Failed);
                let _ = tx.send(seen);
            });
        }
    });
    Server {
        addr,
        seen,
        _endpoint: endpoint,
    }
}

async fn serve(incoming: quinn::Incoming) -> Result<Seen, String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let cert = peer_certificate_der(&conn);
    let node = cert.as_deref().and_then(node_name_from_cert);
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let msg: Option<AgentMessage> = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
    let reply = MasterMessage::Welcome {
        node_name: node.clone().unwrap_or_else(|| "anonymous".into()),
        heartbeat_interval_ms: 5000,
    };
    write_frame(&mut send, &reply)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    // Keep the connection until the client has read the reply and closed.
    conn.closed().await;
    Ok(Seen::Served {
        node,
        had_cert: cert.is_some(),
        msg: msg.map(Box::new),
    })
}

/// Connects, sends one frame on a bidi stream and returns the reply. A
/// failure on an established connection says why the connection closed
/// (e.g. the server's TLS alert), not only that the stream broke.
async fn exchange(
    client: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    msg: &AgentMessage,
) -> Result<MasterMessage, String> {
    let endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    let result = async {
        let conn = endpoint
            .connect_with(client, addr, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let why = |e: &dyn std::fmt::Display| match conn.close_reason() {
            Some(reason) => format!("{e} ({reason})"),
            None => e.to_string(),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| why(&e))?;
        write_frame(&mut send, msg).await.map_err(|e| why(&e))?;
        send.finish().map_err(|e| why(&e))?;
        let reply: Option<MasterMessage> = read_frame(&mut recv).await.map_err(|e| why(&e))?;
        conn.close(0u32.into(), b"done");
        reply.ok_or_else(|| "no reply".to_string())
    }
    .await;
    endpoint.wait_idle().await;
    result
}

fn join_message() -> AgentMessage {
    AgentMessage::Join(fogmesh_common::wire::JoinRequest {
        protocol_version: PROTOCOL_VERSION,
        token: "fmj1.x.y.z".into(),
        csr_pem: "csr".into(),
        name: Some("pi-1".into()),
        public_ip: "192.0.2.1".into(),
        labels: vec![],
        replace: false,
    })
}

struct Cluster {
    ca: ClusterCa,
    cert: String,
    key: String,
}

fn cluster(name: &str) -> Cluster {
    let ca = ClusterCa::generate(name).expect("ca");
    let (cert, key) = ca
        .issue_server_cert(&["master.test".to_string()])
        .expect("server cert");
    Cluster { ca, cert, key }
}

fn node_client(ca: &ClusterCa, trust_pem: &str, name: &str) -> quinn::ClientConfig {
    let (key, csr) = node_key_and_csr(name).expect("csr");
    let cert = ca.sign_node_csr(&csr, name, 30).expect("sign");
    quic_node_client_config(trust_pem, &cert, &key, &Default::default()).expect("node client config")
}

async fn next_seen(server: &mut Server) -> Seen {
    timeout(LIMIT, server.seen.recv())
        .await
        .expect("server saw nothing")
        .expect("server task ended")
}

#[tokio::test]
async fn join_with_right_pin_exchanges_frames() {
    let c = cluster("join");
    let mut server = start_server(c.ca.cert_pem(), &c.cert, &c.key);
    let client = quic_join_client_config(&c.ca.fingerprint()).expect("join config");
    let reply = timeout(
        LIMIT,
        exchange(client, server.addr, SERVER_NAME, &join_message()),
    )
    .await
    .expect("timed out")
    .expect("exchange");
    assert_eq!(
        reply,
        MasterMessage::Welcome {
            node_name: "anonymous".into(),
            heartbeat_interval_ms: 5000
        }
    );
    match next_seen(&mut server).await {
        Seen::Served {
            node: None,
            had_cert: false,
            msg: Some(msg),
        } => assert_eq!(*msg, join_message()),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn join_with_wrong_pin_fails() {
    let c = cluster("pin");
    let other = ClusterCa::generate("other").expect("ca");
    let server = start_server(c.ca.cert_pem(), &c.cert, &c.key);
    let client = quic_join_client_config(&other.fingerprint()).expect("join config");
    expect_refused(client, server.addr, SERVER_NAME, &join_message(), Refused::Here(UNKNOWN_ISSUER), "connected with a wrong pin").await;
}

#[tokio::test]
async fn join_pin_needs_a_server_cert_signed_by_that_ca() {
    // An impostor copies the real CA certificate into its chain but signs
    // its own server certificate with another CA.
    let real = cluster("real");
    let impostor = cluster("impostor");
    let chain_cas = format!("{}{}", real.ca.cert_pem(), impostor.ca.cert_pem());
    let server = start_server(&chain_cas, &impostor.cert, &impostor.key);
    let client = quic_join_client_config(&real.ca.fingerprint()).expect("join config");
    expect_refused(client, server.addr, SERVER_NAME, &join_message(), Refused::Here(UNKNOWN_ISSUER), "trusted an impostor").await;
}

#[tokio::test]
async fn join_checks_the_server_name() {
    let c = cluster("name");
    let server = start_server(c.ca.cert_pem(), &c.cert, &c.key);
    let client = quic_join_client_config(&c.ca.fingerprint()).expect("join config");
    expect_refused(
        client,
        server.addr,
        "elsewhere.example",
        &join_message(),
        Refused::Here("the cryptographic handshake failed: error 42: invalid peer certificate: certificate not valid for name \"elsewhere.example\""),
        "accepted a wrong server name",
    )
    .await;
}

#[tokio::test]
async fn node_client_is_identified_by_its_certificate() {
    let c = cluster("node");
    let mut server = start_server(c.ca.cert_pem(), &c.cert, &c.key);
    let client = node_client(&c.ca, c.ca.cert_pem(), "pi-kitchen");
    let reply = timeout(
        LIMIT,
        exchange(client, server.addr, SERVER_NAME, &AgentMessage::Heartbeat),
    )
    .await
    .expect("timed out")
    .expect("exchange");
    assert_eq!(
        reply,
        MasterMessage::Welcome {
            node_name: "pi-kitchen".into(),
            heartbeat_interval_ms: 5000
        }
    );
    match next_seen(&mut server).await {
        Seen::Served {
            node: Some(node),
            had_cert: true,
            msg: Some(msg),
        } => {
            assert_eq!(node, "pi-kitchen");
            assert_eq!(*msg, AgentMessage::Heartbeat);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let c = cluster("mtls");
    let rogue = ClusterCa::generate("rogue").expect("ca");
    let mut server = start_server(c.ca.cert_pem(), &c.cert, &c.key);
    // The client trusts the real master but its certificate is from a
    // CA the master does not know.
    let client = node_client(&rogue, c.ca.cert_pem(), "pi-rogue");
    expect_refused(client, server.addr, SERVER_NAME, &AgentMessage::Heartbeat, Refused::ByPeer(UNKNOWN_ISSUER), "rogue client was served").await;
    match next_seen(&mut server).await {
        Seen::Failed(why) => assert!(why.to_lowercase().contains("cert"), "{why}"),
        other => panic!("server accepted a rogue client: {other:?}"),
    }
}

#[tokio::test]
async fn node_client_refuses_a_master_from_another_ca() {
    let c = cluster("a");
    let other = cluster("b");
    let server = start_server(other.ca.cert_pem(), &other.cert, &other.key);
    let client = node_client(&c.ca, c.ca.cert_pem(), "pi-1");
    expect_refused(client, server.addr, SERVER_NAME, &AgentMessage::Heartbeat, Refused::Here(UNKNOWN_ISSUER), "trusted a foreign master").await;
}

/// The verdict on a certificate that does not chain to the CA trusted (or
/// pinned): the handshake fails with TLS alert 48.
const UNKNOWN_ISSUER: &str = "the cryptographic handshake failed: error 48: invalid peer certificate: UnknownIssuer";

/// Who refuses, and why (the start of the error).
enum Refused {
    /// The client refuses the server: connecting fails with this error.
    Here(&'static str),
    /// The server refuses the client: the connection is closed by the peer
    /// with this error.
    ByPeer(&'static str),
}

/// Runs one exchange that must fail (within the time limit) as `refused`
/// says; `what` says what it would mean if it succeeded.
async fn expect_refused(client: quinn::ClientConfig, addr: SocketAddr, server_name: &str, msg: &AgentMessage, refused: Refused, what: &str) {
    let result = timeout(LIMIT, exchange(client, addr, server_name, msg)).await.expect("timed out");
    let error = match result {
        Ok(reply) => panic!("{what}: {reply:?}"),
        Err(e) => e,
    };
    match refused {
        Refused::Here(reason) => assert!(error.starts_with(reason), "refused, but not by this side for '{reason}': {error}"),
        Refused::ByPeer(reason) => {
            assert!(error.contains(&format!("aborted by peer: {reason}")), "refused, but not by the server for '{reason}': {error}")
        }
    }
}
