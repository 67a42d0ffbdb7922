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
    let out = master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--name", "fleet", "--timeout", "60s"]);
    // 50 nodes: one summary line per change, not a line per node and container.
    assert!(out.contains("50/50 nodes acked, 50/50 containers running"), "{out}");
    assert!(!out.contains("replica 1 on ack-") && !out.contains("node ack-"), "{out}");
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
    // The same fleet in counts.
    let summary = master.cli_ok(&["node", "summary"]);
    assert!(summary.starts_with("50 nodes: 50 ready, 0 offline, 0 pending\ncontainers: 50/50 running\n"), "{summary}");
    assert!(!summary.contains("not stored"), "{summary}");
    drop(_fleet);
    wait_for("the stopped fleet to be offline", Duration::from_secs(30), || {
        master.cli_ok(&["node", "summary"]).starts_with("50 nodes: 0 ready, 50 offline").then_some(())
    });
}

/// A web server on `port` of the node (stops at once on SIGTERM).
fn web_props(image: &str, port: u16, command: &str) -> String {
    format!(
        "        image: {image}\n        command: [/bin/sh, -c, \"{command}\"]\n        ports: [{{containerPort: 8080, hostPort: {port}}}]\n"
    )
}

const SERVE: &str = "trap 'exit 0' TERM; echo v1 > /tmp/index.html; /bin/httpd -f -p 8080 -h /tmp & wait";

