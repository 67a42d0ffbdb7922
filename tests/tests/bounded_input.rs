//! Bounded input (issue 18, point 6) end to end: what a client or a node
//! sends cannot take the master's connections or memory without limit.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fogmesh_tests::*;

/// The master's deadline for a request's headers (`ApiLimits::handshake_timeout`).
const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// Slack on top: a loaded test machine is slow, not wrong.
const SLACK: Duration = Duration::from_secs(10);

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the master's API, offering `alpn`; the handshake's error if it fails.
fn connect_api(master: &Master, alpn: &[&[u8]]) -> Result<Tls, std::io::Error> {
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(master.config()).expect("read client.conf")).expect("client.conf is JSON");
    let roots = fogmesh_common::tls::https_client_roots(conf["ca_pem"].as_str().expect("a CA in client.conf")).expect("the cluster CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().expect("TLS versions").with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let tcp = TcpStream::connect(("127.0.0.1", master.api_port)).expect("connect to the API");
    tcp.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends `first`, then one byte of `trickle` a second (so bytes keep
/// moving and no idle timer fires) until the server closes the connection
/// or `bound` passes; how long the server took, and what it answered.
fn closed_by_server(mut tls: Tls, first: &[u8], trickle: &[u8], bound: Duration) -> Result<(Duration, Vec<u8>), String> {
    let started = Instant::now();
    let mut answer = Vec::new();
    tls.write_all(first).and_then(|_| tls.flush()).map_err(|e| format!("the first bytes were not sent: {e}"))?;
    let mut trickle = trickle.iter();
    let mut last_byte = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return Ok((started.elapsed(), answer)),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Reset, or closed without close_notify: closed all the same.
            Err(_) => return Ok((started.elapsed(), answer)),
        }
        if started.elapsed() > bound {
            return Err(format!("still open after {:?}; the server answered {:?}", started.elapsed(), String::from_utf8_lossy(&answer)));
        }
        if last_byte.elapsed() >= Duration::from_secs(1) {
            if let Some(b) = trickle.next() {
                if tls.write_all(&[*b]).and_then(|_| tls.flush()).is_err() {
                    return Ok((started.elapsed(), answer));
                }
            }
            last_byte = Instant::now();
        }
    }
}

/// An HTTP/2 frame header: length, type, flags, stream.
fn h2_frame(len: u32, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f
}

/// Slow clients over HTTP/1 and HTTP/2 are cut off at the header deadline:
/// one that sends nothing after the TLS handshake, one that sends a
/// request's headers a byte a second, and one that speaks HTTP/2 by prior
/// knowledge (the server offers only HTTP/1.1 in TLS) and sends a HEADERS
/// frame a byte a second. Bytes keep moving, so the idle timeout (a
/// minute) is not what closes them.
#[test]
fn slow_headers_over_http1_and_http2_are_cut_off_at_the_deadline() {
    let dir = test_dir("bounded-headers");
    let master = Master::start(&dir);
    let bound = HEADER_DEADLINE + SLACK;

    // What the server negotiates: HTTP/1.1 even when h2 is offered first,
    // and nothing at all for a client that speaks only h2.
    let tls = connect_api(&master, &[b"h2", b"http/1.1"]).expect("TLS with h2 and http/1.1 offered");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "the API negotiates HTTP/1.1");
    drop(tls);
    let only_h2 = connect_api(&master, &[b"h2"]);
    assert!(only_h2.is_err(), "a client offering only h2 must be refused in the TLS handshake");

    // HTTP/2 by prior knowledge: preface, SETTINGS, then a HEADERS frame
    // that announces 64 bytes and never completes.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend(h2_frame(0, 0x4, 0, 0));
    h2.extend(h2_frame(64, 0x1, 0x4, 1));
    h2.extend([0x82, 0x87]); // :method GET, :scheme https (HPACK static table)
    let h1_headers = b"GET /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let cases: [(&str, &[u8], &[u8]); 3] = [
        ("HTTP/1.1, nothing sent", b"", b""),
        ("HTTP/1.1, headers a byte a second", h1_headers, &[b'a'; 64]),
        ("HTTP/2 prior knowledge, HEADERS a byte a second", &h2, &[0x84; 62]),
    ];
    std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(name, first, trickle)| {
                let tls = connect_api(&master, &[b"http/1.1"]).expect("TLS");
                (name, s.spawn(move || closed_by_server(tls, first, trickle, bound)))
            })
            .collect();
        let mut open = Vec::new();
        for (name, run) in runs {
            match run.join().expect("the client thread") {
                Ok((took, answer)) => eprintln!("{name}: closed by the server after {took:?}, answer {:?}", String::from_utf8_lossy(&answer)),
                Err(why) => open.push(format!("{name}: {why}")),
            }
        }
        assert!(open.is_empty(), "not cut off at the header deadline:\n{}", open.join("\n"));
    });
    // Still serving.
    master.cli_ok(&["node", "list"]);
}
