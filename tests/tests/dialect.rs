//! MiCADO dialect constructs that need a running cluster to prove: pods
//! share a network, a container with several hosts runs on one that joined,
//! placeholders are refused at submit.

use std::time::Duration;

use fogmesh_tests::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn pod_members_reach_each_other_on_localhost_and_publish_through_the_pod() {
    docker_ready();
    let dir = test_dir("pod");
    let master = Master::start(&dir);
    let node = format!("pod{}", std::process::id());
    let _agent = Agent::join_and_run(&master, &node, "127.0.0.31");
    let port = free_port();
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let adt = write_adt(
        &dir,
        "pod",
        &format!(
            r#"tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  node_templates:
    fog: {{type: tosca.nodes.MiCADO.Edge, properties: {{public_ip: 127.0.0.31}}}}
    server:
      type: tosca.nodes.MiCADO.Container.Application.Docker
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, "trap 'exit 0' TERM; echo from-the-pod > /tmp/index.html; /bin/httpd -f -p 8080 -h /tmp & wait"]
        ports: [{{containerPort: 8080, hostPort: {port}}}]
    client:
      type: tosca.nodes.MiCADO.Container.Application.Docker
      properties:
        image: fogmesh/busybox:test
        command: [/bin/sh, -c, "until wget -q -O /out/got http://127.0.0.1:8080/index.html; do sleep 0.2; done; exec sleep 100000"]
      requirements:
        - volume: {{node: out, relationship: {{type: tosca.relationships.AttachesTo, properties: {{location: /out}}}}}}
    out: {{type: tosca.nodes.MiCADO.Container.Volume.HostPath, properties: {{path: {}}}}}
    both:
      type: tosca.nodes.MiCADO.Container.Application.Pod
      requirements:
        - host: fog
        - container: server
        - container: client
"#,
            shared.display()
        ),
    );
    let out = master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);
    assert!(out.contains("2 container(s) on 1 node(s)"), "{out}");
    // The client reached the server on 127.0.0.1: one network namespace.
    let got = wait_for("the client to fetch from its pod mate", T, || std::fs::read_to_string(shared.join("got")).ok());
    assert_eq!(got, "from-the-pod\n");
    // The pod's port is published through the container that holds the network.
    assert_eq!(http_get(&format!("http://127.0.0.31:{port}/index.html")).as_deref(), Some("from-the-pod\n"));
    let client = inspect(&node, "pod", "client").unwrap();
    let server = inspect(&node, "pod", "server").unwrap();
    assert_eq!(client["HostConfig"]["NetworkMode"], format!("container:{}", server["Id"].as_str().unwrap()));
}

#[test]
fn a_container_with_several_hosts_runs_on_one_that_joined() {
    docker_ready();
    let dir = test_dir("hosts");
    let master = Master::start(&dir);
    let node = format!("hs{}", std::process::id());
    let _agent = Agent::join_and_run(&master, &node, "127.0.0.33");
    let adt = write_adt(
        &dir,
        "either",
        "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    a: {type: tosca.nodes.MiCADO.Edge, properties: {public_ip: 127.0.0.32}}\n    b: {type: tosca.nodes.MiCADO.Edge, properties: {public_ip: 127.0.0.33}}\n    job:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {image: fogmesh/busybox:test}\n      requirements: [{host: a}, {host: b}]\n",
    );
    master.cli_ok(&["app", "submit", adt.to_str().unwrap(), "--timeout", "60s"]);
    assert_eq!(running_containers(&node).len(), 1, "it runs on the host that joined");
}

#[test]
fn an_edge_placeholder_is_refused_at_submit_with_its_place() {
    let dir = test_dir("placeholder");
    let master = Master::start(&dir);
    let adt = workspace().join("adts/compat/placeholders.yaml");
    let out = master.cli(&["app", "submit", adt.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("placeholders.yaml:7:67: node 'edge': public_ip \"000.000.000.000\" is not an IP address"), "{err}");
}
