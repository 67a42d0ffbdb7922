//! Scaling end to end: MiCADO-style policies (constants, queries, a
//! Python 2 print) run unchanged against real container CPU, on the master
//! and, while it is gone, on the agent.

use std::path::Path;
use std::time::{Duration, Instant};

use fogmesh_tests::*;

const T: Duration = Duration::from_secs(120);

/// A workload `burner` pinned to the Edge node `ip` that burns CPU (capped
/// at a quarter core) while `LOAD_DIR/on` exists, a policy that scales it
/// 1..3 on its CPU rate (asking for one more each round under load, also
/// at the max), and a second workload whose rule is broken.
fn burner_adt(ip: &str, load_dir: &Path) -> String {
    format!(
        r#"tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  node_templates:
    fog:
      type: tosca.nodes.MiCADO.Edge
      properties: {{public_ip: {ip}}}
    load-dir:
      type: tosca.nodes.MiCADO.Container.Volume.HostPath
      properties: {{path: {dir}}}
    burner:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, 'trap "exit 0" TERM; while :; do if [ -f /load/on ]; then i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; else sleep 0.5; fi; done']
        resources: {{limits: {{cpu: 250m}}}}
      requirements:
        - host: fog
        - volume: {{node: load-dir, relationship: {{type: tosca.relationships.AttachesTo, properties: {{location: /load}}}}}}
    idle:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, 'trap "exit 0" TERM; while :; do sleep 1; done']
      requirements:
        - host: fog
  policies:
    - scalability:
        type: tosca.policies.Scaling.MiCADO
        targets: [burner]
        properties:
          constants: {{MAXC: 3, UP: 0.12, DOWN: 0.04}}
          queries:
            LOAD: 'avg(rate(container_cpu_usage_seconds_total{{container_label_io_kubernetes_pod_name=~"burner.*"}}[8s]))'
          min_instances: 1
          max_instances: '{{{{MAXC}}}}'
          interval: 2s
          scaling_rule: |
            print "load", LOAD
            if LOAD is not None and LOAD > UP:
              m_container_count += 1
            elif LOAD is not None and LOAD < DOWN and m_container_count > 1:
              m_container_count -= 1
    - scalability:
        type: tosca.policies.Scaling.MiCADO
        targets: [idle]
        properties:
          min_instances: 1
          max_instances: 2
          interval: 2s
          scaling_rule: |
            print('about to fail')
            m_container_count = NOT_DEFINED + 1
"#,
        dir = load_dir.display()
    )
}

fn replicas(master: &Master, app: &str, workload: &str) -> u64 {
    let show = master.cli_json(&["app", "show", app]);
    show["workloads"].as_array().and_then(|ws| ws.iter().find(|w| w["name"] == workload)).and_then(|w| w["desired_replicas"].as_u64()).unwrap_or(0)
}

/// Ids of the running containers of `workload` on `node`.
fn running_of(node: &str, workload: &str) -> Vec<String> {
    let filters = ["--filter", &format!("label=fogmesh.node={node}"), "--filter", &format!("label=fogmesh.workload={workload}")];
    let mut args = vec!["ps", "-q", "--no-trunc"];
    args.extend(filters);
    docker(&args).lines().map(String::from).collect()
}

