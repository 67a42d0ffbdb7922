//! The control plane end to end: a real master, real agents on distinct
//! loopback addresses, real containers on the local Docker engine.

use std::time::Duration;

use fogmesh_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// Two Edge nodes by public IP, a container on each, and a volume.
fn two_node_adt(dir: &std::path::Path, greeting: &str, port: u16) -> std::path::PathBuf {
    let data = dir.join("hostdata");
    let adt = format!(
        r#"tosca_definitions_version: tosca_simple_yaml_1_2
imports: [micado_types.yaml]
topology_template:
  inputs:
    greeting: {{type: string, default: "{greeting}"}}
  node_templates:
    edge-a: {{type: tosca.nodes.MiCADO.Edge, properties: {{public_ip: 127.0.0.2}}}}
    edge-b: {{type: tosca.nodes.MiCADO.Edge, properties: {{public_ip: 127.0.0.3}}}}
    greeter:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties:
        image: fogmesh/busybox:test
        command: [/bin/httpd, -f, -p, "8080", -h, /www]
        env: [{{name: GREETING, value: {{get_input: greeting}}}}]
        ports: [{{containerPort: 8080, hostPort: {port}}}]
        resources: {{limits: {{memory: 64Mi}}}}
      requirements:
        - host: edge-a
        - volume: {{node: www, relationship: {{type: tosca.relationships.AttachesTo, properties: {{location: /www}}}}}}
    worker:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, "sleep 100000"]
        env: [{{name: ROLE, value: worker}}]
      requirements: [{{host: edge-b}}]
    www:
      type: tosca.nodes.MiCADO.Container.Volume.HostPath
      properties: {{path: {}}}
"#,
        data.display()
    );
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("index.html"), "hello from the fog\n").unwrap();
    let path = dir.join("app.yaml");
    std::fs::write(&path, adt).unwrap();
    path
}

fn app_detail(master: &Master, app: &str) -> Value {
    master.cli_json(&["app", "show", app])
}

