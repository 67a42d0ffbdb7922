//! MiCADO's dialect as real ADTs use it: the ADTs in adts/compat/ (our own,
//! one construct family each) compile to the plans asserted here, with
//! exactly the warnings asserted here; what MiCADO rejects is rejected.

use std::path::Path;

use fogmesh_common::adt::plan::{PolicyKind, Protocol, Query, TargetKind};
use fogmesh_common::adt::{compile, CompileOptions, Plan};

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../adts/compat").join(name)).unwrap()
}

fn plan(name: &str) -> Plan {
    compile(&read(name), &CompileOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Warnings as `LINE:COL: subject: message`.
fn warnings(plan: &Plan) -> Vec<String> {
    plan.warnings.iter().map(|w| format!("{}: {}: {}", w.pos, w.subject, w.message)).collect()
}

fn errors(text: &str) -> Vec<String> {
    match compile(text, &CompileOptions::default()) {
        Ok(_) => panic!("compiled, but MiCADO rejects it:\n{text}"),
        Err(e) => e.problems.iter().map(|p| format!("{}: {}: {}", p.pos, p.subject, p.message)).collect(),
    }
}

#[test]
fn repeated_policies_share_constants_and_queries_adt_wide() {
    let p = plan("policies-shared.yaml");
    let scaling: Vec<_> = p.policies.iter().filter(|x| x.name == "scalability").collect();
    assert_eq!(scaling.iter().map(|x| x.index).collect::<Vec<_>>(), [1, 2, 3], "three policies with one key, told apart by position");
    // Own constants first: policy 1 renders LIMIT as its own 70 ...
    assert_eq!(scaling[0].queries["LOAD"], Query::Expr("avg(rate(container_cpu_usage_seconds_total{name=~\"front.*\"}[1m]))*100 > 70".into()));
    // ... policy 2 its own 80, and MAXC from policy 1 (ADT-wide).
    assert_eq!(scaling[1].max_instances, Some(5));
    assert_eq!(p.constants["LIMIT"], serde_json::json!(80), "ADT-wide: later policies win");
    assert_eq!(p.constants["MAXC"], serde_json::json!(5));
    // A rule may read a query another policy declares: the ADT-wide set has them all.
    assert!(scaling[1].scaling_rule.as_deref().unwrap().contains("LOAD is None"));
    assert!(p.queries.contains_key("LOAD") && p.queries.contains_key("BACKLOAD"));
    assert_eq!(p.queries["NODES"], Query::LabelValues("up{job=\"node\"} == 1".into(), "instance".into()));
    assert_eq!(scaling[2].target_kind, TargetKind::Nodes);
    // A constant defined nowhere renders empty, as in MiCADO.
    assert!(p.queries["BACKLOAD"].expr().ends_with("> 80 and  == 0"), "{:?}", p.queries["BACKLOAD"]);
    let fw = p.policies.iter().find(|x| x.name == "firewall").unwrap();
    assert_eq!((fw.kind, fw.kind.enforced()), (PolicyKind::Security, false));
    assert_eq!(fw.properties["target_ports"], serde_json::json!([80]), "kept in the plan");
    assert_eq!(
        warnings(&p),
        [
            "37:23: policy 'scalability' (#2): {{NOWHERE}} in query 'BACKLOAD' is not a constant of any scaling policy; it renders empty, as in MiCADO",
            "42:15: policy 'scalability' (#2): this scaling_rule line uses a Python 2 print statement; MiCADO's policy keeper fails the whole rule without a word, fogmesh runs it as print(...)",
        ]
    );
}

#[test]
fn compose_ports_artifact_images_several_hosts_and_counts() {
    let p = plan("containers-kinder.yaml");
    let web = p.workload("web").unwrap();
    assert_eq!(web.image, "nginx:1.25", "Docker Hub images stay as they are");
    assert_eq!((web.host.as_deref(), web.hosts.clone()), (Some("north"), vec!["north".to_string(), "south".to_string()]));
    assert_eq!((web.ports[0].container_port, web.ports[0].host_port, web.ports[0].protocol), (80, Some(8080), Protocol::Tcp));
    assert_eq!((web.ports[1].container_port, web.ports[1].host_port, web.ports[1].protocol), (53, None, Protocol::Udp));
    // instance_count wins over occurrences: two copies, one instance each.
    for copy in ["tool-1", "tool-2"] {
        let t = p.workload(copy).unwrap();
        assert_eq!(t.image, "registry.example.com/tool:2.0", "a private repository goes in front");
        assert_eq!((t.replicas, t.min_instances, t.max_instances), (1, 1, Some(1)));
    }
    assert_eq!(p.node("old-workers").unwrap().cloud.as_deref(), Some("nova"));
    assert_eq!(
        warnings(&p),
        [
            "27:7: node 'tool': MiCADO accepts instance_count only in tosca_simple_yaml_1_3 ADTs; fogmesh accepts it in tosca_simple_yaml_1_0",
            "28:20: node 'tool': occurrences is ignored: instance_count sets how many copies there are",
            "34:13: node 'old-workers': type 'tosca.nodes.MiCADO.EGI.Compute' was removed from MiCADO's library; fogmesh reads it as before, but use 'tosca.nodes.MiCADO.Nova.Compute'",
        ]
    );
}

#[test]
fn pod_members_share_the_pods_node() {
    let p = plan("pod.yaml");
    for member in ["broker", "exporter"] {
        let w = p.workload(member).unwrap();
        assert_eq!((w.pod.as_deref(), w.host.as_deref()), (Some("rabbit"), Some("fog")), "{member}");
    }
    assert!(p.warnings.is_empty(), "{:?}", warnings(&p));
}

#[test]
fn placeholders_warn_at_validate_and_fail_at_deploy() {
    let text = read("placeholders.yaml");
    let p = compile(&text, &CompileOptions::default()).unwrap();
    assert_eq!(
        warnings(&p),
        [
            "7:67: node 'edge': public_ip \"000.000.000.000\" is not an IP address; a fog node registers with its address (a placeholder? deploying this ADT fails until it is one)",
            "11:22: node 'cloud': property 'region_name' holds a placeholder (\"ADD_YOUR_REGION_NAME_HERE\"); replace it before deploying",
            "12:19: node 'cloud': property 'image_id' holds a placeholder (\"<IMAGE_ID>\"); replace it before deploying",
        ]
    );
    let deploy = CompileOptions { for_deployment: true, ..Default::default() };
    let e = compile(&text, &deploy).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(e.problems[0].message.starts_with("public_ip \"000.000.000.000\" is not an IP address"), "{e}");
}

const HEAD: &str = "tosca_definitions_version: tosca_simple_yaml_1_2\nimports: [micado_types.yaml]\ntopology_template:\n  node_templates:\n";

#[test]
fn what_micado_rejects_is_rejected_with_its_place() {
    // Unknown property of a container (MiCADO's Docker type declares its 45).
    let e = errors(&format!("{HEAD}    db:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {{image: mysql, clusterIP: None}}\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("7:34: node 'db': unknown property 'clusterIP' for type tosca.nodes.MiCADO.Container.Application.Docker"), "{e:?}");
    // A misspelt cloud property, with the right one suggested.
    let e = errors(&format!("{HEAD}    vm:\n      type: tosca.nodes.MiCADO.OCI.Compute\n      properties: {{region: r, availability_domain: a, compartment_id: c, shape: s, network_security_group: n, subnet_id: i, ssh-keys: k}}\n"));
    assert!(e[0].contains("unknown property 'ssh-keys' for type tosca.nodes.MiCADO.OCI.Compute; did you mean ssh_keys?"), "{e:?}");
    // An interface operation MiCADO's interfaces do not have.
    let e = errors(&format!("{HEAD}    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties: {{image: a}}\n      interfaces: {{Kubernetes: {{configure: {{inputs: {{}}}}}}}}\n"));
    assert!(e[0].contains("interface 'Kubernetes' has no operation 'configure'"), "{e:?}");
    // Missing required properties of a cloud type, and values outside constraints.
    let e = errors(&format!("{HEAD}    vm: {{type: tosca.nodes.MiCADO.EC2.Compute, properties: {{image_id: i}}}}\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {{image: a, ports: [{{port: 80, nodePort: 80, protocol: sctpx}}]}}\n"));
    let all = e.join("\n");
    assert!(all.contains("missing required property 'region_name' (required by tosca.nodes.MiCADO.EC2.Compute)"), "{all}");
    assert!(all.contains("nodePort' must be at least 30000, found 80"), "{all}");
    assert!(all.contains("protocol' must be one of tcp, TCP, udp, UDP, SCTP, found \"sctpx\""), "{all}");
    // A template at the wrong level (bad indentation).
    let e = errors("tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  worker:\n    type: tosca.nodes.MiCADO.Edge\n");
    assert!(e[0].contains("'worker' is not a topology_template key TOSCA knows"), "{e:?}");
}

#[test]
fn a_broken_template_is_reported_once_not_by_everything_that_names_it() {
    let e = errors(&format!(
        "{HEAD}    fog: {{type: tosca.nodes.MiCADO.Edgee, properties: {{public_ip: 10.0.0.1}}}}\n    w:\n      type: tosca.nodes.MiCADO.Container.Application.Docker\n      properties: {{image: a}}\n      requirements: [{{host: fog}}]\n  policies:\n    - net: {{type: tosca.policies.Security.MiCADO.Network.Passthrough, targets: [fog], properties: {{target_ports: [1]}}}}\n"
    ));
    assert_eq!(e.len(), 1, "only the unknown type: {e:?}");
    assert!(e[0].contains("unknown type 'tosca.nodes.MiCADO.Edgee'"), "{e:?}");
}

#[test]
fn removed_policy_types_are_read_with_the_current_name() {
    let text = format!("{HEAD}    w: {{type: tosca.nodes.MiCADO.Container.Application.Docker, properties: {{image: a}}}}\n  policies:\n    - proxy: {{type: tosca.policies.MiCADO.Security.Network.HttpProxy, targets: [w], properties: {{target_ports: [80], encryption: false}}}}\n");
    let p = compile(&text, &CompileOptions::default()).unwrap();
    assert_eq!(p.policies[0].kind, PolicyKind::Security);
    assert_eq!(
        warnings(&p),
        ["7:21: policy 'proxy': type 'tosca.policies.MiCADO.Security.Network.HttpProxy' was removed from MiCADO's library; fogmesh reads it as before, but use 'tosca.policies.Security.MiCADO.Network.HttpProxy'"]
    );
}

/// Every type of the library can be used: a template with its required
/// properties (of the declared types) compiles.
#[test]
fn every_library_type_compiles_with_its_required_properties() {
    let lib = fogmesh_common::adt::types::TypeLibrary::builtin();
    let types = lib.names(fogmesh_common::adt::types::TypeSpace::Node);
    assert!(types.len() >= 60, "{}", types.len());
    for t in types {
        let defs = lib.property_defs(fogmesh_common::adt::types::TypeSpace::Node, &t);
        let required = lib.required_properties(fogmesh_common::adt::types::TypeSpace::Node, &t);
        // Containers need an image (property or artifact), though none requires it.
        let mut wanted = required.clone();
        if defs.contains_key("image") && !required.contains(&"image".to_string()) {
            wanted.push("image".to_string());
        }
        // An Edge.Group needs a selector or members, though neither is required alone.
        if defs.contains_key("selector") && !required.contains(&"selector".to_string()) {
            wanted.push("selector".to_string());
        }
        let props: Vec<String> = wanted
            .iter()
            .map(|name| {
                let value = match defs[name].value_type.as_deref() {
                    // The smallest value its constraints allow.
                    Some("integer") => defs[name]
                        .constraints
                        .iter()
                        .find_map(|c| match c {
                            fogmesh_common::adt::types::Constraint::GreaterOrEqual(min) => Some((*min as i64).to_string()),
                            _ => None,
                        })
                        .unwrap_or_else(|| "1".to_string()),
                    Some("list") => "[a]".to_string(),
                    Some("map") => "{a: b}".to_string(),
                    Some("boolean") => "true".to_string(),
                    Some("scalar-unit.size") => "1 GB".to_string(),
                    _ if name == "public_ip" => "10.1.2.3".to_string(),
                    _ => "/x".to_string(),
                };
                format!("{name}: {value}")
            })
            .collect();
        let text = format!("{HEAD}    n:\n      type: {t}\n      properties: {{{}}}\n", props.join(", "));
        if let Err(e) = compile(&text, &CompileOptions::default()) {
            panic!("{t}: {e}");
        }
    }
}
