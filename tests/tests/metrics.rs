//! Metrics end to end: real agents collect and publish over MQTT (the
//! embedded broker or a real mosquitto), the master stores and answers
//! PromQL over the Prometheus HTTP API; nothing is lost across outages.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fogmesh_tests::*;

const T: Duration = Duration::from_secs(60);

/// `(timestamp seconds, value)` of every stored sample of the one series
/// `selector` names, over the last `window`.
fn raw_samples(master: &Master, selector: &str, window: &str) -> Vec<(f64, f64)> {
    let result = master.query(&format!("{selector}[{window}]"));
    assert!(result.len() <= 1, "{selector} names {} series: {result:?}", result.len());
    result
        .first()
        .and_then(|s| s["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|p| (p[0].as_f64().unwrap_or(0.0), p[1].as_str().unwrap_or("NaN").parse().unwrap_or(f64::NAN)))
        .collect()
}

/// The value of a one-series instant query, if any.
fn value(master: &Master, expr: &str) -> Option<f64> {
    master.query(expr).first().and_then(|s| s["value"][1].as_str()?.parse().ok())
}

/// A counter line of `/metrics`.

#[test]
fn a_busy_containers_cpu_and_every_nodes_metrics_reach_the_prometheus_api() {
    docker_ready();
    let dir = test_dir("metrics-api");
    let master = Master::start_with(&dir, &["--metrics-interval", "1s"]);
    let _a = Agent::join_and_run(&master, "met-a", "127.0.0.41");
    let _b = Agent::join_and_run(&master, "met-b", "127.0.0.42");
    let props = "        image: fogmesh/busybox:test\n        command: [/bin/sh, -c, \"trap 'exit 0' TERM; while :; do :; done\"]\n";
    let adt = write_adt(&dir, "burn", &edge_adt("127.0.0.41", "burner", props));
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--name", "burn", "--timeout", "60s"]);

    // A busy loop uses about one core: rate() over the cAdvisor counter shows it.
    let rate = "rate(container_cpu_usage_seconds_total{app=\"burn\",workload=\"burner\",node=\"met-a\"}[20s])";
    let cpu = wait_for("the busy container's CPU rate", T, || value(&master, rate).filter(|v| *v > 0.5));
    assert!(cpu < 2.5, "one busy loop cannot use {cpu} cores of this machine");
    // MiCADO's queries select by pod name prefix.
    let micado = "sum(rate(container_cpu_usage_seconds_total{container_label_io_kubernetes_pod_name=~\"burner.*\"}[20s]))";
    assert!(value(&master, micado).is_some_and(|v| v > 0.5), "MiCADO-style selection by pod name");
    // The CLI prints the same.
    let out = master.cli_ok(&["metrics", "query", rate]);
    assert!(out.contains("container_cpu_usage_seconds_total") || out.contains("workload=\"burner\""), "{out}");
    let json: serde_json::Value = serde_json::from_str(&master.cli_ok(&["metrics", "query", rate, "--format", "json"])).unwrap();
    assert_eq!(json["resultType"], "vector");
    let range: serde_json::Value = serde_json::from_str(&master.cli_ok(&["metrics", "query", rate, "--range", "30s", "--format", "json"])).unwrap();
    assert_eq!(range["resultType"], "matrix");
    assert!(range["result"][0]["values"].as_array().is_some_and(|v| v.len() >= 2), "{range}");

    // Node metrics of every agent, under node-exporter's names.
    let nodes = wait_for("node metrics of both agents", T, || {
        let r = master.query("count by (node) (node_load1)");
        (r.len() == 2).then_some(r)
    });
    let names: Vec<&str> = nodes.iter().filter_map(|s| s["metric"]["node"].as_str()).collect();
    assert!(names.contains(&"met-a") && names.contains(&"met-b"), "{nodes:?}");
    for series in [
        "node_cpu_seconds_total{node=\"met-b\",mode=\"idle\"}",
        "node_memory_MemAvailable_bytes{node=\"met-b\"}",
        "node_network_receive_bytes_total{node=\"met-b\"}",
        "node_filesystem_avail_bytes{node=\"met-b\"}",
        "container_memory_usage_bytes{node=\"met-a\",workload=\"burner\"}",
    ] {
        assert!(!master.query(series).is_empty(), "{series} missing");
    }
    // The other endpoints Grafana uses.
    let (status, series) = master.api_post("/api/v1/series", &[("match[]", "node_load1")]);
    assert_eq!(status, 200, "{series}");
    assert_eq!(series["data"].as_array().map(Vec::len), Some(2), "{series}");
    let (_, labels) = master.api_post("/api/v1/labels", &[]);
    assert!(labels["data"].as_array().unwrap().iter().any(|l| l == "node"), "{labels}");
    let values: serde_json::Value = serde_json::from_str(&master.api_get_text("/api/v1/label/node/values")).unwrap();
    assert_eq!(values["data"], serde_json::json!(["met-a", "met-b"]));
    // Bad input: 400 naming what is wrong, Prometheus's error shape.
    let (status, err) = master.api_post("/api/v1/query", &[("query", "rate(node_load1[1m]")]);
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["errorType"], "bad_data");
    let (status, err) = master.api_post("/api/v1/query", &[("query", "holt_winters(node_load1[5m], 0.5, 0.5)")]);
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("holt_winters"), "{err}");
    assert!(master.own_metric("fogmesh_ingest_batches_total ") > 0.0);
}