/// Replicas of `workload` that run their current spec, as the master shows them.
fn running_of(detail: &Value, workload: &str) -> u64 {
    detail["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["name"] == workload)
        .map(|w| w["current_replicas"].as_u64().unwrap())
        .sum()
}

#[test]
fn apps_land_on_the_right_nodes_update_and_delete() {
    docker_ready();
    let dir = test_dir("placement");
    let master = Master::start(&dir);
    let tag = std::process::id();
    let a = Agent::join_and_run(&master, &format!("pa{tag}"), "127.0.0.2");
    let b = Agent::join_and_run(&master, &format!("pb{tag}"), "127.0.0.3");
    let port = free_port();

    // Submit waits for the rollout and shows per-node progress.
    let adt = two_node_adt(&dir, "hi", port);
    let out = master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--name", "demo", "--timeout", "90s"]);
    assert!(out.contains("greeter replica 1 on pa") && out.contains("app demo is running (revision 1)"), "{out}");

    // greeter on the node with public IP 127.0.0.2, with env, port, mount, limit.
    let greeter = inspect(&a.name, "demo", "greeter").expect("greeter runs on node a");
    assert!(inspect(&b.name, "demo", "greeter").is_none(), "greeter must not run on node b");
    assert!(env_of(&a.name, "demo", "greeter").contains(&"GREETING=hi".to_string()));
    let binding = &greeter["HostConfig"]["PortBindings"]["8080/tcp"][0];
    assert_eq!(binding["HostIp"], "127.0.0.2", "ports publish on the node's public IP");
    assert_eq!(binding["HostPort"], port.to_string());
    assert_eq!(greeter["HostConfig"]["Memory"], 64 * 1024 * 1024);
    let mounts = greeter["Mounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["Destination"] == "/www"), "{mounts:?}");
    // The container really serves the mounted file on the published port.
    let body = wait_for("greeter to serve", T, || {
        let out = std::process::Command::new("busybox").args(["wget", "-q", "-O", "-", &format!("http://127.0.0.2:{port}/index.html")]).output().ok()?;
        out.status.success().then(|| text(&out.stdout))
    });
    assert_eq!(body, "hello from the fog\n");
    assert!(env_of(&b.name, "demo", "worker").contains(&"ROLE=worker".to_string()));

    // node list shows both nodes ready with their IPs, labels and capacity.
    let nodes = master.cli_json(&["node", "list"]);
    let node_a = nodes.as_array().unwrap().iter().find(|n| n["name"] == a.name.as_str()).unwrap();
    assert_eq!(node_a["public_ip"], "127.0.0.2");
    assert_eq!(node_a["state"], "ready");
    assert_eq!(node_a["labels"], serde_json::json!({"zone": "test"}), "labels are a JSON object");
    assert!(node_a["capacity"]["cpus"].as_u64().unwrap() >= 1);

    // Update: only the changed container is replaced.
    let worker_before = container_id(&b.name, "demo", "worker");
    let greeter_before = container_id(&a.name, "demo", "greeter");
    let adt = two_node_adt(&dir, "hello again", port);
    master.cli_ok(&["app", "update", "demo", adt.to_str().unwrap(), "--timeout", "90s"]);
    wait_for("greeter to be replaced", T, || env_of(&a.name, "demo", "greeter").contains(&"GREETING=hello again".to_string()).then_some(()));
    assert_ne!(container_id(&a.name, "demo", "greeter"), greeter_before);
    assert_eq!(container_id(&b.name, "demo", "worker"), worker_before, "unchanged worker must not restart");

    // A killed container is restarted by its agent.
    docker(&["kill", &container_id(&b.name, "demo", "worker")]);
    wait_for("worker restarted", T, || {
        let c = inspect(&b.name, "demo", "worker")?;
        (c["State"]["Running"] == true).then_some(())
    });
    let detail = app_detail(&master, "demo");
    let restarts: u64 = detail["workloads"].as_array().unwrap().iter()
        .flat_map(|w| w["placements"].as_array().unwrap().iter())
        .flat_map(|p| p["containers"].as_array().unwrap().iter())
        .map(|c| c["restarts"].as_u64().unwrap())
        .sum();
    assert!(restarts >= 1, "restart is reported: {detail}");

    // Delete removes the containers on every node.
    master.cli_ok(&["app", "delete", "demo"]);
    wait_for("containers removed", T, || (running_containers(&a.name).is_empty() && running_containers(&b.name).is_empty()).then_some(()));
    assert!(master.cli_ok(&["app", "list"]).lines().count() == 1, "only the header remains");
}

#[test]
fn edge_workload_waits_for_its_node_then_starts() {
    docker_ready();
    let dir = test_dir("pending");
    let master = Master::start(&dir);
    let adt = dir.join("late.yaml");
    std::fs::write(
        &adt,
        "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    late: {type: tosca.nodes.MiCADO.Edge, properties: {public_ip: 127.0.0.9}}\n    probe:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties: {image: fogmesh/busybox:test, command: [/bin/sh, -c, sleep 100000]}\n      requirements: [{host: late}]\n",
    )
    .unwrap();
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--no-wait"]);
    let detail = app_detail(&master, "late");
    let reason = detail["workloads"][0]["pending"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("no fog node with public IP 127.0.0.9"), "{detail}");
    let shown = master.cli_ok(&["app", "show", "late"]);
    assert!(shown.contains("revision 1: waiting") && shown.contains("no fog node with public IP 127.0.0.9"), "{shown}");

    let node = Agent::join_and_run(&master, &format!("late{}", std::process::id()), "127.0.0.9");
    wait_for("the pending workload to start", T, || (running_of(&app_detail(&master, "late"), "probe") == 1).then_some(()));
    assert_eq!(running_containers(&node.name).len(), 1);

    // Nothing to do: the agent idles instead of asking Docker in a loop (a
    // settled container once made it list containers hundreds of times a second).
    let pid = node.proc.as_ref().expect("agent runs").child.id();
    // cpu_seconds reads 0 for a process that is gone: the agent must still
    // be running at both readings, or "idle" means "dead".
    let alive = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state after the command name: running, sleeping or waiting on disk (not a zombie).
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['R', 'S', 'D']))
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(), "the agent is not running");
    let before = cpu_seconds(pid);
    assert!(before > 0.0, "an agent that rolled out a container used no CPU? ({before})");
    std::thread::sleep(Duration::from_secs(10));
    assert!(alive(), "the agent stopped while measured");
    let used = cpu_seconds(pid) - before;
    assert!(used < 1.0, "an idle agent used {used:.2} s of CPU in 10 s");
}