fn events(master: &Master, app: &str) -> Vec<serde_json::Value> {
    let out = master.cli_ok(&["app", "events", app, "--last", "1000", "--format", "json"]);
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn a_micado_style_policy_scales_a_busy_container_up_and_back_down() {
    docker_ready();
    let dir = test_dir("scaling-cpu");
    let load = dir.join("load");
    std::fs::create_dir_all(&load).unwrap();
    let master = Master::start_with(&dir, &["--metrics-interval", "2s"]);
    let _agent = Agent::join_and_run(&master, "sc-a", "127.0.0.51");
    let adt = write_adt(&dir, "burn", &burner_adt("127.0.0.51", &load));
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--name", "burn", "--timeout", "90s"]);
    assert_eq!(replicas(&master, "burn", "burner"), 1);

    // Load: up one replica per round, changes at least two periods apart, to the max.
    std::fs::write(load.join("on"), "").unwrap();
    let started = Instant::now();
    wait_for("3 replicas under load", T, || (replicas(&master, "burn", "burner") == 3 && running_of("sc-a", "burner").len() == 3).then_some(()));
    eprintln!("1 -> 3 replicas in {:?}", started.elapsed());
    let log = events(&master, "burn");
    let up: Vec<_> = log.iter().filter(|e| e["target"] == "burner" && e["outcome"] == "scaled").collect();
    assert!(up.iter().any(|e| e["from"] == 1 && e["to"] == 2) && up.iter().any(|e| e["from"] == 2 && e["to"] == 3), "{up:?}");
    assert!(up[0]["printed"][0].as_str().unwrap().starts_with("load 0."), "the Python 2 print ran: {:?}", up[0]["printed"]);
    assert!(up[0]["readings"]["LOAD"].as_f64().unwrap() > 0.12, "{:?}", up[0]);
    for w in up.windows(2) {
        assert!(w[1]["at_ms"].as_i64().unwrap() - w[0]["at_ms"].as_i64().unwrap() >= 4000, "cooldown of two periods: {w:?}");
    }
    // The rule asks for more at the max: a round says so and keeps 3.
    let clamped = wait_for("a round at the max", T, || {
        events(&master, "burn").into_iter().find(|e| {
            e["target"] == "burner" && e["outcome"] == "unchanged" && e["from"] == 3 && e["to"] == 3 && e["message"].as_str().is_some_and(|m| m.contains("m_container_count = 4 is outside 1..3: 3"))
        })
    });
    assert!(clamped["readings"]["LOAD"].as_f64().unwrap() > 0.12, "still under load: {clamped}");
    assert_eq!(replicas(&master, "burn", "burner"), 3);
    assert_eq!(running_of("sc-a", "burner").len(), 3);

    // The broken rule: reported with its line, nothing scaled, printed lines kept.
    let failed = events(&master, "burn").into_iter().find(|e| e["target"] == "idle").expect("rounds of the broken policy");
    assert_eq!(failed["outcome"], "failed");
    let message = failed["message"].as_str().unwrap();
    assert!(message.contains("line 2") && message.contains("NOT_DEFINED"), "{message}");
    assert_eq!(failed["printed"][0], "about to fail");
    assert_eq!(replicas(&master, "burn", "idle"), 1);
    let show = master.cli_ok(&["app", "show", "burn"]);
    assert!(show.contains("POLICY") && show.contains("FAILED") && show.contains("scalability #1"), "{show}");

    // No load: back down to the minimum.
    std::fs::remove_file(load.join("on")).unwrap();
    let started = Instant::now();
    wait_for("1 replica without load", T, || (replicas(&master, "burn", "burner") == 1 && running_of("sc-a", "burner").len() == 1).then_some(()));
    eprintln!("3 -> 1 replicas in {:?}", started.elapsed());
}

#[test]
fn a_node_cut_off_from_the_master_scales_on_its_own_and_the_master_takes_it_over() {
    docker_ready();
    let dir = test_dir("scaling-offline");
    let load = dir.join("load");
    std::fs::create_dir_all(&load).unwrap();
    let mut master = Master::start_with(&dir, &["--metrics-interval", "2s"]);
    let mut agent = Agent::join(&master, "sc-b", "127.0.0.52", &master.dir.join("agent-sc-b"), &[]).unwrap();
    agent.run_args = ["--master-timeout", "2s", "--autonomy-after", "2s"].iter().map(|s| s.to_string()).collect();
    agent.start();
    let adt = write_adt(&dir, "burn", &burner_adt("127.0.0.52", &load));
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--name", "burn", "--timeout", "90s"]);
    assert_eq!(replicas(&master, "burn", "burner"), 1);

    // The master goes away; then the load comes.
    master.kill();
    std::fs::write(load.join("on"), "").unwrap();
    let started = Instant::now();
    wait_for("the agent scaling to 3 on its own", T, || (running_of("sc-b", "burner").len() == 3).then_some(()));
    eprintln!("offline: 1 -> 3 replicas in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(running_of("sc-b", "burner").len(), 3, "within the policy's max");
    let ids = |name: &str| -> Vec<String> {
        let mut v = running_of(name, "burner");
        v.sort();
        v
    };
    let before = ids("sc-b");

    // The master comes back: it records the agent's decisions and takes its count.
    master.restart();
    wait_for("the agent's decisions in the events", T, || {
        events(&master, "burn").iter().any(|e| e["by"].as_str().is_some_and(|b| b.contains("sc-b")) && e["to"] == 3).then_some(())
    });
    wait_for("the master at 3 replicas", T, || (replicas(&master, "burn", "burner") == 3).then_some(()));
    let offline: Vec<_> = events(&master, "burn").into_iter().filter(|e| e["by"].as_str().is_some_and(|b| b.contains("sc-b"))).collect();
    let burner: Vec<_> = offline.iter().filter(|e| e["target"] == "burner").collect();
    assert!(burner.len() == 2 && burner.iter().all(|e| e["outcome"] == "scaled" && e["printed"][0].as_str().is_some_and(|p| p.starts_with("load "))), "{offline:?}");
    // The broken rule failed on the node too: reported once, not every round.
    let idle: Vec<_> = offline.iter().filter(|e| e["target"] == "idle").collect();
    assert!(idle.len() == 1 && idle[0]["outcome"] == "failed", "{idle:?}");
    // The master is in control again: it runs the policy (a round of its
    // own, with readings, after the agent's report; rounds from before the
    // outage do not count), and the node has acked the state it sent since.
    // Nothing restarted to get there.
    let taken = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    wait_for("a round of the master's after the take-over", T, || {
        events(&master, "burn")
            .iter()
            .any(|e| e["target"] == "burner" && e["by"] == "master" && e["at_ms"].as_i64() > Some(taken) && e["readings"]["LOAD"].is_number())
            .then_some(())
    });
    wait_for("the node to ack the master's desired state with 3 running", T, || {
        let nodes = master.cli_json(&["node", "list"]);
        let n = nodes.as_array()?.iter().find(|n| n["name"] == "sc-b")?.clone();
        (n["state"] == "ready" && n["acked_generation"] == n["desired_generation"] && n["containers_running"] == 4).then_some(())
    });
    assert_eq!(ids("sc-b"), before, "taking over the agent's count restarted nothing");
    let _ = agent.log_text();
}

/// An exporter (busybox httpd) on `ip` serving `dir/metrics`: what a
/// node-set policy reads through its `sources`.
fn exporter_template(ip: &str, dir: &Path) -> String {
    format!(
        r#"    ctl:
      type: tosca.nodes.MiCADO.Edge
      properties: {{public_ip: {ip}}}
    metrics-dir:
      type: tosca.nodes.MiCADO.Container.Volume.HostPath
      properties: {{path: {dir}}}
    exporter:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, 'exec httpd -f -p 9100 -h /www']
      requirements:
        - host: ctl
        - volume: {{node: metrics-dir, relationship: {{type: tosca.relationships.AttachesTo, properties: {{location: /www}}}}}}
"#,
        dir = dir.display()
    )
}

fn active_set(master: &Master, app: &str, workload: &str) -> std::collections::BTreeSet<String> {
    let show = master.cli_json(&["app", "show", app]);
    show["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == workload))
        .and_then(|w| w["placements"].as_array())
        .map(|ps| ps.iter().filter_map(|p| p["node"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// A fog node set (`Edge.Group` by label): its policy activates as many of
/// the registered fog nodes as it decides, drops the ones it names, and the
/// DaemonSet hosted on the set follows (one replica per active member).
#[test]
fn a_fog_node_set_grows_shrinks_and_drops_the_node_its_rule_names() {
    docker_ready();
    let dir = test_dir("scaling-fog-set");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("metrics"), "wanted_nodes 1\n").unwrap();
    let master = Master::start_with(&dir, &["--metrics-interval", "2s"]);
    let mut agents = Vec::new();
    for (name, ip) in [("fs-1", "127.0.0.61"), ("fs-2", "127.0.0.62"), ("fs-3", "127.0.0.63")] {
        let mut a = Agent::join(&master, name, ip, &master.dir.join(format!("agent-{name}")), &["--label", "pool=p1"]).unwrap();
        a.start();
        agents.push(a);
    }
    let adt = format!(
        r#"tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  node_templates:
    pool:
      type: tosca.nodes.MiCADO.Edge.Group
      properties:
        selector: {{pool: p1}}
    svc:
      type: tosca.nodes.MiCADO.Container.Application.Docker.DaemonSet
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, 'trap "exit 0" TERM; while :; do sleep 1; done']
      requirements:
        - host: pool
{exporter}  policies:
    - pool-size:
        type: tosca.policies.Scaling.MiCADO
        targets: [pool]
        properties:
          sources: ['exporter:9100']
          queries:
            WANT: 'max(wanted_nodes)'
            DROP: ['drop_node', 'name']
          min_instances: 1
          max_instances: 3
          interval: 2s
          cooldown: 2s
          scaling_rule: |
            if DROP:
              m_nodes_todrop = DROP
            elif WANT is not None:
              m_node_count = int(WANT)
            print('want', WANT, 'drop', DROP, 'nodes', len(m_nodes))
"#,
        exporter = exporter_template("127.0.0.61", &www)
    );
    let path = write_adt(&dir, "pool", &adt);
    master.cli_ok(&["app", "submit", path.to_str().unwrap(), "--name", "pool", "--timeout", "90s"]);
    let one = wait_for("svc on one active member", T, || {
        let s = active_set(&master, "pool", "svc");
        (s.len() == 1).then_some(s)
    });
    // The rule asks for 3: svc follows onto the newly active members.
    std::fs::write(www.join("metrics"), "wanted_nodes 3\n").unwrap();
    wait_for("svc spread over 3 active members", T, || (active_set(&master, "pool", "svc").len() == 3).then_some(()));
    assert!(active_set(&master, "pool", "svc").is_superset(&one), "the first member stays active");
    // The rule names a node to drop: it leaves the set, its replica moves.
    std::fs::write(www.join("metrics"), "wanted_nodes 3\ndrop_node{name=\"fs-2\"} 1\n").unwrap();
    let after = wait_for("fs-2 dropped", T, || {
        let s = active_set(&master, "pool", "svc");
        (s.len() == 2 && !s.contains("fs-2")).then_some(s)
    });
    assert!(after.contains("fs-1") && after.contains("fs-3"), "{after:?}");
    let log: Vec<serde_json::Value> = master.cli_ok(&["app", "events", "pool", "--format", "json"]).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(log.iter().any(|e| e["target"] == "pool" && e["message"].as_str().is_some_and(|m| m.contains("nodes to drop: fs-2"))), "{log:?}");
    let show = master.cli_json(&["app", "show", "pool"]);
    let policy = &show["scaling"][0];
    assert_eq!((policy["target"].as_str(), policy["current"].as_u64()), (Some("pool"), Some(2)), "{policy}");
}

/// A cloud node set: the count goes to the operator's hook, machines that
/// join with `--node-set` become members, and its workloads run on them.
#[test]
fn a_cloud_node_set_count_goes_to_the_hook_and_joined_members_run_its_workloads() {
    docker_ready();
    let dir = test_dir("scaling-cloud-set");
    let calls = dir.join("hook-calls");
    let hook = dir.join("hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display())).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    let master = Master::start_with(&dir, &["--node-set-hook", hook.to_str().unwrap()]);
    let adt = r#"tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  node_templates:
    workers:
      type: tosca.nodes.MiCADO.EC2.Compute
      properties: {region_name: eu-west-1, image_id: ami-0123456789, instance_type: t3.small}
    job:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, 'trap "exit 0" TERM; while :; do sleep 1; done']
      requirements:
        - host: workers
  policies:
    - workers-size:
        type: tosca.policies.Scaling.MiCADO
        targets: [workers]
        properties:
          min_instances: 1
          max_instances: 4
          interval: 1s
          scaling_rule: |
            m_node_count = 2
"#;
    let path = write_adt(&dir, "cloud", adt);
    master.cli_ok(&["app", "submit", path.to_str().unwrap(), "--name", "cloud", "--no-wait"]);
    let line = wait_for("the hook called", T, || std::fs::read_to_string(&calls).ok().filter(|c| !c.is_empty()));
    assert_eq!(line.trim(), "cloud workers 2");
    let show = master.cli_json(&["app", "show", "cloud"]);
    assert_eq!(show["scaling"][0]["current"], 2);
    let own = master.api_get_text("/metrics");
    assert!(own.contains(r#"fogmesh_scaling_target_count{app="cloud",policy="workers-size #1",target="workers",kind="node_set"} 2"#), "{own}");
    let pending = show["workloads"][0]["pending"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(pending.contains("--node-set workers"), "{pending}");
    // A machine the hook made joins as a member: the job runs there.
    let mut member = Agent::join(&master, "cs-1", "127.0.0.64", &master.dir.join("agent-cs-1"), &["--node-set", "workers"]).unwrap();
    member.start();
    wait_for("the job on the member", T, || (active_set(&master, "cloud", "job") == ["cs-1".to_string()].into()).then_some(()));
    wait_for("the job running", T, || (!running_containers("cs-1").is_empty()).then_some(()));
}
