//! The embedded broker's door, end to end: real master, real agents, a real
//! MQTT client holding a node's certificate. A node may publish only its
//! own metrics and read only its own acks, under its own client id; a
//! revoked certificate is refused at connect and its live connection ends
//! at once; and nothing a node does stalls the master's ingest.

use std::time::{Duration, Instant};

use fogmesh_tests::*;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, Transport};

const T: Duration = Duration::from_secs(60);

/// A node's files, as an agent keeps them.
struct NodeFiles {
    ca: String,
    cert: String,
    key: String,
}

impl NodeFiles {
    fn of(agent: &Agent) -> NodeFiles {
        let read = |name: &str| std::fs::read_to_string(agent.data_dir.join(name)).unwrap();
        NodeFiles { ca: read("ca.pem"), cert: read("node.pem"), key: read("node.key") }
    }

    fn client(&self, port: u16, client_id: &str) -> (AsyncClient, EventLoop) {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        let tls = fogmesh_common::tls::mqtt_client_config(&self.ca, &self.cert, &self.key).unwrap();
        opts.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        opts.set_keep_alive(Duration::from_secs(30));
        AsyncClient::new(opts, 16)
    }
}

/// The broker's answer to a CONNECT: its return code, or the error.
async fn connack(events: &mut EventLoop) -> Result<ConnectReturnCode, String> {
    match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => Ok(ack.code),
        Ok(Ok(other)) => Err(format!("expected CONNACK, got {other:?}")),
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => Ok(code),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 10 s".into()),
    }
}

/// Polls until the connection ends; the packets received meanwhile.
async fn until_closed(events: &mut EventLoop, limit: Duration) -> Result<Vec<Packet>, Vec<Packet>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(p))) => got.push(p),
            Ok(Ok(Event::Outgoing(_))) => {}
            Ok(Err(_)) => return Ok(got),
            Err(_) => return Err(got),
        }
    }
}

fn batch_seq(master: &Master, node: &str) -> Option<f64> {
    master.query(&format!("fogmesh_agent_batch_seq{{node=\"{node}\"}}")).first().and_then(|s| s["value"][1].as_str()?.parse().ok())
}

/// The ingest keeps storing `node`'s batches: its sequence passes where it is now by `more`.
fn ingest_goes_on(master: &Master, node: &str, more: f64) {
    let now = batch_seq(master, node).unwrap_or(0.0);
    wait_for(&format!("{node}'s batches still stored"), T, || batch_seq(master, node).filter(|s| *s >= now + more));
}