#[test]
fn offline_agents_keep_and_restore_workloads_and_catch_up() {
    docker_ready();
    let dir = test_dir("offline");
    let mut master = Master::start(&dir);
    let mut agent = Agent::join_and_run(&master, &format!("off{}", std::process::id()), "127.0.0.4");
    let adt = dir.join("solo.yaml");
    let write_adt = |value: &str| {
        std::fs::write(
            &adt,
            format!("tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    fog: {{type: tosca.nodes.MiCADO.Edge, properties: {{public_ip: 127.0.0.4}}}}\n    job:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties: {{image: fogmesh/busybox:test, command: [/bin/sh, -c, sleep 100000], env: [{{name: V, value: '{value}'}}]}}\n      requirements: [{{host: fog}}]\n"),
        )
        .unwrap();
    };
    write_adt("1");
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);

    // Master killed: the container keeps running and a killed container is still restarted.
    let id = container_id(&agent.name, "solo", "job");
    let ended = |agent: &Agent| agent.log_text().matches("workloads keep running").count();
    let sessions_ended = ended(&agent);
    master.kill();
    // The agent has noticed (its session ended) before we look.
    wait_for("the agent to notice the master is gone", T, || (ended(&agent) > sessions_ended).then_some(()));
    assert_eq!(container_id(&agent.name, "solo", "job"), id, "workload survives the master");
    assert_eq!(running_containers(&agent.name), vec![id[..12].to_string()], "workload survives the master");
    docker(&["kill", &container_id(&agent.name, "solo", "job")]);
    wait_for("restart while the master is down", T, || (running_containers(&agent.name).len() == 1).then_some(()));

    // Agent restarted while the master is down ("reboot": its containers are gone too).
    agent.kill();
    remove_node_containers(&agent.name);
    agent.start();
    wait_for("the agent to restore its workload without the master", T, || (running_containers(&agent.name).len() == 1).then_some(()));
    assert!(env_of(&agent.name, "solo", "job").contains(&"V=1".to_string()));

    // An update made while the agent is away reaches it once both are back.
    master.restart();
    agent.kill();
    write_adt("2");
    master.cli_ok(&["app", "update", "solo", adt.to_str().unwrap(), "--no-wait"]);
    master.kill();
    agent.start();
    // The agent started from its store and found no master before we look.
    wait_for("the restarted agent to miss the master", T, || {
        let log = agent.log_text();
        (log.contains("starting from the stored desired state") && log.contains("workloads keep running")).then_some(())
    });
    assert!(env_of(&agent.name, "solo", "job").contains(&"V=1".to_string()), "offline agent keeps the old state");
    master.restart();
    wait_for("the update made before the outage", T, || env_of(&agent.name, "solo", "job").contains(&"V=2".to_string()).then_some(()));
    wait_for("the master to see the updated container running", T, || (running_of(&app_detail(&master, "solo"), "job") == 1).then_some(()));

    // The master marks a silent node offline but keeps its workloads.
    agent.kill();
    wait_for("node offline", T, || {
        let nodes = master.cli_json(&["node", "list"]);
        (nodes[0]["state"] == "offline").then_some(())
    });
    assert_eq!(running_of(&app_detail(&master, "solo"), "job"), 1, "last report still counts the container");
    let nodes = master.cli_json(&["node", "list"]);
    assert_eq!(nodes[0]["containers_desired"], 1, "offline nodes keep their workloads");
}

