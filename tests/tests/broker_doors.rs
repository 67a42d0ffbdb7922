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

fn own_metric(master: &Master, line_start: &str) -> f64 {
    let text = master.api_get_text("/metrics");
    text.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok()).unwrap_or_else(|| panic!("{line_start} not in /metrics:\n{text}"))
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
    assert_eq!(own_metric(&master, "fogmesh_mqtt_refused_total{reason=\"connect\"}"), 3.0);
    assert_eq!(own_metric(&master, "fogmesh_mqtt_refused_total{reason=\"packet\"}"), 4.0);

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
    assert!(own_metric(&master, "fogmesh_mqtt_refused_total{reason=\"revoked\"}") >= 1.0);
    assert!(own_metric(&master, "fogmesh_mqtt_refused_total{reason=\"certificate\"}") >= 1.0);
    let log = master.proc.as_ref().map(Proc::log_text).unwrap_or_default();
    assert!(log.contains("MQTT connection closed: certificate revoked"), "no revocation line in the master's log");
    // Through all of it, the other node's samples kept arriving.
    ingest_goes_on(&master, "door-b", 3.0);
}
