//! `fogmesh adt validate|compile` run as a real process on the ADTs in adts/.

use std::process::{Command, Output};

use fogmesh_tests::{bin, workspace};
use serde_json::Value;

fn fogmesh(args: &[&str]) -> Output {
    Command::new(bin("fogmesh"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run fogmesh")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn compile_json(file: &str, params: &[&str]) -> Value {
    let mut args = vec!["adt", "compile", file, "--format", "json"];
    for p in params {
        args.extend(["--param", p]);
    }
    let out = fogmesh(&args);
    assert!(out.status.success(), "compile {file} failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("compile prints JSON")
}

fn by_name<'a>(items: &'a Value, name: &str) -> &'a Value {
    items
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no '{name}' in {items}"))
}

#[test]
fn validate_summarises_every_example() {
    let out = fogmesh(&["adt", "validate", "adts/face-detection.yaml", "adts/stress.yaml", "adts/nginx.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("adts/face-detection.yaml: valid: 3 nodes, 6 workloads, 2 policies"), "{text}");
    assert!(text.contains("adts/stress.yaml: valid: 1 node, 1 workload, 2 policies"), "{text}");
    assert!(text.contains("adts/nginx.yaml: valid: 0 nodes, 1 workload, 1 policy"), "{text}");
}

#[test]
fn validate_reports_every_problem_with_location_and_exits_1() {
    let out = fogmesh(&["adt", "validate", "adts/nginx.yaml", "adts/invalid/several-problems.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    // The valid file is still summarised.
    assert!(stdout(&out).contains("adts/nginx.yaml: valid"));
    let errors = stderr(&out);
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 3, "{errors}");
    for line in &lines {
        assert!(line.starts_with("adts/invalid/several-problems.yaml:"), "{line}");
        assert!(line.contains(": error: node '"), "{line}");
    }
    assert!(lines[0].contains("names 'fog-nod', which is not a node template in this ADT; did you mean fog-node?"), "{errors}");
    assert!(lines[1].contains("port 0 is out of range 1-65535"), "{errors}");
    assert!(lines[2].contains("get_input names 'cloud_ip'"), "{errors}");
}

#[test]
fn compile_face_detection_plan_has_the_contract_fields() {
    let plan = compile_json("adts/face-detection.yaml", &[]);

    let fog = by_name(&plan["nodes"], "fog-node");
    assert_eq!(fog["kind"], "edge");
    assert_eq!(fog["public_ip"], "127.0.0.3");
    assert_eq!(by_name(&plan["nodes"], "camera-node")["public_ip"], "127.0.0.2");
    assert_eq!(by_name(&plan["nodes"], "cloud-node")["public_ip"], "127.0.0.4");

    // instance_count: 2 with [camera_ports, INDEX]: copy k takes element k.
    let workloads = &plan["workloads"];
    assert!(workloads.as_array().unwrap().iter().all(|w| w["name"] != "camera-client"));
    for (copy, port) in [("camera-client-1", 5001), ("camera-client-2", 5002)] {
        let w = by_name(workloads, copy);
        assert_eq!(w["host"], "camera-node");
        assert_eq!(w["host_network"], true);
        assert_eq!(w["env"]["CONTROL_PORT"], port.to_string());
        assert_eq!(w["env"]["RECEIVER_HOST"], "127.0.0.3");
        assert_eq!(w["env"]["RECEIVER_PORT"], "5000");
        assert_eq!(w["ports"][0]["host_port"], port);
        assert_eq!(w["ports"][0]["container_port"], port);
    }

    let receiver = by_name(workloads, "fog-receiver");
    assert_eq!(receiver["image"], "fogmesh/fog-receiver:latest");
    assert_eq!(receiver["host"], "fog-node");
    assert_eq!(receiver["args"], serde_json::json!(["--listen", "0.0.0.0:5000", "--queue", "/data/frames"]));
    assert_eq!(receiver["ports"][0]["container_port"], 5000);
    assert_eq!(receiver["ports"][0]["protocol"], "tcp", "the protocol comes from an input");
    assert_eq!(receiver["ports"][0]["name"], "ingest");
    assert_eq!(receiver["resources"]["cpu_request_millis"], 100);
    assert_eq!(receiver["resources"]["memory_limit_bytes"], 128 * 1024 * 1024);
    // Long-form volume requirement: mounted at the relationship's location.
    assert_eq!(receiver["volumes"][0]["mount_path"], "/data");
    assert_eq!(receiver["volumes"][0]["source"]["path"], "/var/lib/fogmesh/frames");

    let processor = by_name(workloads, "fog-processor");
    assert_eq!(processor["env"]["THRESHOLD"], "2.0");
    assert_eq!(processor["resources"]["cpu_limit_millis"], 1000);
    assert_eq!(processor["min_instances"], 1);
    assert_eq!(processor["max_instances"], 3, "from the policy: '{{{{MAXC}}}}' becomes an integer");
    assert_eq!(processor["privileged"], false);
    assert_eq!(processor["host_network"], false);
    assert!(processor["liveness_probe"].is_object());
    assert_eq!(processor["volumes"][0]["mount_path"], "/data");

    let collector = by_name(workloads, "cloud-collector");
    assert_eq!(collector["host"], "cloud-node");
    assert_eq!(collector["volumes"][0]["mount_path"], "/data/results");
    // Compose-style port: target is the container's, published the host's.
    assert_eq!((collector["ports"][0]["container_port"].as_u64(), collector["ports"][0]["host_port"].as_u64()), (Some(8080), Some(8080)));
    assert!(collector["readiness_probe"].is_object());

    let scaling = by_name(&plan["policies"], "scalability");
    assert_eq!(scaling["kind"], "scaling");
    assert_eq!(scaling["targets"], serde_json::json!(["fog-processor"]));
    assert_eq!(scaling["min_instances"], 1);
    assert_eq!(scaling["max_instances"], 3);
    assert_eq!(scaling["interval_seconds"], 10, "get_input in a policy property");
    assert_eq!(scaling["constants"]["FRAMES_PER_DETECTOR"], 5);
    assert_eq!(scaling["sources"], serde_json::json!(["fog-processor:9101", "fog-receiver:9102", "cloud-collector:8080"]));
    assert!(scaling["queries"]["FPS_IN"].as_str().unwrap().contains("frames_received_total"));
    assert!(scaling["scaling_rule"].as_str().unwrap().contains("ceil(FPS_IN / FRAMES_PER_DETECTOR)"));
    assert_eq!(by_name(&plan["policies"], "monitoring")["kind"], "monitoring");

    // Alerts with a `for` duration (nginx.yaml's policy).
    let nginx = compile_json("adts/nginx.yaml", &[]);
    let busy = by_name(&nginx["policies"][0]["alerts"], "web_busy");
    assert_eq!(busy["for_seconds"], 60);
}

#[test]
fn params_override_input_defaults() {
    let plan = compile_json(
        "adts/face-detection.yaml",
        &["fog_public_ip=192.0.2.7", "camera_count=3", "camera_ports=[6001, 6002, 6003]"],
    );
    assert_eq!(by_name(&plan["nodes"], "fog-node")["public_ip"], "192.0.2.7");
    let third = by_name(&plan["workloads"], "camera-client-3");
    assert_eq!(third["env"]["CONTROL_PORT"], "6003");
    assert_eq!(third["env"]["RECEIVER_HOST"], "192.0.2.7");
}

#[test]
fn bad_params_are_refused_with_the_reason() {
    let out = fogmesh(&["adt", "compile", "adts/face-detection.yaml", "--param", "camera_count=3"]);
    assert_eq!(out.status.code(), Some(1));
    // Three copies but only two ports in the list.
    assert!(stderr(&out).contains("input 'camera_ports' has 2 elements, too few for element 3"), "{}", stderr(&out));

    let out = fogmesh(&["adt", "validate", "adts/nginx.yaml", "--param", "no_such_input=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("parameter 'no_such_input': is not an input of this ADT"), "{}", stderr(&out));

    let out = fogmesh(&["adt", "validate", "adts/nginx.yaml", "--param", "novalue"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a param without '='");
    assert!(stderr(&out).contains("expected NAME=VALUE"));
}

#[test]
fn stress_policies_inherit_local_type_defaults_and_hide_secrets() {
    let plan = compile_json("adts/stress.yaml", &[]);
    let node = by_name(&plan["nodes"], "worker-node");
    assert_eq!(node["kind"], "cloud");
    assert_eq!(node["cloud"], "ec2");
    assert_eq!(node["provisioner"], "occopus");
    assert_eq!(node["min_instances"], 1);
    assert_eq!(node["max_instances"], 3);

    let stress = by_name(&plan["workloads"], "stress");
    assert_eq!(stress["host"], "worker-node");
    assert_eq!(stress["env"]["API_KEY"], "<secret>");
    assert_eq!(stress["max_instances"], 5);

    let cpu = by_name(&plan["policies"], "stress-scaling");
    // The policy's own constant wins over the type default (70).
    assert_eq!(cpu["constants"]["UPPER"], 80);
    assert!(cpu["queries"]["CPU"].is_string(), "query inherited from the type");
    let alert = &cpu["alerts"][0];
    assert!(alert["expr"].as_str().unwrap().ends_with("> 80"), "{alert}");
    assert!(cpu["scaling_rule"].is_string(), "rule inherited from the type");

    let nodes = by_name(&plan["policies"], "node-scaling");
    assert_eq!(nodes["targets"], serde_json::json!(["worker-node"]));
    assert_eq!(nodes["max_instances"], 3, "'{{{{MAXNODES}}}}' from the type's constants");
}

#[test]
fn nginx_template_constant_sets_max_instances_and_table_output_reads() {
    let plan = compile_json("adts/nginx.yaml", &[]);
    let web = by_name(&plan["workloads"], "web");
    assert_eq!(web["host"], Value::Null);
    assert_eq!(web["max_instances"], 3);
    assert_eq!(web["env"]["GREETING"], "hello");
    assert_eq!(web["ports"][0]["host_port"], 8080);
    assert_eq!(by_name(&plan["policies"], "web-scaling")["max_instances"], 3);

    let out = fogmesh(&["adt", "compile", "adts/nginx.yaml"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("WORKLOADS"), "{text}");
    let row = text.lines().find(|l| l.starts_with("web ")).expect("a row for web");
    assert!(row.contains("(any)") && row.contains("1..3") && row.contains("8080:80/tcp"), "{row}");
}

#[test]
fn unreadable_files_are_reported() {
    let out = fogmesh(&["adt", "validate", "adts/does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read adts/does-not-exist.yaml"), "{}", stderr(&out));
}

#[test]
fn binaries_print_help() {
    for (name, words) in [
        ("fogmesh", "adt"),
        ("fogmesh-master", "control plane"),
        ("fogmesh-agent", "fog"),
    ] {
        let out = Command::new(bin(name)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{name} --help");
        assert!(stdout(&out).contains(words), "{name} --help: {}", stdout(&out));
    }
}

#[test]
fn warnings_print_with_their_place_and_fail_only_with_strict() {
    let out = fogmesh(&["adt", "validate", "adts/compat/placeholders.yaml", "adts/compat/pod.yaml"]);
    assert!(out.status.success(), "warnings alone pass: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("adts/compat/placeholders.yaml:7:67: warning: node 'edge': public_ip \"000.000.000.000\" is not an IP address"), "{err}");
    assert!(stdout(&out).contains("adts/compat/placeholders.yaml: valid (3 warnings): 2 nodes, 1 workload, 0 policies"), "{}", stdout(&out));
    assert!(stdout(&out).contains("adts/compat/pod.yaml: valid: 1 node, 2 workloads"), "{}", stdout(&out));

    let strict = fogmesh(&["adt", "validate", "--strict", "adts/compat/placeholders.yaml", "adts/compat/pod.yaml"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(stderr(&strict).contains("adts/compat/placeholders.yaml: invalid with --strict: 3 warning(s)"), "{}", stderr(&strict));

    // Policies fogmesh does not act on are listed.
    let out = fogmesh(&["adt", "validate", "adts/compat/policies-shared.yaml"]);
    assert!(stdout(&out).contains("not enforced by fogmesh (kept in the plan): firewall (tosca.policies.Security.MiCADO.Network.Passthrough)"), "{}", stdout(&out));

    // compile --format json carries the warnings.
    let plan = compile_json("adts/compat/containers-kinder.yaml", &[]);
    let warnings = plan["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 3);
    assert_eq!(warnings[2]["severity"], "warning");
    assert_eq!(warnings[2]["pos"], serde_json::json!({"line": 34, "column": 13}));
    assert!(warnings[2]["message"].as_str().unwrap().contains("use 'tosca.nodes.MiCADO.Nova.Compute'"));
}

/// What one ADT of the corpus must get, from its header (the `#` lines
/// before the first other line):
/// - `# expect: ok`, then optionally `# summary: N nodes, ...` (the
///   validate summary), `# plan: SELECTOR PATH = JSON` (a value of the
///   compiled plan; SELECTOR is `workload NAME`, `node NAME`, `policy
///   NAME#INDEX` or `plan`; PATH is dot-separated keys and indices);
/// - or one `# expect: error LINE:COL: SUBJECT: MESSAGE` per error, in order
///   (MESSAGE may stop short of the end);
/// - and, for either, one `# warning: LINE:COL: SUBJECT: MESSAGE` per warning.
#[derive(Default)]
struct Verdict {
    ok: bool,
    summary: Option<String>,
    plan: Vec<String>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

fn verdict(header: &str) -> Option<Verdict> {
    let mut v = Verdict::default();
    let mut stated = false;
    for line in header.lines().take_while(|l| l.starts_with('#')) {
        if line == "# expect: ok" {
            (v.ok, stated) = (true, true);
        } else if let Some(e) = line.strip_prefix("# expect: error ") {
            v.errors.push(e.to_string());
            stated = true;
        } else if let Some(s) = line.strip_prefix("# summary: ") {
            v.summary = Some(s.to_string());
        } else if let Some(p) = line.strip_prefix("# plan: ") {
            v.plan.push(p.to_string());
        } else if let Some(w) = line.strip_prefix("# warning: ") {
            v.warnings.push(w.to_string());
        } else if line.starts_with("# expect") {
            panic!("unreadable verdict line: {line}");
        }
    }
    assert!(!(v.ok && !v.errors.is_empty()), "a verdict of both ok and error:\n{header}");
    stated.then_some(v)
}

/// The `LINE:COL: SUBJECT: MESSAGE` of each `FILE:LINE:COL: KIND: ...` line.
fn diagnostics(stderr: &str, file: &str, kind: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| {
            let (pos, rest) = l.strip_prefix(file)?.strip_prefix(':')?.split_once(&format!(": {kind}: "))?;
            Some(format!("{pos}: {rest}"))
        })
        .collect()
}

/// `want` (each a prefix of the diagnostic it stands for) against `got`,
/// one for one and in order; the differences.
fn compare(what: &str, want: &[String], got: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if want.len() != got.len() {
        out.push(format!("{} {what}(s) expected, {} given: {got:#?}", want.len(), got.len()));
    }
    for (w, g) in want.iter().zip(got) {
        if !g.starts_with(w.as_str()) {
            out.push(format!("{what} expected: {w}\n      given: {g}"));
        }
    }
    out
}

/// The value a `# plan:` line names, and the one it expects.
fn plan_value(plan: &Value, line: &str) -> Result<(Value, Value), String> {
    let (place, expected) = line.split_once(" = ").ok_or("no ' = '")?;
    let expected: Value = serde_json::from_str(expected).map_err(|e| format!("expected value is not JSON: {e}"))?;
    let mut words = place.split(' ');
    let (mut at, path) = match (words.next(), words.next(), words.next()) {
        (Some("plan"), Some(path), None) => (plan, path),
        (Some(kind @ ("workload" | "node" | "policy")), Some(name), Some(path)) => {
            let (name, index) = match name.split_once('#') {
                Some((n, i)) => (n, Some(i.parse::<u64>().map_err(|e| format!("index {i}: {e}"))?)),
                None => (name, None),
            };
            let list = &plan[match kind {
                "workload" => "workloads",
                "node" => "nodes",
                _ => "policies",
            }];
            let found = list.as_array().and_then(|l| l.iter().find(|x| x["name"] == name && index.is_none_or(|i| x["index"] == i)));
            (found.ok_or(format!("no {kind} {name} in the plan"))?, path)
        }
        _ => return Err("expected `workload|node|policy NAME PATH` or `plan PATH`".into()),
    };
    for key in path.split('.') {
        at = match key.parse::<usize>() {
            Ok(i) if at.is_array() => &at[i],
            _ => at.get(key).ok_or(format!("no '{key}' in {at}"))?,
        };
    }
    Ok((at.clone(), expected))
}

/// The corpus in adts/corpus/: our own ADTs, each one class of the dialect's
/// constructs (containers, volumes, Edge nodes, node sets, policies,
/// constants, inputs, imports, removed types, probes, anchors and pods) or
/// one way to get it wrong, each with its verdict in its header. Every one
/// is validated by the CLI and held to its verdict; every accepted one is
/// also compiled and its plan checked.
#[test]
fn every_adt_of_the_corpus_gets_the_verdict_its_header_states() {
    let dir = workspace().join("adts/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let (mut accepted, mut refused, mut failures) = (0, 0, Vec::new());
    for path in &files {
        let file = format!("adts/corpus/{}", path.file_name().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(path).unwrap();
        let Some(want) = verdict(&text) else {
            failures.push(format!("{file}: no `# expect:` verdict in its header"));
            continue;
        };
        let out = fogmesh(&["adt", "validate", &file]);
        let (out_text, err_text) = (stdout(&out), stderr(&out));
        let mut wrong = compare("warning", &want.warnings, &diagnostics(&err_text, &file, "warning"));
        if want.ok {
            accepted += 1;
            if out.status.code() != Some(0) {
                wrong.push(format!("refused ({:?}):\n{err_text}", out.status.code()));
            } else if let Some(summary) = &want.summary {
                // `FILE: valid: SUMMARY` or `FILE: valid (N warnings): SUMMARY`.
                let given = out_text.lines().find_map(|l| l.strip_prefix(&file)?.strip_prefix(": valid")?.rsplit(": ").next());
                if given != Some(summary.as_str()) {
                    wrong.push(format!("summary expected: {summary}\n      given: {out_text}"));
                }
            }
            let plan = compile_json(&file, &[]);
            for line in &want.plan {
                match plan_value(&plan, line) {
                    Ok((got, expected)) if got == expected => {}
                    Ok((got, _)) => wrong.push(format!("plan: {line}\n      given: {got}")),
                    Err(e) => wrong.push(format!("plan: {line}: {e}")),
                }
            }
        } else {
            refused += 1;
            if out.status.code() != Some(1) {
                wrong.push(format!("validate ended with {:?}, not 1 (refused)\n{out_text}{err_text}", out.status.code()));
            }
            wrong.extend(compare("error", &want.errors, &diagnostics(&err_text, &file, "error")));
        }
        failures.extend(wrong.into_iter().map(|w| format!("{file}: {w}")));
    }
    eprintln!("{} ADTs: {accepted} to accept, {refused} to refuse", files.len());
    assert!(accepted >= 10 && refused >= 10, "the corpus in {} is missing (or thin): {accepted} to accept, {refused} to refuse", dir.display());
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `fogmesh policy test`: a rule's dry run, in the same sandboxed worker
/// process the master uses (this binary re-run as `__rule-worker`).
#[test]
fn policy_test_runs_a_rule_once_with_the_inputs_given() {
    // The face-detection policy: constants from the ADT, its queries set by hand.
    let out = fogmesh(&["policy", "test", "adts/face-detection.yaml", "--set", "FPS_IN=12", "--set", "QUEUE=30", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outputs"]["m_container_count"], 3, "{v}");
    assert_eq!(v["printed"][0], "frames in/s 12 queue 30 detectors 3");
    let out = fogmesh(&["policy", "test", "adts/face-detection.yaml", "--set", "FPS_IN=2", "--set", "QUEUE=0", "--param", "camera_count=1", "--param", "camera_ports=[7001]", "--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outputs"]["m_container_count"], 1, "{v}");
    // Unset queries are None.
    let out = fogmesh(&["policy", "test", "adts/face-detection.yaml", "--policy", "scalability", "--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["outputs"]["m_container_count"].as_u64(), v["printed"][0].as_str()), (Some(1), Some("waiting for the receiver and detector metrics")), "{v}");

    let dir = fogmesh_tests::test_dir("policy-test");
    let adt = |rule: &str| {
        let text = format!(
            "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    web:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties: {{image: nginx}}\n  policies:\n    - scale:\n        type: tosca.policies.Scaling.MiCADO\n        targets: [web]\n        properties:\n          min_instances: 1\n          max_instances: 3\n          scaling_rule: |\n{}\n",
            rule.lines().map(|l| format!("            {l}")).collect::<Vec<_>>().join("\n")
        );
        let path = dir.join(format!("r{}.yaml", text.len()));
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    // m_userdata starts None; a Python 2 print runs as print().
    let file = adt("print \"user\", m_userdata\nm_userdata = {'n': 1}\nm_container_count = m_container_count + 1");
    let out = fogmesh(&["policy", "test", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("| user None") && text.contains("m_container_count = 2") && text.contains("m_userdata = {\"n\":1}"), "{text}");
    // A rule that loops or fails: exit 1 naming the problem and its line; this process is fine.
    let file = adt("x = 1\nwhile True:\n  x += 1");
    let out = fogmesh(&["policy", "test", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ran longer than 200 ms"), "{}", stderr(&out));
    let file = adt("m_container_count = 1\nm_container_count = UNKNOWN");
    let out = fogmesh(&["policy", "test", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 2") && stderr(&out).contains("UNKNOWN"), "{}", stderr(&out));
    let out = fogmesh(&["policy", "test", &file, "--policy", "nope"]);
    assert!(!out.status.success() && stderr(&out).contains("no scaling policy named nope") && stderr(&out).contains("scale (#1)"), "{}", stderr(&out));
}