/// A real broker client with a valid node certificate, through the door
/// as its own node, publishes batches the master must refuse: one naming
/// another node (so not signed by that node's key) and garbage. Publishing
/// on other topics is the door's to refuse (tests/broker_doors.rs).
#[test]
fn forged_batches_and_acks_are_refused_and_counted() {
    let dir = test_dir("metrics-forged");
    let master = Master::start_with(&dir, &["--metrics-interval", "1s"]);
    let a = Agent::join_and_run(&master, "frg-a", "127.0.0.43");
    let _b = Agent::join_and_run(&master, "frg-b", "127.0.0.44");
    wait_for("both agents' metrics", T, || (master.query("count by (node) (node_load1)").len() == 2).then_some(()));

    let read = |name: &str| std::fs::read_to_string(a.data_dir.join(name)).unwrap();
    let (ca, cert, key) = (read("ca.pem"), read("node.pem"), read("node.key"));
    let port = master.mqtt_port;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use fogmesh_common::metrics::batch::{encode_payload, metrics_topic, Batch, BatchSample};
        use fogmesh_common::metrics::Labels;
        let signer = fogmesh_common::pki::NodeSigner::from_key_pem(&key).unwrap();
        let sign = |b: &[u8]| signer.sign(b).map_err(|e| e.to_string());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let marker = |node: &str| Batch {
            node: node.into(),
            seq: 1,
            collected_ms: now,
            samples: vec![BatchSample { labels: Labels::metric("forged_marker", &[("node", node)]), value: 666.0, ts_ms: now }],
        };
        let mut opts = rumqttc::MqttOptions::new("fogmesh-agent-frg-a-1ee7c0de", "127.0.0.1", port);
        let tls = fogmesh_common::tls::mqtt_client_config(&ca, &cert, &key).unwrap();
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
        let pump = tokio::spawn(async move {
            let mut acked = 0;
            while let Ok(e) = events.poll().await {
                if matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) {
                    acked += 1;
                    if acked == 2 {
                        break;
                    }
                }
            }
            acked
        });
        let q = rumqttc::QoS::AtLeastOnce;
        // a's key and topic, but the batch names b.
        client.publish(metrics_topic("frg-a"), q, false, encode_payload(&marker("frg-b"), sign).unwrap()).await.unwrap();
        client.publish(metrics_topic("frg-a"), q, false, b"\x00garbage".to_vec()).await.unwrap();
        let acked = tokio::time::timeout(Duration::from_secs(20), pump).await.expect("the broker acks QoS 1").unwrap();
        assert_eq!(acked, 2);
    });
    wait_for("the refusals counted", T, || {
        (master.own_metric("fogmesh_ingest_refused_total{reason=\"forged\"}") >= 1.0
            && master.own_metric("fogmesh_ingest_refused_total{reason=\"malformed\"}") >= 1.0)
            .then_some(())
    });
    assert!(master.query("forged_marker").is_empty(), "a forged sample was stored");
    // Both agents keep reporting.
    let before = value(&master, "fogmesh_agent_batch_seq{node=\"frg-a\"}").unwrap();
    wait_for("frg-a still reporting", T, || value(&master, "fogmesh_agent_batch_seq{node=\"frg-a\"}").filter(|v| *v > before + 2.0));

    // Without a client certificate the broker refuses the client.
    rt.block_on(async {
        let roots = fogmesh_common::tls::https_client_roots(&ca).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth();
        let mut opts = rumqttc::MqttOptions::new("anonymous", "127.0.0.1", port);
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls))));
        let (_client, mut events) = rumqttc::AsyncClient::new(opts, 4);
        let first = tokio::time::timeout(Duration::from_secs(10), events.poll()).await.expect("the broker answers");
        assert!(!matches!(first, Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))), "the broker accepted a client without a certificate");
        assert!(first.is_err(), "{first:?}");
    });
}