#[test]
fn a_node_certificate_reaches_only_its_own_topics_and_a_removed_one_is_shut_out_at_once() {
    let dir = test_dir("broker-doors");
    let master = Master::start_with(&dir, &["--metrics-interval", "1s"]);
    let a = Agent::join_and_run(&master, "door-a", "127.0.0.45");
    let _b = Agent::join_and_run(&master, "door-b", "127.0.0.46");
    wait_for("both agents' metrics", T, || (batch_seq(&master, "door-a").is_some() && batch_seq(&master, "door-b").is_some()).then_some(()));
    let files = NodeFiles::of(&a);
    let port = master.mqtt_port;
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Another node's client id, or the master's ingest's: refused, and the
    // ingest is not kicked off the broker.
    rt.block_on(async {
        for id in ["fogmesh-master-ingest", "fogmesh-agent-door-b-0badf00d", "intruder"] {
            let (_client, mut events) = files.client(port, id);
            assert_eq!(connack(&mut events).await, Ok(ConnectReturnCode::BadClientId), "client id {id}");
        }
    });
    ingest_goes_on(&master, "door-b", 3.0);

    // Reading another node's acks, or everything: the connection ends with
    // no subscription granted and nothing read.
    rt.block_on(async {
        for filter in ["#", "fogmesh/v1/nodes/+/acks", "fogmesh/v1/nodes/door-b/acks"] {
            let (client, mut events) = files.client(port, "fogmesh-agent-door-a-5ee5ee5e");
            assert_eq!(connack(&mut events).await, Ok(ConnectReturnCode::Success));
            client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
            let got = until_closed(&mut events, Duration::from_secs(10)).await.unwrap_or_else(|got| panic!("subscribing to {filter} did not end the connection; got {got:?}"));
            assert!(got.is_empty(), "subscribing to {filter} got {got:?}");
        }
        // Publishing as another node: closed, nothing stored.
        let (client, mut events) = files.client(port, "fogmesh-agent-door-a-5ee5ee5f");
        assert_eq!(connack(&mut events).await, Ok(ConnectReturnCode::Success));
        client.publish("fogmesh/v1/nodes/door-b/metrics", QoS::AtLeastOnce, false, b"x".to_vec()).await.unwrap();
        let got = until_closed(&mut events, Duration::from_secs(10)).await.expect("publishing as door-b ends the connection");
        assert!(!got.iter().any(|p| matches!(p, Packet::PubAck(_))), "the broker took the publish: {got:?}");
    });
    assert_eq!(master.own_metric("fogmesh_mqtt_refused_total{reason=\"connect\"}"), 3.0);
    assert_eq!(master.own_metric("fogmesh_mqtt_refused_total{reason=\"packet\"}"), 4.0);

    // A connection of door-a that does what a node may: it is let in, and
    // gets its own acks topic.
    let (spy, mut spy_events) = rt.block_on(async {
        let (client, mut events) = files.client(port, "fogmesh-agent-door-a-00000001");
        assert_eq!(connack(&mut events).await, Ok(ConnectReturnCode::Success));
        client.subscribe("fogmesh/v1/nodes/door-a/acks", QoS::AtLeastOnce).await.unwrap();
        let granted = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await.expect("SUBACK in time").unwrap() {
                Event::Incoming(Packet::SubAck(ack)) => break ack,
                _ => continue,
            }
        };
        assert!(matches!(granted.return_codes[..], [rumqttc::SubscribeReasonCode::Success(_)]), "{granted:?}");
        (client, events)
    });

    // Removing the node ends that live connection at once and refuses the
    // certificate from then on.
    master.cli_ok(&["node", "remove", "door-a"]);
    let removed = Instant::now();
    rt.block_on(async {
        let got = until_closed(&mut spy_events, Duration::from_secs(10)).await;
        assert!(got.is_ok(), "the removed node's connection stayed open for 10 s: {got:?}");
        eprintln!("removed node's MQTT connection closed {:?} after `node remove` returned", removed.elapsed());
        drop(spy);
        let (_client, mut events) = files.client(port, "fogmesh-agent-door-a-00000002");
        assert_eq!(connack(&mut events).await, Ok(ConnectReturnCode::NotAuthorized));
    });
    assert!(master.own_metric("fogmesh_mqtt_refused_total{reason=\"revoked\"}") >= 1.0);
    assert!(master.own_metric("fogmesh_mqtt_refused_total{reason=\"certificate\"}") >= 1.0);
    let log = master.proc.as_ref().map(Proc::log_text).unwrap_or_default();
    assert!(log.contains("MQTT connection closed: certificate revoked"), "no revocation line in the master's log");
    // Through all of it, the other node's samples kept arriving.
    ingest_goes_on(&master, "door-b", 3.0);
}

