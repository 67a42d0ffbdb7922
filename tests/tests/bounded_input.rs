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

/// The samples of `expr` over the last hour: `(labels, values)` per series.
fn series_in_last_hour(master: &Master, expr: &str) -> Vec<(serde_json::Value, usize)> {
    master.query(&format!("{expr}[1h]")).into_iter().map(|s| (s["metric"].clone(), s["values"].as_array().map_or(0, Vec::len))).collect()
}

/// A line of `/metrics` that starts with `prefix`: its value.

/// A node (signed, through the broker's door as itself) sends a batch
/// with more new series than `--max-series-per-node 50` and a sample an
/// hour ahead: the first 50 series are stored, the rest and the future
/// sample refused, the batch acked; the refusals show in `/metrics` and as
/// the node's condition in `fogmesh node list`. A later batch adds to a
/// stored series and is refused a new one.
#[test]
fn a_nodes_series_past_its_cap_and_samples_from_the_future_are_refused_and_shown() {
    let dir = test_dir("bounded-series");
    let master = Master::start_with(&dir, &["--max-series-per-node", "50"]);
    let node = "bi-a";
    // Joined, not running: the test is the node, and nothing else sends its metrics.
    let agent = Agent::join(&master, node, "127.0.0.91", &dir.join("agent-bi-a"), &[]).unwrap_or_else(|out| panic!("join failed: {}", text(&out.stderr)));
    let read = |path: std::path::PathBuf| std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let (ca, cert, key) = (read(agent.data_dir.join("ca.pem")), read(agent.data_dir.join("node.pem")), read(agent.data_dir.join("node.key")));
    let master_key = fogmesh_common::pki::cert_public_key(&read(dir.join("master/master.pem"))).expect("the master's public key");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;

    use fogmesh_common::metrics::batch::{acks_topic, decode_ack, encode_payload, metrics_topic, Batch, BatchSample};
    use fogmesh_common::metrics::Labels;
    let probe = |i: usize, ts_ms: i64| BatchSample { labels: Labels::metric("bounded_probe", &[("i", &i.to_string())]), ts_ms, value: i as f64 };
    // 60 new series now, then series 0 an hour ahead.
    let first: Vec<BatchSample> = (0..60).map(|i| probe(i, now)).chain([probe(0, now + 3_600_000)]).collect();
    // Series 1 again (stored), and a new one (refused).
    let second = vec![probe(1, now - 1000), probe(60, now - 1000)];

    // A batch published before the ingest listens goes nowhere (an agent
    // would send it again; the test sends each once, to count exactly).
    wait_for("the metrics ingest", Duration::from_secs(30), || master.proc.as_ref()?.log_text().contains("metrics ingest subscribed").then_some(()));
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let signer = fogmesh_common::pki::NodeSigner::from_key_pem(&key).expect("the node's key");
        let mut opts = rumqttc::MqttOptions::new(format!("fogmesh-agent-{node}-b0unded"), "127.0.0.1", master.mqtt_port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let tls = fogmesh_common::tls::mqtt_client_config(&ca, &cert, &key).expect("TLS with the node's certificate");
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
        let q = rumqttc::QoS::AtLeastOnce;
        client.subscribe(acks_topic(node), q).await.expect("subscribe to the acks");
        let mut subscribed = false;
        for (seq, samples) in [(1u64, first), (2, second)] {
            let batch = Batch { node: node.into(), seq, collected_ms: now, samples };
            let payload = encode_payload(&batch, |b| signer.sign(b).map_err(|e| e.to_string())).expect("a signed batch");
            // Publish only once subscribed, or the ack may come first.
            while !subscribed {
                let event = tokio::time::timeout(Duration::from_secs(20), events.poll()).await.expect("the broker answers").expect("the broker connection");
                subscribed = matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)));
            }
            client.publish(metrics_topic(node), q, false, payload).await.expect("publish");
            let acked = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = events.poll().await.expect("the broker connection") {
                        let ack = decode_ack(&p.payload, |b, sig| fogmesh_common::pki::verify_node_signature(&master_key, b, sig)).expect("an ack signed by the master");
                        if ack.seqs.contains(&seq) {
                            return ack;
                        }
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("batch {seq} was not acked"));
            assert_eq!(acked.node, node);
        }
    });

    // Exactly series 0..=49 stored, each with its sample now (and 1 with one more).
    let stored = series_in_last_hour(&master, "bounded_probe");
    let mut got: Vec<(usize, usize)> = stored.iter().map(|(m, n)| (m["i"].as_str().and_then(|i| i.parse().ok()).unwrap_or(usize::MAX), *n)).collect();
    got.sort();
    let want: Vec<(usize, usize)> = (0..50).map(|i| (i, if i == 1 { 2 } else { 1 })).collect();
    assert_eq!(got, want, "the first 50 series of the batch, not the other 10");
    assert!(stored.iter().all(|(m, _)| m["node"] == node), "{stored:?}");
    // Nothing an hour ahead: looked at from then, series 0 has no sample.
    let ahead = format!("{}", now / 1000 + 3600);
    let (status, answer) = master.api_post("/api/v1/query", &[("query", "bounded_probe{i=\"0\"}"), ("time", &ahead)]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["result"], serde_json::json!([]), "the sample from the future was stored");

    // Counted per node and reason.
    assert_eq!(master.own_metric_value(&format!("fogmesh_ingest_refused_samples_total{{node=\"{node}\",reason=\"series_limit\"}}")), Some(11.0));
    assert_eq!(master.own_metric_value(&format!("fogmesh_ingest_refused_samples_total{{node=\"{node}\",reason=\"future\"}}")), Some(1.0));
    assert_eq!(master.own_metric_value("fogmesh_ingest_samples_total "), Some(51.0), "samples stored");
    assert_eq!(master.own_metric_value("fogmesh_tsdb_max_series_per_node "), Some(50.0));

    // And shown as the node's condition.
    let message = "12 samples refused: series limit 50 reached (11); stamped more than 10 min ahead of the master's clock (1)";
    let table = master.cli_ok(&["node", "list"]);
    let row = table.lines().find(|l| l.starts_with(node)).unwrap_or_else(|| panic!("{node} not in\n{table}"));
    assert!(row.contains(&format!("MetricsRefused: {message}")), "{table}");
    let nodes = master.cli_json(&["node", "list"]);
    let conditions = nodes.as_array().and_then(|all| all.iter().find(|n| n["name"] == node)).map(|n| n["conditions"].clone()).expect("the node in JSON");
    assert_eq!(conditions[0]["kind"], "MetricsRefused", "{conditions}");
    assert_eq!(conditions[0]["message"], message, "{conditions}");
}
