//! Compiler semantics on small inline ADTs: what each construct of the
//! dialect turns into, and the problems it reports.

use fogmesh_common::adt::plan::{Protocol, TargetKind, VolumeSource};
use fogmesh_common::adt::{compile, CompileOptions, Plan};

const HEAD: &str = "tosca_definitions_version: tosca_simple_yaml_1_0\nimports: [micado_types.yaml]\n";

fn ok(body: &str) -> Plan {
    let text = format!("{HEAD}{body}");
    compile(&text, &CompileOptions::default()).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

/// Every problem as `LINE:COL: subject: message`, lines counted in `body`
/// (the two header lines are subtracted).
fn problems(body: &str) -> Vec<String> {
    let text = format!("{HEAD}{body}");
    match compile(&text, &CompileOptions::default()) {
        Ok(_) => panic!("compiled, but should fail:\n{text}"),
        Err(e) => e
            .problems
            .iter()
            .map(|p| {
                let line = p.pos.line.saturating_sub(2);
                format!("{line}:{}: {}: {}", p.pos.column, p.subject, p.message)
            })
            .collect(),
    }
}

#[test]
fn names_normalise_and_collisions_are_reported() {
    let plan = ok("topology_template:\n  node_templates:\n    my_web.app:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {image: x}\n");
    assert_eq!(plan.workloads[0].name, "my-web-app");
    assert_eq!(plan.workloads[0].template, "my_web.app");

    let p = problems("topology_template:\n  node_templates:\n    a_b: {type: tosca.nodes.MiCADO.Container.Application.Docker, properties: {image: x}}\n    a-b: {type: tosca.nodes.MiCADO.Container.Application.Docker, properties: {image: x}}\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("4:5: node 'a-b': its name becomes 'a-b', which node 'a_b' already has"), "{p:?}");
}

#[test]
fn copies_pair_with_copies_of_their_host() {
    let plan = ok("topology_template:\n  inputs:\n    ips: {type: list, default: [10.0.0.1, 10.0.0.2]}\n  node_templates:\n    gw:\n      type: tosca.nodes.MiCADO.Edge\n      instance_count: 2\n      properties: {public_ip: {get_input: [ips, INDEX]}}\n    agent:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.DaemonSet\n      instance_count: 2\n      properties: {image: a}\n      requirements: [{host: gw}]\n");
    assert_eq!(plan.node("gw-2").unwrap().public_ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(plan.workload("agent-1").unwrap().host.as_deref(), Some("gw-1"));
    assert_eq!(plan.workload("agent-2").unwrap().host.as_deref(), Some("gw-2"));

    let p = problems("topology_template:\n  node_templates:\n    gw:\n      type: tosca.nodes.MiCADO.Edge\n      instance_count: 2\n      properties: {public_ip: 10.0.0.1}\n    solo:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {image: a}\n      requirements: [{host: gw}]\n");
    assert!(p[0].contains("names 'gw', which has instance_count copies"), "{p:?}");
}

#[test]
fn occurrences_bound_instances_and_unbounded_is_none() {
    let plan = ok("topology_template:\n  node_templates:\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      occurrences: [2, UNBOUNDED]\n      properties: {image: a}\n");
    let w = plan.workload("w").unwrap();
    assert_eq!((w.min_instances, w.max_instances, w.replicas), (2, None, 2));

    let p = problems("topology_template:\n  node_templates:\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      occurrences: [3, 1]\n      properties: {image: a}\n");
    assert!(p[0].contains("occurrences minimum 3 is larger than the maximum 1"), "{p:?}");
}

#[test]
fn compose_aliases_and_env_forms() {
    let plan = ok("topology_template:\n  node_templates:\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties:\n        image: a\n        entrypoint: [/bin/sh, -c]\n        args: [run, 5]\n        privileged: yes\n        environment: {A: 1, B: two}\n        env: [C=3, {name: D, value: 4}, {name: E, valueFrom: {secretKeyRef: {name: s}}}]\n        ports: ['8080:80', 53/udp]\n        workingDir: /srv\n        labels: {tier: edge}\n");
    let w = plan.workload("w").unwrap();
    assert_eq!(w.command, ["/bin/sh", "-c"]);
    assert_eq!(w.args, ["run", "5"]);
    assert!(w.privileged);
    let env: Vec<(&str, &str)> = w.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, [("C", "3"), ("D", "4"), ("A", "1"), ("B", "two")]);
    assert_eq!((w.ports[0].host_port, w.ports[0].container_port), (Some(8080), 80));
    assert_eq!((w.ports[1].container_port, w.ports[1].protocol), (53, Protocol::Udp));
    assert_eq!(w.working_dir.as_deref(), Some("/srv"));
    assert_eq!(w.labels["tier"], "edge");
}

#[test]
fn volumes_mount_where_the_dialect_says() {
    let plan = ok("topology_template:\n  node_templates:\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {image: a}\n      requirements:\n        - volume: scratch\n        - volume: {node: share, relationship: {type: tosca.relationships.AttachesTo, properties: {location: /mnt/share}}}\n        - volume: conf\n    scratch: {type: tosca.nodes.MiCADO.Container.Volume.EmptyDir}\n    share: {type: tosca.nodes.MiCADO.Container.Volume.NFS, properties: {server: 10.0.0.9, path: /exports}}\n    conf: {type: tosca.nodes.MiCADO.Container.Config.ConfigMap, properties: {data: {a.conf: x=1}}}\n");
    let v = &plan.workload("w").unwrap().volumes;
    assert_eq!(v[0].mount_path, "/mnt/volumes/scratch");
    assert_eq!(v[0].source, VolumeSource::EmptyDir);
    assert_eq!(v[1].mount_path, "/mnt/share");
    assert!(matches!(&v[1].source, VolumeSource::Nfs { server, .. } if server == "10.0.0.9"));
    assert!(matches!(&v[2].source, VolumeSource::ConfigMap { data } if data["a.conf"] == "x=1"));
}

#[test]
fn local_imports_resolve_through_the_reader_only() {
    let body = "imports: [micado_types.yaml, my_types.yaml]\ntopology_template:\n  node_templates:\n    w: {type: my.Web, properties: {image: a}}\n";
    let text = format!("tosca_definitions_version: tosca_simple_yaml_1_2\n{body}");
    let read = |name: &str| match name {
        "my_types.yaml" => Ok("node_types:\n  my.Web: {derived_from: tosca.nodes.MiCADO.Container.Application.Docker.Deployment}\n".to_string()),
        other => Err(format!("no file {other}")),
    };
    let plan = compile(&text, &CompileOptions { params: vec![], local_imports: Some(&read), for_deployment: false }).expect("compiles with the reader");
    assert_eq!(plan.workloads[0].kind, fogmesh_common::adt::plan::WorkloadKind::Deployment);

    let err = compile(&text, &CompileOptions::default()).unwrap_err();
    assert!(err.problems[0].message.starts_with("unknown import 'my_types.yaml'"), "{err}");
}

#[test]
fn policy_problems() {
    let base = "topology_template:\n  node_templates:\n    edge: {type: tosca.nodes.MiCADO.Edge, properties: {public_ip: 10.0.0.1}}\n    w: {type: tosca.nodes.MiCADO.Container.Application.Docker, properties: {image: a}}\n  policies:\n";
    let rule = "scaling_rule: 'pass'";
    let p = problems(&format!("{base}    - a: {{type: tosca.policies.Scaling.MiCADO, targets: [edge], properties: {{min_instances: 1, max_instances: 1, {rule}}}}}\n    - b: {{type: tosca.policies.Scaling.MiCADO, targets: [w], properties: {{min_instances: 4, max_instances: 2, {rule}}}}}\n    - c: {{type: tosca.policies.Scaling.MiCADO, targets: [w]}}\n    - d: {{type: tosca.policies.Scaling.MiCADOO}}\n"));
    let all = p.join("\n");
    assert!(all.contains("target 'edge' is an Edge node, which cannot be scaled"), "{all}");
    assert!(all.contains("min_instances 4 is larger than max_instances 2"), "{all}");
    // As MiCADO's type: bounds and rule are required.
    assert!(all.contains("policy 'c': missing required property 'min_instances' (required by tosca.policies.Scaling.MiCADO)"), "{all}");
    assert!(all.contains("policy 'c': missing required property 'scaling_rule'"), "{all}");
    assert!(all.contains("unknown type 'tosca.policies.Scaling.MiCADOO'; did you mean tosca.policies.Scaling.MiCADO"), "{all}");
    // Two policies on one target: MiCADO accepts it; a warning here.
    let text = format!("{HEAD}{base}    - b: {{type: tosca.policies.Scaling.MiCADO, targets: [w], properties: {{min_instances: 1, max_instances: 2, {rule}}}}}\n    - c: {{type: tosca.policies.Scaling.MiCADO, targets: [w], properties: {{min_instances: 1, max_instances: 3, {rule}}}}}\n");
    let plan = compile(&text, &CompileOptions::default()).unwrap();
    assert!(plan.warnings.iter().any(|w| w.message.contains("'w' is also scaled by policy 'b'")), "{:?}", plan.warnings);
}

#[test]
fn node_set_policies_bound_cloud_nodes() {
    let plan = ok("topology_template:\n  node_templates:\n    workers: {type: tosca.nodes.MiCADO.Nova.Compute, properties: {image_id: i, project_id: p}, interfaces: {Terraform: {create: null}}}\n  policies:\n    - scale: {type: tosca.policies.Scaling.MiCADO, targets: [workers], properties: {min_instances: 2, max_instances: 6, scaling_rule: 'm_node_count = 3'}}\n");
    let n = plan.node("workers").unwrap();
    assert_eq!((n.min_instances, n.max_instances), (2, Some(6)));
    assert_eq!(n.provisioner.as_deref(), Some("terraform"));
    assert_eq!(plan.policy("scale").unwrap().target_kind, TargetKind::Nodes);
}

#[test]
fn structural_mistakes_are_named() {
    let p = problems("topology_templte: {}\n");
    assert!(p.iter().any(|m| m.contains("'topology_templte' is not a top-level key TOSCA knows; did you mean topology_template?")), "{p:?}");
    let p = problems("topology_template:\n  node_templates:\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      propertes: {image: a}\n");
    assert!(p.iter().any(|m| m.contains("'propertes' is not a node template key TOSCA knows; did you mean properties?")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("no image: set properties.image, or artifacts.image")), "{p:?}");
    let p = problems("topology_template:\n  node_templates:\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      instance_count: 5000\n      properties: {image: a}\n");
    assert!(p[0].contains("instance_count 5000 is out of range 0-1000"), "{p:?}");
    let p = problems("topology_template:\n  node_templates:\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {image: a, env: [{name: X, value: {get_input: [l, INDEX]}}]}\n  inputs: {l: {type: list, default: [1]}}\n");
    assert!(p[0].contains("INDEX is only defined in a node template with instance_count"), "{p:?}");
}