/// Checks that every collection of `node` between the first and the last
/// is stored exactly once, in order, at its original time: the batch
/// sequence series counts up by one, and the other series have a sample at
/// exactly the same times.
fn assert_nothing_lost(master: &Master, node: &str, outage: (f64, f64)) -> usize {
    let seqs = raw_samples(master, &format!("fogmesh_agent_batch_seq{{node=\"{node}\"}}"), "10m");
    assert!(seqs.len() > 10, "{seqs:?}");
    for w in seqs.windows(2) {
        assert!(w[1].0 > w[0].0, "out of order: {w:?}");
        assert_eq!(w[1].1, w[0].1 + 1.0, "a collection is missing between {w:?}");
    }
    let during: Vec<_> = seqs.iter().filter(|(t, _)| *t > outage.0 && *t < outage.1).collect();
    let expected = (outage.1 - outage.0) as usize;
    assert!(during.len() + 3 >= expected, "only {} of ~{expected} collections made during the outage were stored", during.len());
    let times: Vec<f64> = seqs.iter().map(|(t, _)| *t).collect();
    for other in ["node_load1", "node_memory_MemAvailable_bytes", "fogmesh_agent_queue_bytes"] {
        let got: Vec<f64> = raw_samples(master, &format!("{other}{{node=\"{node}\"}}"), "10m").iter().map(|(t, _)| *t).collect();
        assert_eq!(got, times, "{other} does not have a sample at every collection");
    }
    seqs.len()
}