/// Items 1 and 2: "running" only when it runs; a bad update fails loudly,
/// exits non-zero and leaves the old version serving.
#[test]
fn rollouts_tell_the_truth_and_bad_updates_keep_the_old_version_serving() {
    docker_ready();
    let dir = test_dir("truth");
    let master = Master::start(&dir);
    let agent = Agent::join_and_run(&master, &format!("tr{}", std::process::id()), "127.0.0.20");
    let port = free_port();
    let url = format!("http://127.0.0.20:{port}/index.html");
    let good = write_adt(&dir, "web", &edge_adt("127.0.0.20", "web", &web_props("fogmesh/busybox:test", port, SERVE)));
    let out = master.cli_ok(&["app", "submit", good.to_str().unwrap(), "--timeout", "60s"]);
    assert!(out.contains("app web is running (revision 1)"), "{out}");
    assert_eq!(http_get(&url).as_deref(), Some("v1\n"), "running means serving");
    let serving = container_id(&agent.name, "web", "web");

    // A missing image: non-zero exit naming the image; the old version serves on.
    let bad = write_adt(&dir, "bad", &edge_adt("127.0.0.20", "web", &web_props("nosuch:tag", port, SERVE)));
    let out = master.cli(&["app", "update", "web", bad.to_str().unwrap(), "--timeout", "60s"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "update to a missing image must fail:\n{stdout}{stderr}");
    assert!(stderr.contains("failed to roll out") && stderr.contains("nosuch:tag"), "{stderr}");
    assert!(!stdout.contains("is running"), "{stdout}");
    assert_eq!(http_get(&url).as_deref(), Some("v1\n"), "the old version must keep serving");
    assert_eq!(container_id(&agent.name, "web", "web"), serving);
    let shown = master.cli_json(&["app", "show", "web"]);
    assert_eq!(shown["rollout"]["phase"], "failed", "{shown}");
    let c = &shown["workloads"][0]["placements"][0]["containers"][0];
    assert_eq!(c["current"], false, "{shown}");
    assert!(c["error"].as_str().unwrap_or("").contains("nosuch:tag"), "{shown}");
    assert_eq!(shown["nodes"][0]["acked_generation"], shown["nodes"][0]["desired_generation"], "acked, yet not running: {shown}");

    // A version that crashes at once: rolled back, non-zero exit with the exit code.
    let crash = write_adt(&dir, "crash", &edge_adt("127.0.0.20", "web", &web_props("fogmesh/busybox:test", port, "echo broken; exit 3")));
    let out = master.cli(&["app", "update", "web", crash.to_str().unwrap(), "--timeout", "60s"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a crashing update must fail: {}{stderr}", text(&out.stdout));
    assert!(stderr.contains("exited with code 3"), "{stderr}");
    assert_eq!(http_get(&url).as_deref(), Some("v1\n"), "the previous version is back");

    // A host port held by a process outside fogmesh: non-zero exit naming the port.
    let held = std::net::TcpListener::bind("127.0.0.20:0").unwrap();
    let busy = held.local_addr().unwrap().port();
    let other = write_adt(&dir, "other", &edge_adt("127.0.0.20", "srv", &web_props("fogmesh/busybox:test", busy, SERVE)));
    let out = master.cli(&["app", "submit", other.to_str().unwrap(), "--timeout", "60s"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&busy.to_string()), "{}{stderr}", text(&out.stdout));
    drop(held);

    // And a good update rolls out and is said to run only once it serves.
    let v2 = write_adt(&dir, "v2", &edge_adt("127.0.0.20", "web", &web_props("fogmesh/busybox:test", port, &SERVE.replace("v1", "v2"))));
    let out = master.cli_ok(&["app", "update", "web", v2.to_str().unwrap(), "--timeout", "60s"]);
    assert!(out.contains("is running (revision 4)"), "{out}");
    assert_eq!(http_get(&url).as_deref(), Some("v2\n"));
}

/// Item 3: writes are serialised; revisions are unique; a delete wins cleanly.
#[test]
fn parallel_writers_get_unique_revisions_and_deletes_never_half_happen() {
    let dir = test_dir("writers");
    let master = Master::start(&dir);
    let adt = fleet_adt(&dir, 1);
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--name", "w", "--no-wait"]);
    let revisions: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (master, adt) = (&master, &adt);
                s.spawn(move || {
                    let out = master.cli_ok(&["app", "update", "w", adt.to_str().unwrap(), "--param", &format!("round={i}"), "--no-wait"]);
                    out.split("to revision ").nth(1).and_then(|r| r.trim().parse().ok()).unwrap_or_else(|| panic!("no revision in {out}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = revisions.clone();
    sorted.sort();
    assert_eq!(sorted, (2..=21).collect::<Vec<u64>>(), "every write gets its own revision: {revisions:?}");

    // Optimistic concurrency for scripts.
    let out = master.cli(&["app", "update", "w", adt.to_str().unwrap(), "--revision", "5", "--no-wait"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is at revision 21, not 5"), "{}", text(&out.stderr));
    master.cli_ok(&["app", "update", "w", adt.to_str().unwrap(), "--revision", "21", "--no-wait"]);

    // Update racing delete: the update lands first or finds no app; never a deleted app that lives on.
    for i in 0..5 {
        let name = format!("race{i}");
        master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--name", &name, "--no-wait"]);
        let (update, delete) = std::thread::scope(|s| {
            let u = s.spawn(|| master.cli(&["app", "update", &name, adt.to_str().unwrap(), "--param", "round=x", "--no-wait"]));
            let d = s.spawn(|| master.cli(&["app", "delete", &name]));
            (u.join().unwrap(), d.join().unwrap())
        });
        assert!(delete.status.success(), "{}", text(&delete.stderr));
        assert!(update.status.success() || text(&update.stderr).contains("no app with id or name"), "{}", text(&update.stderr));
        let list = master.cli_json(&["app", "list"]);
        assert!(!list.as_array().unwrap().iter().any(|a| a["name"] == name.as_str()), "deleted app {name} still exists: {list}");
    }
}

/// Item 4: an app too big for one frame is refused with node, size and
/// limit; other apps still reach that node.
#[test]
fn an_app_too_big_for_the_wire_is_refused_and_the_node_still_serves_others() {
    docker_ready();
    let dir = test_dir("size");
    let master = Master::start(&dir);
    let agent = Agent::join_and_run(&master, &format!("sz{}", std::process::id()), "127.0.0.21");
    let blob = "x".repeat(900_000);
    let big = format!(
        "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    fog: {{type: tosca.nodes.MiCADO.Edge, properties: {{public_ip: 127.0.0.21}}}}\n    cfg:\n      type: tosca.nodes.MiCADO.Container.Config.ConfigMap\n      properties: {{data: {{blob: {blob}}}}}\n    worker:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      instance_count: 5\n      properties: {{image: fogmesh/busybox:test}}\n      requirements:\n        - host: fog\n        - volume: cfg\n"
    );
    let out = master.cli(&["app", "submit", write_adt(&dir, "big", &big).to_str().unwrap(), "--timeout", "30s"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("on node {}", agent.name)) && stderr.contains("4194304 byte limit") && stderr.contains("413"), "{stderr}");
    assert!(master.cli_json(&["app", "list"]).as_array().unwrap().is_empty(), "nothing was stored");

    let small = write_adt(&dir, "small", &edge_adt("127.0.0.21", "ok", "        image: fogmesh/busybox:test\n"));
    master.cli_ok(&["app", "submit", small.to_str().unwrap(), "--timeout", "60s"]);
    assert_eq!(running_containers(&agent.name).len(), 1);
}

/// Item 5: names and labels come from the app id: no two apps collide.
#[test]
fn apps_whose_names_join_alike_both_run() {
    docker_ready();
    let dir = test_dir("names");
    let master = Master::start(&dir);
    let agent = Agent::join_and_run(&master, &format!("nm{}", std::process::id()), "127.0.0.22");
    let one = write_adt(&dir, "one", &edge_adt("127.0.0.22", "y-z", "        image: fogmesh/busybox:test\n"));
    let two = write_adt(&dir, "two", &edge_adt("127.0.0.22", "z", "        image: fogmesh/busybox:test\n"));
    master.cli_ok(&["app", "submit", one.to_str().unwrap(), "--name", "cx", "--timeout", "60s"]);
    master.cli_ok(&["app", "submit", two.to_str().unwrap(), "--name", "cx-y", "--timeout", "60s"]);
    assert_eq!(running_containers(&agent.name).len(), 2);
    assert!(inspect(&agent.name, "cx", "y-z").is_some() && inspect(&agent.name, "cx-y", "z").is_some());
}

fn node_json(master: &Master, name: &str) -> serde_json::Value {
    let nodes = master.cli_json(&["node", "list"]);
    nodes.as_array().unwrap().iter().find(|n| n["name"] == name).cloned().unwrap_or_default()
}

fn has_condition(node: &serde_json::Value, kind: &str) -> bool {
    node["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["kind"] == kind))
}

/// Item 6: losing or corrupting the agent's store never removes a workload;
/// the master's state is taken when it answers.
#[test]
fn a_lost_or_corrupt_agent_store_never_stops_a_workload() {
    docker_ready();
    let dir = test_dir("storeloss");
    let mut master = Master::start(&dir);
    let mut agent = Agent::join_and_run(&master, &format!("sl{}", std::process::id()), "127.0.0.23");
    let adt = write_adt(&dir, "keep", &edge_adt("127.0.0.23", "job", "        image: fogmesh/busybox:test\n"));
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);
    let id = container_id(&agent.name, "keep", "job");

    // Store deleted while the master is unreachable: nothing is removed.
    master.kill();
    agent.kill();
    std::fs::remove_file(agent.data_dir.join("desired.state")).unwrap();
    agent.start();
    wait_for("the agent to start without a store", T, || agent.log_text().contains("no stored desired state").then_some(()));
    // It keeps what runs, and still looks after it: the container, killed,
    // is started again (the same one), though no desired state names it.
    docker(&["kill", &id]);
    wait_for("the agent to restart the killed container without a store", T, || {
        (agent.log_text().contains("restarting (no desired state: keeping what runs)") && running_containers(&agent.name) == [id[..12].to_string()]).then_some(())
    });
    assert_eq!(running_containers(&agent.name), vec![id[..12].to_string()], "the workload must survive a lost store");

    // The master answers: its state is taken, the same container keeps running.
    master.restart();
    wait_for("the state from the master", T, || agent.data_dir.join("desired.state").exists().then_some(()));
    wait_for("the master to see it running", T, || (master.cli_json(&["app", "show", "keep"])["rollout"]["phase"] == "running").then_some(()));
    assert_eq!(container_id(&agent.name, "keep", "job"), id, "adopted, not recreated");

    // A corrupt store is moved aside, reported, and still removes nothing.
    agent.kill();
    std::fs::write(agent.data_dir.join("desired.state"), b"FMDS\x01garbage").unwrap();
    master.kill();
    agent.start();
    wait_for("the corrupt store to be reported", T, || agent.log_text().contains("unreadable").then_some(()));
    let aside = std::fs::read_dir(&agent.data_dir).unwrap().filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("desired.state.corrupt-"));
    assert!(aside, "the corrupt file is kept aside");
    docker(&["kill", &id]);
    wait_for("the agent to restart the killed container with its store lost", T, || {
        (agent.log_text().contains("restarting (no desired state: keeping what runs)") && running_containers(&agent.name) == [id[..12].to_string()]).then_some(())
    });
    assert_eq!(container_id(&agent.name, "keep", "job"), id);
    master.restart();
    wait_for("the master to show the condition cleared after the new state is stored", T, || {
        let n = node_json(&master, &agent.name);
        (n["state"] == "ready" && !has_condition(&n, "StoreLost")).then_some(())
    });
    assert_eq!(container_id(&agent.name, "keep", "job"), id);
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).output().unwrap();
        assert!(out.status.success(), "mount tmpfs (the tests run as root): {}", text(&out.stderr));
        SmallDisk(path.to_path_buf())
    }

    /// Fills the disk; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        let _ = std::process::Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", filler.display())).output();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Item 6, full disk: containers keep running, the node reports it, and
/// the agent recovers by itself when space returns.
#[test]
fn a_full_disk_is_reported_and_the_agent_recovers_by_itself() {
    docker_ready();
    let dir = test_dir("fulldisk");
    let master = Master::start(&dir);
    let disk = SmallDisk::mount(&dir.join("disk"), "1m");
    let name = format!("fd{}", std::process::id());
    let mut agent = Agent::join_and_run_in(&master, &name, "127.0.0.24", &disk.0.join("agent"));
    let props = |v: &str| format!("        image: fogmesh/busybox:test\n        env: [{{name: V, value: '{v}'}}]\n");
    let adt = write_adt(&dir, "disk", &edge_adt("127.0.0.24", "job", &props("1")));
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);
    let id = container_id(&agent.name, "disk", "job");

    let filler = disk.fill();
    let adt = write_adt(&dir, "disk", &edge_adt("127.0.0.24", "job", &props("2")));
    master.cli_ok(&["app", "update", "disk", adt.to_str().unwrap(), "--no-wait"]);
    wait_for("the full disk to show in node list", T, || has_condition(&node_json(&master, &name), "StoreWriteFailed").then_some(()));
    let shown = master.cli_ok(&["node", "list"]);
    assert!(shown.contains("No space left on device"), "{shown}");
    assert_eq!(container_id(&agent.name, "disk", "job"), id, "the running container is untouched");
    assert!(env_of(&agent.name, "disk", "job").contains(&"V=1".to_string()));

    std::fs::remove_file(filler).unwrap();
    wait_for("the agent to recover by itself", T, || env_of(&agent.name, "disk", "job").contains(&"V=2".to_string()).then_some(()));
    wait_for("the condition to clear", T, || (!has_condition(&node_json(&master, &name), "StoreWriteFailed")).then_some(()));
    agent.kill();
}

/// Item 7: idle or slow API clients cannot use up the master; bodies over
/// the limit get 413; the Bearer scheme is case-insensitive.
#[test]
fn idle_api_clients_cannot_starve_the_master() {
    let dir = test_dir("hygiene");
    let master = Master::start(&dir);
    let addr = format!("127.0.0.1:{}", master.api_port);
    let pid = master.proc.as_ref().unwrap().child.id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let before = fds();
    // Three hundred connections that never say a word.
    let silent: Vec<std::net::TcpStream> = (0..300).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(fds() <= before + 128 + 8, "the master holds {} descriptors (was {before}) for 300 silent clients", fds());
    // The handshake deadline frees the slots while the clients still hold their sockets.
    wait_for("the API to answer again", Duration::from_secs(20), || master.cli(&["node", "list"]).status.success().then_some(()));
    drop(silent);

    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(master.config()).unwrap()).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, conf["ca_pem"].as_str().unwrap()).unwrap();
    let token = conf["token"].as_str().unwrap();
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(extra)
            .arg(format!("https://127.0.0.1:{}/v1/apps", master.api_port))
            .output()
            .unwrap();
        text(&out.stdout)
    };
    assert_eq!(curl(&["-H", &format!("authorization: bearer {token}")]), "200", "lower-case bearer");
    assert_eq!(curl(&["-H", "Authorization: Bearer wrong"]), "401");
    let huge = dir.join("huge.json");
    std::fs::write(&huge, format!("{{\"adt\": \"{}\"}}", "x".repeat(4 << 20))).unwrap();
    let code = curl(&["-H", &format!("Authorization: Bearer {token}"), "-H", "Content-Type: application/json", "--data-binary", &format!("@{}", huge.display())]);
    assert_eq!(code, "413", "a body over the limit");
}

/// Item 8: a join never silently takes over a node; a replaced agent
/// leaves the containers alone; a node removed while offline cleans up
/// when it returns.
#[test]
fn joins_never_take_over_silently_and_removed_nodes_clean_up_on_return() {
    docker_ready();
    let dir = test_dir("identity");
    let master = Master::start(&dir);
    let name = format!("id{}", std::process::id());
    let mut first = Agent::join_and_run(&master, &name, "127.0.0.25");
    let adt = write_adt(&dir, "held", &edge_adt("127.0.0.25", "job", "        image: fogmesh/busybox:test\n"));
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);
    let id = container_id(&name, "held", "job");

    // Same public IP, no --replace: refused, with the way out.
    let refused = Agent::join(&master, &name, "127.0.0.25", &dir.join("second"), &[]).err().expect("a second join must be refused");
    assert!(text(&refused.stderr).contains("--replace"), "{}", text(&refused.stderr));

    // The machine was reinstalled: the new agent joins with --replace and adopts the container.
    first.kill();
    let mut second = Agent::join(&master, &name, "127.0.0.25", &dir.join("second"), &["--replace"]).unwrap_or_else(|o| panic!("{}", text(&o.stderr)));
    second.start();
    wait_for("the replacing agent to run the app", T, || (master.cli_json(&["app", "show", "held"])["rollout"]["phase"] == "running").then_some(()));
    assert_eq!(container_id(&name, "held", "job"), id, "adopted, not recreated");

    // The old agent comes back: refused as replaced, and it leaves the container alone.
    first.start();
    // It has stored that it hands off (from then on it runs no pass on
    // Docker) before we look.
    wait_for("the old agent to learn it was replaced and store it", T, || {
        let log = first.log_text();
        let told = log.find("another agent took over this node")?;
        log[told..].contains("desired state stored").then_some(())
    });
    assert_eq!(container_id(&name, "held", "job"), id);
    assert_eq!(running_containers(&name).len(), 1);
    first.kill();

    // Removed while offline: on return it is refused and removes its workloads, saying so.
    second.kill();
    master.cli_ok(&["node", "remove", &name]);
    second.start();
    wait_for("the removed node to drop its workloads", T, || running_containers(&name).is_empty().then_some(()));
    assert!(second.log_text().contains("removing its workloads"), "{}", second.log_text());
}

/// Item 9: a dead master is noticed within the timeout and logged as
/// unreachable; a stopping master tells its agents; Docker events heal.
#[test]
fn agents_notice_a_dead_master_quickly_and_a_stopping_one_at_once() {
    docker_ready();
    let dir = test_dir("detect");
    let mut master = Master::start(&dir);
    let name = format!("dt{}", std::process::id());
    let mut agent = Agent::join(&master, &name, "127.0.0.26", &dir.join("agent"), &[]).unwrap();
    agent.run_args = vec!["--master-timeout".into(), "3s".into()];
    agent.start();
    let ready = |m: &Master| wait_for("the node to be ready", T, || (node_json(m, &name)["state"] == "ready").then_some(()));
    ready(&master);

    master.kill();
    wait_for("the agent to call the master unreachable", Duration::from_secs(15), || agent.log_text().contains("master unreachable").then_some(()));
    assert!(!agent.log_text().contains("bad frame from the master"), "{}", agent.log_text());
    master.restart();
    ready(&master);

    let pid = master.proc.as_ref().unwrap().child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    wait_for("the agent to hear the master leave", Duration::from_secs(10), || agent.log_text().contains("master shutting down").then_some(()));
    master.kill();
    master.restart();
    ready(&master);

    // Self-healing reacts to Docker's events.
    let adt = write_adt(&dir, "heal", &edge_adt("127.0.0.26", "job", "        image: fogmesh/busybox:test\n"));
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);
    let started = inspect(&name, "heal", "job").unwrap()["State"]["StartedAt"].clone();
    std::thread::sleep(Duration::from_secs(1));
    docker(&["kill", &container_id(&name, "heal", "job")]);
    // On the kill's events, not at the next periodic pass (every 5 s).
    wait_for("the killed container to run again", Duration::from_secs(3), || {
        let c = inspect(&name, "heal", "job")?;
        (c["State"]["Running"] == true && c["State"]["StartedAt"] != started).then_some(())
    });
    agent.kill();
}

/// A restarted master ends the agents' old sessions at their next ping (a
/// stateless reset from the key in its data dir): they come back long
/// before their 40 s idle timeout would have told them. The restart stops
/// no workload: a DaemonSet replica keeps running, untouched, although
/// the restarted master sees the node offline until it reconnects.
#[test]
fn agents_learn_of_a_master_restart_at_their_next_ping() {
    docker_ready();
    let dir = test_dir("reset");
    let mut master = Master::start_with(&dir, &["--agent-timeout", "40s"]);
    let name = format!("rs{}", std::process::id());
    let mut agent = Agent::join(&master, &name, "127.0.0.28", &dir.join("agent"), &[]).unwrap();
    agent.run_args = vec!["--master-timeout".into(), "40s".into()];
    agent.start();
    let ready = |m: &Master, within: Duration| wait_for("the node to be ready", within, || (node_json(m, &name)["state"] == "ready").then_some(()));
    ready(&master, T);
    // An offline deadline one late heartbeat would cross is refused.
    let out = std::process::Command::new(bin("fogmesh-master")).args(["serve", "--data-dir"]).arg(dir.join("master")).args(["--heartbeat", "10s"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--offline-after (15s) must be at least twice --heartbeat (10s)"), "{}", text(&out.stderr));
    let everywhere = write_adt(
        &dir,
        "everywhere",
        "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    probe:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.DaemonSet\n      properties:\n        image: fogmesh/busybox:test\n        command: [/bin/sh, -c, \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
    );
    master.cli_ok(&["app", "submit", everywhere.to_str().unwrap(), "--timeout", "60s"]);
    let running = container_id(&name, "everywhere", "probe");
    assert!(!running.is_empty());

    master.kill();
    let killed = Instant::now();
    master.restart();
    // Heartbeats go every second; the idle timeout alone would take 40 s.
    ready(&master, Duration::from_secs(25));
    let log = agent.log_text();
    assert!(log.contains("no longer knows this session"), "{log}");
    assert!(!log.contains("master unreachable"), "{log}");
    assert!(killed.elapsed() < Duration::from_secs(40));
    // Settled: the node holds the master's latest desired state.
    wait_for("the node to ack its desired state", T, || {
        let n = node_json(&master, &name);
        (n["acked_generation"] == n["desired_generation"] && n["containers_running"] == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(container_id(&name, "everywhere", "probe"), running, "the DaemonSet replica was replaced:\n{}", agent.log_text());
    agent.kill();
}

/// A whole fleet learns of a master restart from the master's resets, not
/// from its idle timeout. (A burst of lost sessions' packets in one drain
/// of the socket: `tls::tests::every_packet_of_a_lost_session_gets_its_reset`.)
#[test]
fn a_whole_fleet_learns_of_a_master_restart_from_its_resets() {
    let dir = test_dir("fleet-reset");
    let mut master = Master::start_with(&dir, &["--agent-timeout", "60s"]);
    let count = 300;
    let fleet = Fleet::start_with(&master, "fr", count, "10.202.0.0", &["--master-timeout", "60s"]);
    master.kill();
    let killed = Instant::now();
    master.restart();
    // Heartbeats go every 3 s; the idle timeout alone would take 60 s.
    let all_ready = format!("{count} nodes: {count} ready");
    wait_for("the whole fleet to be back", Duration::from_secs(45), || master.cli_ok(&["node", "summary"]).starts_with(&all_ready).then_some(()));
    assert!(killed.elapsed() < Duration::from_secs(60));
    let log = fleet.proc.log_text();
    assert_eq!(log.matches("no longer knows this session").count(), count, "{log}");
    assert!(!log.contains("master unreachable"), "{log}");
}

/// A partition both ways, shorter than the agents' idle timeout: the master
/// marks the nodes offline and ends their sessions when heartbeats stop,
/// the agents keep theirs (nothing reaches them), and once the path is back
/// the master's reset at their next heartbeat brings them back, before
/// their idle timeout.
#[test]
fn after_a_short_partition_agents_are_back_at_their_next_heartbeat() {
    let dir = test_dir("short-cut");
    let master = Master::start_with(&dir, &["--agent-timeout", "60s"]);
    let count = 5;
    let fleet = Fleet::start_with(&master, "sc", count, "10.204.0.0", &["--master-timeout", "24s"]);
    let port = master.quic_port.to_string();
    // Both ways: the master's own end of the session (it closes sessions
    // that missed their heartbeats) must not reach the agents either.
    let cut = [
        CutOff::insert(&["INPUT", "-p", "udp", "--dport", &port, "-j", "DROP"]),
        CutOff::insert(&["INPUT", "-p", "udp", "--sport", &port, "-j", "DROP"]),
    ];
    let all_offline = format!("{count} nodes: 0 ready, {count} offline");
    wait_for("the master to see the fleet offline", Duration::from_secs(20), || master.cli_ok(&["node", "summary"]).starts_with(&all_offline).then_some(()));
    std::thread::sleep(Duration::from_secs(10));
    let during = fleet.proc.log_text();
    assert!(!during.contains("master unreachable") && !during.contains("no longer knows"), "{during}");
    drop(cut);
    let all_ready = format!("{count} nodes: {count} ready");
    wait_for("the fleet to be back", Duration::from_secs(30), || master.cli_ok(&["node", "summary"]).starts_with(&all_ready).then_some(()));
    let log = fleet.proc.log_text();
    assert!(!log.contains("master unreachable"), "a session waited out its idle timeout: {log}");
    assert_eq!(log.matches("no longer knows this session").count(), count, "{log}");
}

/// Item 10: what operators trip over.
#[test]
fn operator_papercuts() {
    docker_ready();
    let dir = test_dir("papercuts");
    let master = Master::start(&dir);
    let name = format!("pc{}", std::process::id());
    let _agent = Agent::join_and_run(&master, &name, "127.0.0.27");

    // Parameters carry over to updates unless reset.
    let greet = write_adt(
        &dir,
        "greet",
        &edge_adt("127.0.0.27", "job", "        image: fogmesh/busybox:test\n        env: [{name: GREETING, value: {get_input: greeting}}]\n")
            .replace("topology_template:\n", "topology_template:\n  inputs:\n    greeting: {type: string, default: hello}\n"),
    );
    master.cli_ok(&["app", "submit", greet.to_str().unwrap(), "--param", "greeting=bonjour", "--timeout", "60s"]);
    master.cli_ok(&["app", "update", "greet", greet.to_str().unwrap(), "--timeout", "60s"]);
    assert!(env_of(&name, "greet", "job").contains(&"GREETING=bonjour".to_string()));
    assert!(master.cli_ok(&["app", "show", "greet"]).contains("params: greeting=bonjour"));
    master.cli_ok(&["app", "update", "greet", greet.to_str().unwrap(), "--reset-params", "--timeout", "60s"]);
    assert!(env_of(&name, "greet", "job").contains(&"GREETING=hello".to_string()));

    // A workload on a cloud node set no machine has joined: submit says how
    // to provide one and fails when its timeout passes.
    let cloud = write_adt(
        &dir,
        "cloud",
        "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    vm: {type: tosca.nodes.MiCADO.EC2.Compute, properties: {region_name: r, image_id: i, instance_type: t}}\n    web:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties: {image: fogmesh/busybox:test}\n      requirements: [{host: vm}]\n",
    );
    let out = master.cli(&["app", "submit", cloud.to_str().unwrap(), "--timeout", "3s"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success() && said.contains("node set 'vm'") && said.contains("--node-set vm"), "{said}");
    master.cli_ok(&["app", "delete", "cloud"]);

    // Two apps on one host port: the second is refused at once, naming the holder.
    let port = free_port();
    let holder = write_adt(&dir, "holder", &edge_adt("127.0.0.27", "web", &web_props("fogmesh/busybox:test", port, SERVE)));
    master.cli_ok(&["app", "submit", holder.to_str().unwrap(), "--timeout", "60s"]);
    let clash = write_adt(&dir, "clash", &edge_adt("127.0.0.27", "web", &web_props("fogmesh/busybox:test", port, SERVE)));
    let out = master.cli(&["app", "submit", clash.to_str().unwrap(), "--timeout", "120s"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&format!("host port {port}/tcp on node {name} is already used by holder/web")), "{stderr}");
    assert_eq!(text(&out.stdout).matches("pending:").count(), 1, "the pending line is printed once: {}", text(&out.stdout));

    // A readiness probe gates "running" and shows in app show.
    let ready = write_adt(
        &dir,
        "ready",
        &edge_adt(
            "127.0.0.27",
            "slow",
            "        image: fogmesh/busybox:test\n        command: [/bin/sh, -c, \"sleep 1; touch /tmp/ready; exec sleep 100000\"]\n        readinessProbe: {exec: {command: [test, -e, /tmp/ready]}, periodSeconds: 1}\n",
        ),
    );
    master.cli_ok(&["app", "submit", ready.to_str().unwrap(), "--timeout", "60s"]);
    let shown = master.cli_json(&["app", "show", "ready"]);
    assert_eq!(shown["workloads"][0]["placements"][0]["containers"][0]["ready"], true, "{shown}");

    // app list speaks JSON.
    let apps = master.cli_json(&["app", "list"]);
    assert!(apps.as_array().unwrap().iter().any(|a| a["name"] == "ready" && a["phase"] == "running"), "{apps}");
}

/// Item 10: every flag and argument of every command says what it is for.
#[test]
fn every_cli_flag_and_argument_has_help() {
    let commands: &[(&str, &[&str])] = &[
        ("fogmesh", &["app submit", "app update", "app show", "app list", "app delete", "node add", "node remove", "node list", "token create", "adt validate", "adt compile"]),
        ("fogmesh-agent", &["join", "run", "simulate"]),
        ("fogmesh-master", &["init", "serve"]),
    ];
    for (binary, subcommands) in commands {
        for sub in *subcommands {
            let mut args: Vec<&str> = sub.split(' ').collect();
            args.push("--help");
            let out = std::process::Command::new(bin(binary)).args(&args).output().unwrap();
            let help = text(&out.stdout);
            let lines: Vec<&str> = help.lines().collect();
            // Text other than clap's own `[default: ..]` / `[env: ..]` notes.
            let words = |d: &str| d.split('[').next().is_some_and(|w| !w.trim().is_empty());
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim();
                let is_item = t.starts_with('-') || (t.starts_with('<') && line.starts_with("  "));
                if !is_item {
                    continue;
                }
                // Help beside the name, or (long layout) on the next, deeper-indented line.
                let beside = t.split_once("  ").is_some_and(|(_, d)| words(d));
                let below = lines.get(i + 1).is_some_and(|next| {
                    let indent = |l: &str| l.len() - l.trim_start().len();
                    indent(next) > indent(line) && words(next.trim()) && !next.trim().starts_with('-')
                });
                assert!(beside || below, "`{binary} {sub}`: no help for `{t}`:\n{help}");
            }
        }
    }
}
