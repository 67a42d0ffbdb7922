//! A control plane you can trust: no self-inflicted outages, truthful
//! rollouts. Real master, real agents (or the fleet simulator, which runs
//! the real connector and store), real Docker.

use std::time::{Duration, Instant};

use fogmesh_tests::*;

const T: Duration = Duration::from_secs(60);

/// A hostless workload with one replica per simulated node, and an input
/// to change so that every node gets a new desired state at once.
fn fleet_adt(dir: &std::path::Path, replicas: usize) -> std::path::PathBuf {
    let path = dir.join("fleet.yaml");
    std::fs::write(
        &path,
        format!(
            "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  inputs:\n    round: {{type: string, default: '0'}}\n  node_templates:\n    probe:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      occurrences: [{replicas}, {replicas}]\n      properties:\n        image: fogmesh/busybox:test\n        env: [{{name: ROUND, value: {{get_input: round}}}}]\n"
        ),
    )
    .unwrap();
    path
}

/// Item 0: fifty agents ack one change at once, twenty times in a row; the
/// master keeps accepting writes (sled deadlocked here with a flush per ack).
#[test]
fn many_agents_acking_at_once_never_block_the_master() {
    let dir = test_dir("acks");
    let master = Master::start(&dir);
    let _fleet = Fleet::start(&master, "ack", 50, "10.201.0.0");
    let adt = fleet_adt(&dir, 50);
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--name", "fleet", "--timeout", "60s"]);
    for round in 1..=20 {
        let started = Instant::now();
        let out = master.cli(&["app", "update", "fleet", adt.to_str().unwrap(), "--param", &format!("round={round}"), "--timeout", "60s"]);
        assert!(out.status.success(), "round {round} did not roll out:\n{}{}", text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stdout).contains("50 container(s) on 50 node(s)"), "{}", text(&out.stdout));
        eprintln!("round {round}: {:?}", started.elapsed());
        // Writes still go through while acks pour in.
        master.cli_ok(&["token", "create", "--ttl", "1m"]);
    }
    let nodes = master.cli_json(&["node", "list"]);
    let acked_all = nodes.as_array().unwrap().iter().all(|n| n["state"] == "ready" && n["acked_generation"] == n["desired_generation"]);
    assert!(acked_all, "{nodes}");
}