/// Waits until the agent's queue has drained into the master.
fn wait_drained(master: &Master, node: &str, since: f64) {
    wait_for("the backlog drained", Duration::from_secs(120), || {
        let latest = raw_samples(master, &format!("fogmesh_agent_queue_batches{{node=\"{node}\"}}"), "1m");
        latest.last().filter(|(t, v)| *t > since && *v <= 2.0).map(|_| ())
    });
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn no_sample_is_lost_while_the_master_is_down_even_if_the_agent_is_killed() {
    let dir = test_dir("metrics-zero-loss");
    let mut master = Master::start_with(&dir, &["--metrics-interval", "1s"]);
    let mut agent = Agent::join_and_run(&master, "zl", "127.0.0.45");
    wait_for("first samples", T, || (raw_samples(&master, "fogmesh_agent_batch_seq{node=\"zl\"}", "1m").len() >= 3).then_some(()));

    // The master and its broker go away; the agent keeps collecting.
    master.kill();
    let down = unix_now();
    std::thread::sleep(Duration::from_secs(8));
    // kill -9 of the agent while cut off, then it starts again.
    agent.kill();
    let killed = unix_now();
    std::thread::sleep(Duration::from_secs(2));
    agent.start();
    std::thread::sleep(Duration::from_secs(6));
    master.restart();
    let back = unix_now();
    wait_drained(&master, "zl", back + 2.0);
    let n = assert_nothing_lost(&master, "zl", (down + 1.0, killed - 1.0));
    // After the agent restarted too, while the master was still down.
    let later: Vec<_> = raw_samples(&master, "fogmesh_agent_batch_seq{node=\"zl\"}", "10m").into_iter().filter(|(t, _)| *t > killed + 1.0 && *t < back - 1.0).collect();
    assert!(later.len() >= 3, "collections of the restarted agent while the master was down: {later:?}");
    eprintln!("{n} collections, all present");
}

/// The same claim with an external broker: mosquitto stays up while the
/// master is down (it accepts batches nobody reads, so the agent must send
/// them again), then mosquitto goes away too.
#[test]
fn no_sample_is_lost_through_an_external_mosquitto_over_tls() {
    assert!(mosquitto_installed(), "mosquitto is needed: apt-get install mosquitto");
    let dir = test_dir("metrics-mosquitto");
    let port = free_port();
    let url = format!("mqtts://127.0.0.1:{port}");
    let crl = Mosquitto::crl_path(&dir);
    let mut master = Master::start_with(&dir, &["--metrics-interval", "1s", "--mqtt-url", &url, "--mqtt-crl", crl.to_str().unwrap()]);
    let mut broker = Mosquitto::start(&master, port);
    let mut agent = Agent::join_and_run(&master, "mq", "127.0.0.46");
    wait_for("first samples through mosquitto", T, || (raw_samples(&master, "fogmesh_agent_batch_seq{node=\"mq\"}", "1m").len() >= 3).then_some(()));

    master.kill();
    let down = unix_now();
    std::thread::sleep(Duration::from_secs(6));
    agent.kill();
    let killed = unix_now();
    agent.start();
    std::thread::sleep(Duration::from_secs(4));
    broker.kill();
    std::thread::sleep(Duration::from_secs(4));
    broker.restart();
    master.restart();
    let back = unix_now();
    wait_drained(&master, "mq", back + 2.0);
    assert_nothing_lost(&master, "mq", (down + 1.0, killed - 1.0));
}

/// `--remote-write` forwards what the master stores to a real
/// VictoriaMetrics (Debian package), with the original timestamps.
#[test]
fn remote_write_forwards_samples_to_victoria_metrics() {
    if Command::new("victoria-metrics").arg("-version").output().is_err() {
        let _ = Command::new("sh").args(["-c", "apt-get install -y -qq victoria-metrics >/dev/null 2>&1"]).status();
    }
    let dir = test_dir("metrics-remote-write");
    let vm_port = free_port();
    let vm_data = dir.join("vm");
    let mut vm_cmd = Command::new("victoria-metrics");
    vm_cmd
        .arg(format!("-storageDataPath={}", vm_data.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{vm_port}"))
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache");
    std::fs::create_dir_all(&dir).unwrap();
    let _vm = Proc::spawn(vm_cmd, dir.join("vm.log"));
    let vm = format!("http://127.0.0.1:{vm_port}");
    wait_for("victoria-metrics up", T, || http_get(&format!("{vm}/health")));
    let master = Master::start_with(&dir, &["--metrics-interval", "1s", "--remote-write", &format!("{vm}/api/v1/write")]);
    let _agent = Agent::join_and_run(&master, "rw", "127.0.0.47");
    std::thread::sleep(Duration::from_secs(8));
    let cutoff = unix_now() - 3.0;
    let ours: Vec<(f64, f64)> = raw_samples(&master, "node_memory_MemAvailable_bytes{node=\"rw\"}", "5m").into_iter().filter(|(t, _)| *t < cutoff).collect();
    assert!(ours.len() >= 4, "{ours:?}");
    let started = Instant::now();
    let theirs = wait_for("the samples in VictoriaMetrics", T, || {
        let body = http_get(&format!("{vm}/api/v1/export?match[]=node_memory_MemAvailable_bytes%7Bnode%3D%22rw%22%7D"))?;
        let line: serde_json::Value = serde_json::from_str(body.lines().next()?).ok()?;
        let ts: Vec<f64> = line["timestamps"].as_array()?.iter().filter_map(|t| Some(t.as_f64()? / 1000.0)).collect();
        let vals: Vec<f64> = line["values"].as_array()?.iter().filter_map(|v| v.as_f64()).collect();
        let pairs: Vec<(f64, f64)> = ts.into_iter().zip(vals).filter(|(t, _)| *t < cutoff).collect();
        (pairs.len() >= ours.len()).then_some(pairs)
    });
    eprintln!("in VictoriaMetrics after {:?}", started.elapsed());
    for s in &ours {
        assert!(theirs.iter().any(|t| (t.0 - s.0).abs() < 0.0005 && t.1 == s.1), "sample {s:?} not forwarded as is: {theirs:?}");
    }
    let _ = Path::new(&vm_data);
}

/// A scaling policy's `sources` are scraped by the agent of the node that
/// runs them (the text format parsed by a maintained crate), and its
/// `interval` overrides the master's default for that node.
#[test]
fn policy_sources_are_scraped_on_their_node_at_the_policys_interval() {
    docker_ready();
    let dir = test_dir("metrics-sources");
    let master = Master::start(&dir); // the default interval: 15 s
    let _agent = Agent::join_and_run(&master, "src", "127.0.0.48");
    let adt = "tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  node_templates:
    fog:
      type: tosca.nodes.MiCADO.Edge
      properties: {public_ip: 127.0.0.48}
    exporter:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, 'mkdir -p /tmp/w; printf \"# TYPE demo_requests_total counter\\ndemo_requests_total{path=\\\"/\\\"} 42\\n\" > /tmp/w/metrics; exec httpd -f -p 9100 -h /tmp/w']
      requirements: [{host: fog}]
  policies:
    - scale:
        type: tosca.policies.Scaling.MiCADO
        targets: [exporter]
        properties:
          sources: ['exporter:9100']
          interval: 1s
          min_instances: 1
          max_instances: 1
          scaling_rule: 'pass'
";
    let path = write_adt(&dir, "sources", adt);
    master.cli_ok(&["app", "submit", path.to_str().unwrap(), "--name", "sources", "--timeout", "60s"]);
    let got = wait_for("the exporter's metric", T, || value(&master, "demo_requests_total{job=\"exporter:9100\",node=\"src\",path=\"/\"}"));
    assert_eq!(got, 42.0);
    assert_eq!(value(&master, "up{job=\"exporter:9100\"}"), Some(1.0));
    // Collected every second, not every 15.
    std::thread::sleep(Duration::from_secs(4));
    let recent = raw_samples(&master, "fogmesh_agent_batch_seq{node=\"src\"}", "3s");
    assert!(recent.len() >= 2, "the policy's 1s interval is not in effect: {recent:?}");
}

/// A master restarted on hours of metrics serves its control plane at once
/// (the log replays in the background); meanwhile queries say the store is
/// loading instead of answering from part of it, then answer from all of it.
/// It then checkpoints the store, and the next restart reads the checkpoint.
#[test]
fn a_restarted_master_serves_at_once_while_its_metrics_log_replays_then_checkpoints_it() {
    let dir = test_dir("metrics-replay");
    let mut master = Master::start_with(&dir, &["--metrics-checkpoint-every", "5s"]);
    // Three hours of 200 series every 15 s, written by the metrics benchmark.
    let work = dir.join("bench");
    let out = Command::new(bin("fogmesh-master"))
        .args(["bench", "metrics", "--series", "200", "--samples", "720", "--runs", "1", "--no-peer", "--work-dir"])
        .arg(&work)
        .output()
        .expect("run the metrics benchmark");
    assert!(out.status.success(), "{}", text(&out.stderr));
    master.kill();
    for entry in std::fs::read_dir(work.join("fogmesh")).expect("the benchmark's log") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.join("master/metrics").join(path.file_name().expect("name"))).expect("copy a log segment");
    }
    let started = Instant::now();
    master.restart();
    let serving = started.elapsed();
    master.cli_ok(&["node", "list"]);
    let count_series = |master: &Master| master.api_post("/api/v1/query", &[("query", "count(container_cpu_usage_seconds_total)")]);
    let (status, answer) = count_series(&master);
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("loading its log")), "{answer}");
    let answer = wait_for("the replayed series", T, || {
        let (status, answer) = count_series(&master);
        (status != 503).then_some(answer)
    });
    assert_eq!(answer["data"]["result"][0]["value"][1], "200", "{answer}");
    // Scaling waited for the store too (the keeper looks once a second).
    let log = wait_for("scaling to resume", T, || {
        let log = master.proc.as_ref().expect("running").log_text();
        log.contains("scaling resumed").then_some(log)
    });
    assert!(log.contains("metrics store still loading its log: serving the control plane meanwhile"), "{log}");
    assert!(log.contains("scaling paused until the metrics store can answer"), "{log}");
    eprintln!("master serving after {serving:?}; {}", log.lines().find(|l| l.contains("metrics store opened")).unwrap_or(""));

    // The log is older than --metrics-checkpoint-every: the master writes
    // the store out as a checkpoint, and the next start reads that.
    wait_for("a metrics checkpoint", T, || master.proc.as_ref().expect("running").log_text().contains("metrics checkpoint written").then_some(()));
    master.kill();
    master.restart();
    let answer = wait_for("the series after a restart on the checkpoint", T, || {
        let (status, answer) = count_series(&master);
        (status != 503).then_some(answer)
    });
    assert_eq!(answer["data"]["result"][0]["value"][1], "200", "{answer}");
    let log = master.proc.as_ref().expect("running").log_text();
    assert!(log.contains("metrics checkpoint read"), "{log}");
    eprintln!("{}", log.lines().find(|l| l.contains("metrics store opened")).unwrap_or(""));
}
