//! Node certificates renew while agents run: over the live session at two
//! thirds of their life, with a new key, losing no session and no sample;
//! and a node that was offline past expiry renews when it returns, with no
//! new token, its workloads running all along. Revocation still wins.

use std::time::Duration;

use fogmesh_tests::*;

const T: Duration = Duration::from_secs(120);

fn cert_expires_ms(master: &Master, name: &str) -> u64 {
    master.node(name)["cert_expires_ms"].as_u64().unwrap_or_else(|| panic!("no certificate expiry for {name}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Every batch sequence number the master stored for `node`, in time order.
fn batch_seqs(master: &Master, node: &str) -> Vec<u64> {
    let series = master.query(&format!("fogmesh_agent_batch_seq{{node=\"{node}\"}}[10m]"));
    series
        .first()
        .and_then(|s| s["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect()
}

#[test]
fn certificates_renew_over_live_sessions_with_no_session_or_sample_lost() {
    let dir = test_dir("cert-renewal");
    let master = Master::start_with(&dir, &["--node-cert-lifetime", "45s", "--metrics-interval", "1s"]);
    let agents: Vec<Agent> = (0..3).map(|i| Agent::join_and_run(&master, &format!("renew-{i}"), &format!("127.0.0.{}", 61 + i))).collect();
    // Removed later: its removal makes every session check its certificate again.
    let removed = Agent::join_and_run(&master, "renew-x", "127.0.0.66");
    let first_expiry = cert_expires_ms(&master, "renew-0");
    assert!(first_expiry.abs_diff(now_ms() + 45_000) < 10_000, "a 45 s certificate expires at {first_expiry}");
    let first_key = std::fs::read_to_string(agents[0].data_dir.join("node.key")).unwrap();

    // Two renewals each (at 30 s, then 30 s after): past the first certificate's end.
    for a in agents.iter().chain([&removed]) {
        wait_for(&format!("{} renewing twice", a.name), T, || (a.log_text().matches("node certificate renewed node=").count() >= 2).then_some(()));
    }
    assert!(now_ms() > first_expiry, "the test outlived the first certificates");
    let renewed_expiry = cert_expires_ms(&master, "renew-0");
    assert!(renewed_expiry > first_expiry + 30_000, "expiry {first_expiry} -> {renewed_expiry}");
    assert_ne!(std::fs::read_to_string(agents[0].data_dir.join("node.key")).unwrap(), first_key, "a renewal brings a new key");

    // Sessions that renewed twice still hold their node when they check again.
    master.cli_ok(&["node", "remove", "renew-x"]);
    wait_for("renew-x told it was removed", T, || removed.log_text().contains("the master removed this node").then_some(()));

    // Nothing was lost: one session each, every collection stored once, no batch refused.
    let seen = batch_seqs(&master, "renew-0").last().copied().unwrap_or(0);
    for a in &agents {
        let log = a.log_text();
        assert_eq!(log.matches("connected to the master").count(), 1, "{} had to reconnect:\n{log}", a.name);
        assert!(!log.contains("another agent took over this node"), "{log}");
        assert!(log.contains("node certificate renewed: reconnecting to the metrics broker with it"), "{log}");
        wait_for(&format!("{}'s newest batches stored", a.name), T, || (batch_seqs(&master, &a.name).last().copied().unwrap_or(0) > seen + 2).then_some(()));
        let seqs = batch_seqs(&master, &a.name);
        assert!(seqs.len() > 60, "{}: {} collections", a.name, seqs.len());
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0] + 1, "{}: a collection is missing between {w:?}", a.name);
        }
    }
    assert_eq!(master.own_metric("fogmesh_ingest_refused_total{reason=\"forged\"}"), 0.0);
    for n in master.cli_json(&["node", "list"]).as_array().unwrap() {
        assert_ne!(n["name"], "renew-x");
        assert_eq!(n["state"], "ready", "{n}");
    }
}

#[test]
fn a_node_offline_past_expiry_renews_on_return_and_its_workloads_never_stop() {
    docker_ready();
    let dir = test_dir("cert-expiry");
    let master = Master::start_with(&dir, &["--node-cert-lifetime", "30s"]);
    let mut back = Agent::join_and_run(&master, "offline-a", "127.0.0.64");
    let mut gone = Agent::join_and_run(&master, "offline-b", "127.0.0.65");
    let adt = write_adt(&dir, "steady", &edge_adt("127.0.0.64", "job", "        image: fogmesh/busybox:test\n"));
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);
    let id = container_id("offline-a", "steady", "job");
    assert!(!id.is_empty());

    // Both go offline until their certificates have expired.
    back.kill();
    gone.kill();
    let expiry = cert_expires_ms(&master, "offline-a").max(cert_expires_ms(&master, "offline-b"));
    wait_for("both certificates expired", T, || (now_ms() > expiry + 1000).then_some(()));
    assert!(master.cli_ok(&["node", "list"]).contains("expired "), "node list says the certificate expired");

    // One is removed meanwhile: revocation wins over renewal.
    master.cli_ok(&["node", "remove", "offline-b"]);

    back.start();
    gone.start();
    wait_for("offline-a renewed and back", T, || {
        (back.log_text().contains("the expired node certificate was renewed") && master.node("offline-a")["state"] == "ready").then_some(())
    });
    assert!(cert_expires_ms(&master, "offline-a") > now_ms(), "a fresh certificate");
    assert_eq!(container_id("offline-a", "steady", "job"), id, "the workload ran on, untouched, all along");
    wait_for("offline-b told it was removed", T, || gone.log_text().contains("the master removed this node").then_some(()));
    assert!(!gone.log_text().contains("the expired node certificate was renewed"), "{}", gone.log_text());
}