/// The same rules through an external mosquitto set up by `issue-cert`: a
/// node certificate cannot read other topics or publish as another node or
/// take the master's identity, and a removed node's certificate is refused
/// once mosquitto rereads the CRL the master keeps current.
#[test]
fn an_external_mosquitto_set_up_by_issue_cert_holds_the_same_doors() {
    let dir = test_dir("broker-doors-mosquitto");
    let port = free_port();
    let url = format!("mqtts://127.0.0.1:{port}");
    let crl = Mosquitto::crl_path(&dir);
    let master = Master::start_with(&dir, &["--metrics-interval", "1s", "--mqtt-url", &url, "--mqtt-crl", crl.to_str().unwrap()]);
    let broker = Mosquitto::start(&master, port);
    let a = Agent::join_and_run(&master, "mq-a", "127.0.0.47");
    let _b = Agent::join_and_run(&master, "mq-b", "127.0.0.48");
    wait_for("both agents' metrics through mosquitto", T, || (batch_seq(&master, "mq-a").is_some() && batch_seq(&master, "mq-b").is_some()).then_some(()));
    let files = NodeFiles::of(&a);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Whatever client id it asks for, the session is mq-a's, and mosquitto
    // delivers it nothing of other nodes' topics or the master's. (Agent
    // mq-a stops first: the two would take turns to end each other's session.)
    drop(a);
    let (spy, mut spy_events) = rt.block_on(async {
        let (client, mut events) = files.client(port, "fogmesh-master");
        assert_eq!(connack(&mut events).await, Ok(ConnectReturnCode::Success));
        for filter in ["#", "fogmesh/v1/nodes/+/metrics", "fogmesh/v1/nodes/+/acks"] {
            client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        }
        (client, events)
    });
    let read = rt.spawn(async move {
        let mut got = Vec::new();
        while let Ok(event) = spy_events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                got.push(p.topic);
            }
        }
        got
    });
    // Meanwhile mq-b publishes and the master acks (both go through mosquitto).
    ingest_goes_on(&master, "mq-b", 3.0);
    rt.block_on(async {
        spy.disconnect().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), read).await.expect("the spy's connection ends").unwrap();
        assert!(got.is_empty(), "a node certificate read {got:?}");
    });

    // Publishing as mq-b goes nowhere; the same forgery on mq-a's own topic
    // reaches the master (which refuses it: not mq-b's signature). The
    // second is the witness that the first would have arrived by then.
    rt.block_on(async {
        use fogmesh_common::metrics::batch::{encode_payload, Batch, BatchSample};
        let signer = fogmesh_common::pki::NodeSigner::from_key_pem(&files.key).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let forged = Batch {
            node: "mq-b".into(),
            seq: 1,
            collected_ms: now,
            samples: vec![BatchSample { labels: fogmesh_common::metrics::Labels::metric("forged_marker", &[("node", "mq-b")]), value: 1.0, ts_ms: now }],
        };
        let payload = encode_payload(&forged, |b| signer.sign(b).map_err(|e| e.to_string())).unwrap();
        let (client, mut events) = files.client(port, "any");
        assert_eq!(connack(&mut events).await, Ok(ConnectReturnCode::Success));
        client.publish("fogmesh/v1/nodes/mq-b/metrics", QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
        client.publish("fogmesh/v1/nodes/mq-a/metrics", QoS::AtLeastOnce, false, payload).await.unwrap();
        let mut acked = 0;
        while acked < 2 {
            if let Event::Incoming(Packet::PubAck(_)) = tokio::time::timeout(Duration::from_secs(10), events.poll()).await.expect("PUBACKs").unwrap() {
                acked += 1;
            }
        }
    });
    wait_for("the forgery on mq-a's own topic refused", T, || (master.own_metric("fogmesh_ingest_refused_total{reason=\"forged\"}") >= 1.0).then_some(()));
    assert_eq!(master.own_metric("fogmesh_ingest_refused_total{reason=\"forged\"}"), 1.0, "the publish on mq-b's topic reached the master");

    // Removing mq-a rewrites the CRL; after mosquitto rereads it, mq-a's
    // certificate no longer connects.
    let before = std::fs::read(&crl).unwrap();
    master.cli_ok(&["node", "remove", "mq-a"]);
    wait_for("the master rewriting the CRL", T, || (std::fs::read(&crl).ok()? != before).then_some(()));
    broker.reload();
    rt.block_on(async {
        let refused = wait_for_async(|| async {
            let (_client, mut events) = files.client(port, "again");
            connack(&mut events).await.err()
        })
        .await;
        assert!(refused.contains("CertificateRevoked"), "mq-a's certificate was refused for another reason: {refused}");
    });
    ingest_goes_on(&master, "mq-b", 3.0);
}

/// Retries `attempt` for up to 30 s until it gives `Some`.
async fn wait_for_async<T, F: std::future::Future<Output = Option<T>>>(mut attempt: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(Instant::now() < deadline, "still admitted 30 s after the CRL reload");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
