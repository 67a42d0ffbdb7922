//! Property tests: whatever YAML comes in, the compiler returns a plan or
//! problems, and never panics. Two generators: byte/line mutations of the
//! example ADTs (reaches the parser), and random topologies built from the
//! TOSCA vocabulary (reaches the semantic passes).

use std::path::Path;

use fogmesh_common::adt::{compile, CompileOptions};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../adts");
    let mut texts: Vec<String> = ["face-detection.yaml", "stress.yaml", "nginx.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).expect("example ADT"))
        .collect();
    texts.sort();
    texts
}

#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    ReplaceByte(usize, char),
    InsertText(usize, String),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec![
        ":", "- ", "  ", "\n", "{", "}", "[", "]", "&a ", "*a", "'", "\"", "#", "|", ">", "!!str ",
        "{ get_input: x }", "{get_input: [camera_ports, INDEX]}", "{{MAXC}}", "INDEX", "UNBOUNDED",
        "-1", "0", "99999999999999999999", "~", "null", "<<: *a",
    ]);
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), prop::char::range(' ', '~')).prop_map(|(i, c)| Mutation::ReplaceByte(i, c)),
        (any::<usize>(), interesting).prop_map(|(i, s)| Mutation::InsertText(i, s.to_string())),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len().max(1);
    match m {
        Mutation::DeleteLine(i) => {
            if !lines.is_empty() {
                lines.remove(i % n);
            }
        }
        Mutation::DuplicateLine(i) => {
            if !lines.is_empty() {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
        }
        Mutation::SwapLines(a, b) => {
            if !lines.is_empty() {
                lines.swap(a % n, b % n);
            }
        }
        Mutation::ReplaceByte(..) | Mutation::InsertText(..) if text.is_empty() => {}
        Mutation::ReplaceByte(i, c) => {
            let mut chars: Vec<char> = text.chars().collect();
            let len = chars.len();
            chars[i % len] = *c;
            return chars.into_iter().collect();
        }
        Mutation::InsertText(i, s) => {
            let mut chars: Vec<char> = text.chars().collect();
            let at = i % (chars.len() + 1);
            chars.splice(at..at, s.chars());
            return chars.into_iter().collect();
        }
        Mutation::Truncate(i) => return text.chars().take(i % (text.chars().count() + 1)).collect(),
    }
    lines.join("\n")
}

/// Values an ADT author might plausibly (or implausibly) write.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (0i64..70000).prop_map(|i| json!(i)),
        prop::sample::select(vec![
            "fog-node", "web", "vol", "INDEX", "UNBOUNDED", "900m", "256Mi", "12xb", "30s", "tcp", "UDP",
            "{{MAXC}}", "{{ UPPER }}", "127.0.0.3", "not-an-ip", "/data", "relative/path",
            "tosca.nodes.MiCADO.Edge", "tosca.nodes.MiCADO.Container.Application.Docker.Deployment",
            "tosca.nodes.MiCADO.Container.Volume.HostPath", "tosca.nodes.MiCADO.EC2.Compute",
            "tosca.policies.Scaling.MiCADO", "tosca.policies.Monitoring.MiCADO", "x.Unknown",
        ])
        .prop_map(|s| json!(s)),
    ]
}

fn tosca_value() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "type", "properties", "requirements", "host", "volume", "node", "relationship", "location",
        "image", "env", "name", "value", "ports", "containerPort", "hostPort", "protocol", "resources",
        "limits", "requests", "cpu", "memory", "get_input", "instance_count", "occurrences", "path",
        "public_ip", "targets", "constants", "queries", "alerts", "alert", "expr", "for",
        "min_instances", "max_instances", "scaling_rule", "command", "args", "privileged", "default",
    ]);
    leaf().prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())),
        ]
    })
}

fn topology() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec!["fog-node", "web", "vol", "web_2", "cloud"]);
    (
        prop::collection::vec((names.clone(), tosca_value()), 0..5),
        prop::collection::vec((names, tosca_value()), 0..3),
        tosca_value(),
    )
        .prop_map(|(templates, policies, inputs)| {
            let templates: Map<String, Value> = templates.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let policies: Vec<Value> = policies.into_iter().map(|(k, v)| json!({ k: v })).collect();
            json!({
                "tosca_definitions_version": "tosca_simple_yaml_1_2",
                "imports": ["micado_types.yaml"],
                "topology_template": {
                    "inputs": inputs,
                    "node_templates": templates,
                    "policies": policies,
                }
            })
            .to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_examples_never_panic(pick in 0usize..3, ms in prop::collection::vec(mutation(), 1..6)) {
        let base = &examples()[pick];
        let mut text = base.clone();
        for m in &ms {
            text = apply(&text, m);
        }
        let _ = compile(&text, &CompileOptions::default());
    }

    #[test]
    fn random_topologies_never_panic(doc in topology()) {
        let params = vec![("x".to_string(), "[1, 2]".to_string())];
        match compile(&doc, &CompileOptions { params, local_imports: None, for_deployment: false }) {
            Ok(_) => {}
            // Every problem names what it belongs to.
            Err(e) => prop_assert!(e.problems.iter().all(|p| !p.subject.is_empty() && !p.message.is_empty())),
        }
    }
}

#[test]
fn every_example_still_compiles() {
    for text in examples() {
        compile(&text, &CompileOptions::default()).expect("example ADT compiles");
    }
}