#[test]
fn bad_tokens_and_removed_nodes_are_refused() {
    docker_ready();
    let dir = test_dir("auth");
    let master = Master::start(&dir);
    let join = |token: &str, data: &str| {
        std::process::Command::new(bin("fogmesh-agent"))
            .args(["join", "--master", &master.address(), "--token", token, "--public-ip", "127.0.0.5"])
            .arg("--data-dir")
            .arg(dir.join(data))
            .output()
            .unwrap()
    };
    // Forged: a real token with another secret.
    let good = master.token();
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}.{}", parts[0], parts[1], "0".repeat(parts[2].len()), parts[3]);
    let out = join(&forged, "forged");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("secret does not match"), "{}", text(&out.stderr));
    // Malformed.
    let out = join("not-a-token", "malformed");
    assert!(text(&out.stderr).contains("malformed join token"), "{}", text(&out.stderr));
    // Used twice.
    let out = join(&good, "first");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = join(&good, "second");
    assert!(text(&out.stderr).contains("already used up"), "{}", text(&out.stderr));
    // Expired.
    let short = master.cli_ok(&["token", "create", "--ttl", "1s"]).trim().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let out = join(&short, "expired");
    assert!(text(&out.stderr).contains("expired"), "{}", text(&out.stderr));
    // A wrong API token is refused too.
    let out = std::process::Command::new(bin("fogmesh"))
        .args(["node", "list"])
        .env("FOGMESH_CONFIG", master.config())
        .env("FOGMESH_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains("invalid API token"), "{}", text(&out.stderr));

    // Removing a connected node stops its containers; its agent is refused at connect.
    let mut agent = Agent::join_and_run(&master, &format!("rev{}", std::process::id()), "127.0.0.6");
    let adt = dir.join("rev.yaml");
    std::fs::write(
        &adt,
        "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    n: {type: tosca.nodes.MiCADO.Edge, properties: {public_ip: 127.0.0.6}}\n    c:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {image: fogmesh/busybox:test}\n      requirements: [{host: n}]\n",
    )
    .unwrap();
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);
    assert_eq!(running_containers(&agent.name).len(), 1);
    master.cli_ok(&["node", "remove", &agent.name]);
    wait_for("the removed node's containers to stop", T, || running_containers(&agent.name).is_empty().then_some(()));
    wait_for("the agent to be told why", T, || agent.log_text().contains("revoked").then_some(()));
    agent.kill();
    agent.start();
    wait_for("the revoked agent to be refused", T, || agent.log_text().contains("revoked").then_some(()));
    assert!(!master.cli_ok(&["node", "list"]).contains(&agent.name));
}

#[test]
fn garbage_on_the_quic_port_does_not_hurt_the_master() {
    docker_ready();
    let dir = test_dir("garbage");
    let master = Master::start(&dir);
    let agent = Agent::join_and_run(&master, &format!("gb{}", std::process::id()), "127.0.0.7");
    wait_for("the node ready", T, || (master.cli_json(&["node", "list"])[0]["state"] == "ready").then_some(()));
    let log = || master.proc.as_ref().unwrap().log_text();
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;

    // Raw UDP garbage.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let _ = udp.send_to(&vec![i as u8; (i as usize * 7) % 1400 + 1], ("127.0.0.1", master.quic_port));
    }
    // Real QUIC connections (join-style, CA pinned) whose first frame is
    // garbage: an oversized frame header, a frame that is no message, and
    // HTTP (its "GET " read as a length). Each must be refused for what it
    // sent: the master ends that connection, answering nothing, and says why.
    let token: fogmesh_common::pki::JoinToken = master.token().parse().unwrap();
    let cases: [(Vec<u8>, &str); 3] = [
        (vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], "error=frame of 4294967295 bytes exceeds the 4194304 byte limit"),
        (vec![0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3], "error=malformed message: "),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "error=frame of 1195725856 bytes exceeds the 4194304 byte limit"),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (payload, why) in cases {
        let port = rt.block_on(async {
            let config = fogmesh_common::tls::quic_join_client_config(&token.ca_fingerprint).unwrap();
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            endpoint.set_default_client_config(config);
            let addr = format!("127.0.0.1:{}", master.quic_port).parse().unwrap();
            let conn = endpoint.connect(addr, "127.0.0.1").unwrap().await.expect("TLS to the master");
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&payload).await.unwrap();
            let _ = send.finish();
            // No answer: the stream ends empty or the connection goes first.
            let read = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await.expect("the master ends the stream");
            match read {
                Ok(bytes) => assert!(bytes.is_empty(), "the master answered garbage with {bytes:?}"),
                Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(_))) => {}
                Err(e) => panic!("the stream failed otherwise: {e}"),
            }
            // The master closed the connection (QUIC's close for a dropped
            // connection: application code 0, no reason), long before an idle timeout.
            let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("the master closes the connection");
            match closed {
                quinn::ConnectionError::ApplicationClosed(c) => assert_eq!((c.error_code, c.reason.as_ref()), (0u32.into(), &b""[..]), "{c:?}"),
                other => panic!("the connection ended otherwise: {other}"),
            }
            endpoint.local_addr().unwrap().port()
        });
        // The master says why, about this connection.
        let peer = format!("peer=127.0.0.1:{port} ");
        wait_for(&format!("the master to log the refusal ({why})"), Duration::from_secs(10), || {
            log().lines().any(|l| l.contains("agent connection ended") && l.contains(&peer) && l.contains(why)).then_some(())
        });
    }
    // Still serving: the API answers, and the agent's session (the one it
    // had) goes on: a heartbeat after the garbage, no reconnection.
    let after = now_ms();
    wait_for("a heartbeat after the garbage", T, || {
        let nodes = master.cli_json(&["node", "list"]);
        (nodes[0]["name"] == agent.name.as_str() && nodes[0]["state"] == "ready" && nodes[0]["last_seen_ms"].as_u64() > Some(after)).then_some(())
    });
    let log = log();
    assert_eq!(log.matches("agent connected").count(), 1, "the agent had to reconnect:\n{log}");
}

#[test]
fn declared_nodes_hostless_spread_and_several_apps() {
    docker_ready();
    let dir = test_dir("spread");
    let master = Master::start(&dir);
    let tag = std::process::id();

    // A node declared before its agent joins is pending, and keeps its name.
    let declared = format!("decl{tag}");
    master.cli_ok(&["node", "add", "--public-ip", "127.0.0.10", "--name", &declared]);
    let nodes = master.cli_json(&["node", "list"]);
    assert_eq!(nodes[0]["state"], "pending");
    let a = Agent::join_and_run(&master, &declared, "127.0.0.10");
    let b = Agent::join_and_run(&master, &format!("sp{tag}"), "127.0.0.11");
    wait_for("both nodes ready", T, || {
        let nodes = master.cli_json(&["node", "list"]);
        nodes.as_array().unwrap().iter().all(|n| n["state"] == "ready").then_some(())
    });

    // Two replicas of a hostless workload go to different ready nodes.
    let hostless = |name: &str| {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    spin:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      occurrences: [2, 2]\n      properties: {image: fogmesh/busybox:test}\n",
        )
        .unwrap();
        path
    };
    master.cli_ok(&["app", "submit", hostless("one").to_str().unwrap(), "--timeout", "60s"]);
    assert_eq!(running_containers(&a.name).len(), 1, "one replica per node");
    assert_eq!(running_containers(&b.name).len(), 1, "one replica per node");

    // A second app beside it, with its own id.
    master.cli_ok(&["app", "submit", hostless("two").to_str().unwrap(), "--timeout", "60s"]);
    let list = master.cli_ok(&["app", "list"]);
    let ids: Vec<&str> = list.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert_ne!(ids[0], ids[1]);
    assert_eq!(running_containers(&a.name).len() + running_containers(&b.name).len(), 4);
    // Deleting one app leaves the other running.
    master.cli_ok(&["app", "delete", "one"]);
    wait_for("app one removed", T, || (running_containers(&a.name).len() + running_containers(&b.name).len() == 2).then_some(()));
    assert_eq!(running_of(&app_detail(&master, "two"), "spin"), 2);
}
