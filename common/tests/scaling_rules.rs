//! Scaling rules through the worker binary: every construct MiCADO rules
//! use, the 13 distinct real rules (tests/fixtures/micado_rules) with
//! expected outputs worked out by hand, and the sandbox's limits, each
//! followed by a good request on the same worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fogmesh_common::scaling::{
    check_syntax, evaluate_in_process, RuleError, RuleErrorKind, RuleLimits, RuleOutcome, RuleRequest, RuleWorker,
    OUTPUT_NAMES,
};
use serde_json::{json, Value};

/// 01-01-2024 01:00:00 UTC.
const NOW: f64 = 1_704_070_800.0;

fn worker() -> RuleWorker {
    RuleWorker::new(PathBuf::from(env!("CARGO_BIN_EXE_fogmesh-rule-worker")), Vec::new())
}

/// A request with the four outputs defaulted to null, as callers send them.
fn request(source: &str, inputs: Value) -> RuleRequest {
    let mut map = inputs.as_object().cloned().unwrap_or_default();
    for name in OUTPUT_NAMES {
        map.entry(name).or_insert(Value::Null);
    }
    RuleRequest { source: source.to_owned(), inputs: map, now_unix: NOW, limits: RuleLimits::default() }
}

/// Checks `expected` (a subset of the outputs) and the printed lines.
fn check(label: &str, got: &Result<RuleOutcome, RuleError>, expected: &Value, printed: Option<&[&str]>) -> Vec<String> {
    let mut problems = Vec::new();
    let outcome = match got {
        Ok(outcome) => outcome,
        Err(e) => return vec![format!("{label}: failed: {e} (kind {:?}, printed {:?})", e.kind, e.printed)],
    };
    let keys: Vec<&str> = outcome.outputs.keys().map(String::as_str).collect();
    let mut want_keys = OUTPUT_NAMES.to_vec();
    want_keys.sort_unstable();
    if keys != want_keys {
        problems.push(format!("{label}: output names {keys:?}"));
    }
    for (name, want) in expected.as_object().into_iter().flatten() {
        if outcome.outputs.get(name) != Some(want) {
            problems.push(format!("{label}: {name} = {:?}, expected {want}", outcome.outputs.get(name)));
        }
    }
    if let Some(lines) = printed {
        if outcome.printed != lines {
            problems.push(format!("{label}: printed {:?}, expected {lines:?}", outcome.printed));
        }
    }
    problems
}

async fn expect_ok(worker: &RuleWorker, source: &str) {
    let got = worker.evaluate(request(source, json!({"N": 41}))).await;
    assert_eq!(got.map(|o| o.outputs["m_node_count"].clone()), Ok(json!(42)), "the next request on the worker");
}

struct Row {
    what: &'static str,
    rule: &'static str,
    inputs: Value,
    outputs: Value,
    printed: Option<&'static [&'static str]>,
}

fn row(what: &'static str, rule: &'static str, inputs: Value, outputs: Value) -> Row {
    Row { what, rule, inputs, outputs, printed: None }
}

fn printing(what: &'static str, rule: &'static str, inputs: Value, printed: &'static [&'static str]) -> Row {
    Row { what, rule, inputs, outputs: json!({}), printed: Some(printed) }
}

fn construct_rows() -> Vec<Row> {
    vec![
        row("assignment", "m_node_count = 5\nm_container_count = m_node_count", json!({}), json!({"m_node_count": 5, "m_container_count": 5})),
        row(
            "+= and -=",
            "m_node_count += 2\nm_container_count -= 1",
            json!({"m_node_count": 3, "m_container_count": 4}),
            json!({"m_node_count": 5, "m_container_count": 3}),
        ),
        row(
            "if/elif/else",
            "if X > 10:\n  m_node_count = 1\nelif X > 5:\n  m_node_count = 2\nelse:\n  m_node_count = 3",
            json!({"X": 7}),
            json!({"m_node_count": 2}),
        ),
        row("for", "total = 0\nfor n in m_nodes:\n  total += len(n)\nm_node_count = total", json!({"m_nodes": ["ab", "cde"]}), json!({"m_node_count": 5})),
        row("while", "n = 0\nwhile n < 5:\n    n += 1\nm_node_count = n", json!({}), json!({"m_node_count": 5})),
        printing("print(...)", "print('a', 1, None, 2.5, True)\nprint()", json!({}), &["a 1 None 2.5 True", ""]),
        printing(
            "Python 2 print statements",
            "print \"queue:\", ITEMS\nprint \"x=\" + str(ITEMS)  # a comment\nif ITEMS: print 'inline'\nprint\nprint 'a',\nprint 'b'",
            json!({"ITEMS": 3}),
            &["queue: 3", "x=3", "inline", "", "a b"],
        ),
        row(
            "arithmetic",
            "m_userdata = [7 / 2, 7 // 2, 7 % 3, 2 ** 10, -3 * 2.5, 1 - 4, 10 / 4.0, (1 + 2) * 3]",
            json!({}),
            json!({"m_userdata": [3.5, 3, 1, 1024, -7.5, -3, 2.5, 9]}),
        ),
        row(
            "comparisons, chained",
            "m_userdata = [0 < X > 180, 0 < X < 180, X == 90, X != 90, 80 <= X <= 100, X > 200]",
            json!({"X": 90}),
            json!({"m_userdata": [false, true, true, false, true, false]}),
        ),
        row("chained, true", "m_userdata = 0 < X > 180", json!({"X": 190}), json!({"m_userdata": true})),
        row(
            "is None / is not None",
            "m_userdata = [m_nodes_todrop is None, X is not None, X is None]",
            json!({"X": 0}),
            json!({"m_userdata": [true, true, false]}),
        ),
        row("in / not in", "m_userdata = ['a' not in L, 'b' in L, 'b' not in L]", json!({"L": ["b"]}), json!({"m_userdata": [true, true, false]})),
        row(
            "and / or / not",
            "m_userdata = [X > 1 and X < 5, X > 10 or X == 3, not X, not 0, X and 'yes']",
            json!({"X": 3}),
            json!({"m_userdata": [true, true, false, true, "yes"]}),
        ),
        row(
            "conditional expressions",
            "m_node_count = 10 if X > 2 else 1\nm_container_count = 10 if X > 5 else 1",
            json!({"X": 3}),
            json!({"m_node_count": 10, "m_container_count": 1}),
        ),
        row(
            "list and dict literals, subscripts, dict writes",
            "d = {'a': 1, 'b': [1, 2]}\nd['c'] = d['b'][1]\nd['a'] += 5\nd['l'] = []\nm_userdata = d",
            json!({}),
            json!({"m_userdata": {"a": 6, "b": [1, 2], "c": 2, "l": []}}),
        ),
        row(
            "slices",
            "m_userdata = [S[3:], S[:2], L[1:], L[-1], L[::-1], L[0:2]]",
            json!({"S": "mw-node1", "L": [1, 2, 3]}),
            json!({"m_userdata": ["node1", "mw", [2, 3], 3, [3, 2, 1], [1, 2]]}),
        ),
        row(
            ".append and .startswith",
            "out = []\nfor x in L:\n  if x.startswith('mw-'):\n    out.append(x[len('mw-'):])\nm_nodes_todrop = out",
            json!({"L": ["mw-a", "b", "mw-c"]}),
            json!({"m_nodes_todrop": ["a", "c"]}),
        ),
        row(
            "str int float len min max ceil",
            "m_userdata = [str(3), str(2.5), str(True), int('7'), int(7.9), float(3), float('1.5'), len([1, 2]), len('abc'), \
min([4, 2, 9]), min(3, 1), max(1, 2.5), max([1, 5]), ceil(2.1), ceil(10 / (100 / 30)), ceil(3)]",
            json!({}),
            json!({"m_userdata": ["3", "2.5", "True", 7, 7, 3.0, 1.5, 2, 3, 2, 1, 2.5, 5, 3, 3, 3]}),
        ),
        row("other math names", "m_userdata = [floor(2.7), sqrt(16), fabs(-1)]", json!({}), json!({"m_userdata": [2, 4.0, 1.0]})),
        row("time.time()", "m_userdata = [time.time(), int(time.time())]", json!({}), json!({"m_userdata": [NOW, 1_704_070_800]})),
        row(
            "time.mktime(time.strptime(...))",
            "m_userdata = time.mktime(time.strptime('01-01-2024 00:00:00','%d-%m-%Y %H:%M:%S')) == 1704067200",
            json!({}),
            json!({"m_userdata": true}),
        ),
        row(
            "struct_time fields",
            "t = time.strptime('31-12-2023 23:59:58', '%d-%m-%Y %H:%M:%S')\n\
m_userdata = [t[0], t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday, t.tm_yday, len(t)]",
            json!({}),
            json!({"m_userdata": [2023, 12, 31, 23, 59, 58, 6, 365, 9]}),
        ),
        row(
            "gmtime, localtime, strftime",
            "m_userdata = [time.strftime('%Y-%m-%d %H:%M', time.gmtime(0)), time.strftime('%H:%M'), time.localtime()[3]]",
            json!({}),
            json!({"m_userdata": ["1970-01-01 00:00", "01:00", 1]}),
        ),
        row(
            "m_opt_advice()",
            "adv = m_opt_advice()\nm_userdata = [adv['valid'] is False, adv['phase'], adv['vmnumber'], adv['confident']]",
            json!({}),
            json!({"m_userdata": [true, "disabled", 0, false]}),
        ),
        row(
            "outputs pass through untouched",
            "x = 1",
            json!({"m_container_count": 2, "m_node_count": 3, "m_nodes_todrop": ["a"], "m_userdata": {"k": [1.5, null]}}),
            json!({"m_container_count": 2, "m_node_count": 3, "m_nodes_todrop": ["a"], "m_userdata": {"k": [1.5, null]}}),
        ),
        row("inputs a rule cannot name are skipped", "m_node_count = OK", json!({"bad-name": 1, "None": 2, "OK": 3}), json!({"m_node_count": 3})),
        row(
            "tuples and sets come back as lists, dict keys as strings",
            "m_userdata = {'t': (1, 2), 's': {3}, 1: 'one', None: 0}",
            json!({}),
            json!({"m_userdata": {"t": [1, 2], "s": [3], "1": "one", "null": 0}}),
        ),
        row("an empty rule", "", json!({"m_node_count": 4}), json!({"m_node_count": 4})),
        row("CRLF line endings", "if X:\r\n  m_node_count = 9\r\n", json!({"X": 1}), json!({"m_node_count": 9})),
    ]
}

#[tokio::test]
async fn every_construct_micado_rules_use() {
    let worker = worker();
    let mut problems = Vec::new();
    let rows = construct_rows();
    for r in &rows {
        let got = worker.evaluate(request(r.rule, r.inputs.clone())).await;
        problems.extend(check(r.what, &got, &r.outputs, r.printed));
    }
    assert!(problems.is_empty(), "{} of {} rows failed:\n{}", problems.len(), rows.len(), problems.join("\n"));
}

struct RealCase {
    file: &'static str,
    inputs: Value,
    outputs: Value,
    printed: Option<&'static [&'static str]>,
}

fn fixture(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/micado_rules").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The rule is everything after the header's "# ---" line, byte for byte.
    let (_, rule) = text.split_once("# ---\n").unwrap_or_else(|| panic!("{file}: no header"));
    rule.to_owned()
}

/// Inputs every policy gets, overridden per case.
fn base(extra: Value) -> Value {
    let mut inputs = json!({
        "m_container_count": 1, "m_node_count": 1, "m_nodes_todrop": null, "m_userdata": null,
        "m_nodes": ["n1", "n2"], "m_time_since_node_count_changed": 300,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        inputs[k] = v.clone();
    }
    inputs
}

fn real_cases() -> Vec<RealCase> {
    let cq = |extra: Value| {
        let mut v = base(json!({"ITEMS": 30, "AET": 10, "REMAININGTIME": 100, "MAXCONTAINERS": 10}));
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        v
    };
    let nginx = |extra: Value| {
        let mut v = base(json!({
            "TIME": 1000, "m_node_count": 2, "m_container_count": 2, "minContScaleInterval": 60,
            "minNodeScaleInterval": 120, "REQUESTSPERCONT": 50, "maxRPCth": 40, "minRPCth": 10, "CONTSPERNODE": 3,
        }));
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        v
    };
    let spikes = json!([
        {"bt": "01-01-2024 00:00:00", "et": "01-01-2024 06:00:00", "min": 50, "max": 60},
        {"bt": "02-01-2024 00:00:00", "et": "02-01-2024 06:00:00", "min": 5, "max": 10},
    ]);
    vec![
        // required = ceil(10 / (100/30)) = ceil(3.0) = 3; min(3, 2 nodes * 5) = 3.
        RealCase {
            file: "080220ca_cqueue_containers.py",
            inputs: cq(json!({})),
            outputs: json!({"m_container_count": 3}),
            printed: Some(&[]),
        },
        // REMAININGTIME 0: MAXCONTAINERS 10; min(10, 10) = 10.
        RealCase {
            file: "080220ca_cqueue_containers.py",
            inputs: cq(json!({"REMAININGTIME": 0})),
            outputs: json!({"m_container_count": 10}),
            printed: None,
        },
        RealCase {
            file: "080220ca_cqueue_containers.py",
            inputs: cq(json!({"ITEMS": 0})),
            outputs: json!({"m_container_count": 0}),
            printed: None,
        },
        // 1000 - 900 > 60 and 50 > 40 and 2 < 2*3: one more container, remembered.
        RealCase {
            file: "0f9c31e1_nginx_containers.py",
            inputs: nginx(json!({"m_userdata": {"container_count": 2, "time": 900}})),
            outputs: json!({"m_container_count": 3, "m_userdata": {"container_count": 3, "time": 1000}}),
            printed: Some(&[]),
        },
        // First run: m_userdata starts as {1, TIME}; 1000 - 1000 is not > 60: no change.
        RealCase {
            file: "0f9c31e1_nginx_containers.py",
            inputs: nginx(json!({})),
            outputs: json!({"m_container_count": 2, "m_userdata": {"container_count": 1, "time": 1000}}),
            printed: None,
        },
        // 5 < 10 and 3 > 1: one container fewer.
        RealCase {
            file: "0f9c31e1_nginx_containers.py",
            inputs: nginx(
                json!({"m_userdata": {"container_count": 3, "time": 900}, "REQUESTSPERCONT": 5, "m_container_count": 3}),
            ),
            outputs: json!({"m_container_count": 2, "m_userdata": {"container_count": 2, "time": 1000}}),
            printed: None,
        },
        RealCase {
            file: "3111dc12_cqueue_containers_print.py",
            inputs: cq(json!({})),
            outputs: json!({"m_container_count": 3}),
            printed: Some(&[
                "Length of queue: 30",
                "Number of required containers: 3",
                "Number of requested containers: 3",
            ]),
        },
        // Now is 01-01-2024 01:00 UTC: inside the first spike: min(max(40, 50), 60) = 50. Input
        // dicts reach the rule with sorted keys (JSON objects here are sorted maps).
        RealCase {
            file: "336aaedd_known_spikes.py",
            inputs: base(json!({"spikes": spikes})),
            outputs: json!({"m_node_count": 50}),
            printed: Some(&[
                "Start of scaling algorithm...",
                "calculated m_node_count: 40",
                "current time epoch: 1704070800",
                "one spike: {'bt': '01-01-2024 00:00:00', 'et': '01-01-2024 06:00:00', 'max': 60, 'min': 50}",
                "  btepoch: 1704067200",
                "  etepoch: 1704088800",
                "  inspike: True",
                "one spike: {'bt': '02-01-2024 00:00:00', 'et': '02-01-2024 06:00:00', 'max': 10, 'min': 5}",
                "  btepoch: 1704153600",
                "  etepoch: 1704175200",
                "  inspike: False",
                "finalised m_node_count: 50",
                "End of scaling algorithm.",
            ]),
        },
        // Not completed: ITEMS = TOTALJOBS = 20; ceil(10 / ((200 - 2) / 20)) = ceil(1.01) = 2 > 1.
        RealCase {
            file: "52646665_jqueuer_nodes.py",
            inputs: base(
                json!({"JOBSFAIL": null, "COMPLETED": 0, "CALC_AET": 12, "TOTALJOBS": 20, "ITEMS": 5, "AET": 10, "REMAININGTIME": 200}),
            ),
            outputs: json!({"m_node_count": 2}),
            printed: Some(&[]),
        },
        // Completed and 400 s late with 25 + 0 > 20 jobs done: no nodes.
        RealCase {
            file: "52646665_jqueuer_nodes.py",
            inputs: base(
                json!({"JOBSFAIL": 0, "COMPLETED": 25, "CALC_AET": 12, "TOTALJOBS": 20, "ITEMS": 5, "AET": 10, "REMAININGTIME": -400}),
            ),
            outputs: json!({"m_node_count": 0}),
            printed: None,
        },
        // reqconts 3, reqnodes ceil(3/5) = 1 < 3 - 1: one node fewer.
        RealCase {
            file: "8b8068c7_cqueue_nodes_print.py",
            inputs: cq(json!({"m_node_count": 3})),
            outputs: json!({"m_node_count": 2}),
            printed: Some(&["Number of required nodes: 1", "Number of requested nodes: 2"]),
        },
        // reqconts ceil(10 / (50/100)) = 20, reqnodes 4 > 1: one node more.
        RealCase {
            file: "a9048a48_cqueue_nodes.py",
            inputs: cq(json!({"ITEMS": 100, "REMAININGTIME": 50, "m_node_count": 1})),
            outputs: json!({"m_node_count": 2}),
            printed: Some(&[]),
        },
        // REQUESTS ceil(42/5) = 9, reqconts min(9, 8) = 8, reqnodes 8/4 = 2.0 (true division) > 1.
        RealCase {
            file: "b3c2f270_app_c_nodes.py",
            inputs: base(json!({"REQUESTS": 42, "MAXCONTAINERS": 8})),
            outputs: json!({"m_node_count": 2}),
            printed: Some(&["Number of required nodes: 2.0", "Number of requested nodes: 2"]),
        },
        // 6 containers == 2 nodes * 3: one node more.
        RealCase {
            file: "b7f08924_nginx_nodes.py",
            inputs: nginx(json!({"m_userdata": {"container_count": 6, "time": 900}})),
            outputs: json!({"m_node_count": 3, "m_userdata": {"container_count": 6, "time": 900}}),
            printed: Some(&[]),
        },
        // Only readers left: drop the idle workers not dropped before.
        RealCase {
            file: "b8db9a36_saker_nodes.py",
            inputs: base(json!({
                "ITEMS_W": 0, "ITEMS_R": 5, "IDLEWORKERS": ["mw-node1", "mw-node2", "other"], "MWID_prefix": "mw-",
                "m_userdata": ["node1"], "m_node_count": 3, "MINNODES": 1, "REMAININGTIME": 100, "ERD": 5,
            })),
            outputs: json!({"m_node_count": 3, "m_nodes_todrop": ["node2"], "m_userdata": ["node1", "node2"]}),
            printed: Some(&[
                "ITEMS_W:0",
                "ITEMS_R:5",
                "ITEMS_W=0 and ITEMS_R>0",
                "IDLEWORKERS ['mw-node1', 'mw-node2', 'other']",
                "REALIDLEWORKERS: ['node1', 'node2']",
                "NODES TO DROP ['node2']",
                "NEW number of requested nodes:3",
            ]),
        },
        // Writers waiting: ceil(30 / (100/10)) = 3, min(3, 12) = 3 >= 2.
        RealCase {
            file: "b8db9a36_saker_nodes.py",
            inputs: base(json!({
                "ITEMS_W": 10, "ITEMS_R": 2, "IDLEWORKERS": null, "MWID_prefix": "mw-", "m_node_count": 2,
                "MINNODES": 1, "REMAININGTIME": 100, "ERD": 30,
            })),
            outputs: json!({"m_node_count": 3, "m_nodes_todrop": null, "m_userdata": []}),
            printed: Some(&[
                "ITEMS_W:10",
                "ITEMS_R:2",
                "ITEMS_W>0",
                "REQNODES (1): 3",
                "REQNODES (2): 3",
                "NEW number of requested nodes:3",
            ]),
        },
        // REQUESTS 9, required min(9, 8) = 8, min(8, 2 nodes * 4) = 8.
        RealCase {
            file: "d014c07c_app_c_containers.py",
            inputs: base(json!({"REQUESTS": 42, "MAXCONTAINERS": 8})),
            outputs: json!({"m_container_count": 8}),
            printed: Some(&[
                "Number of active connections: 42",
                "Number of required containers: 8",
                "Number of requested containers: 8",
            ]),
        },
        // One node: min(3, 1 * 5) = 3.
        RealCase {
            file: "fd84deb4_app_b_containers.py",
            inputs: cq(json!({"m_nodes": ["n1"]})),
            outputs: json!({"m_container_count": 3}),
            printed: Some(&[
                "Length of queue: 30",
                "Number of required containers: 3",
                "Number of requested containers: 3",
            ]),
        },
        RealCase {
            file: "ffe0ccca_optimiser_advice.py",
            inputs: base(json!({})),
            outputs: json!({"m_node_count": 1, "m_container_count": 1}),
            printed: Some(&[
                "Start of scaling algorithm...",
                "  ADVICE.valid: False",
                "  ADVICE.phase: disabled",
                "  ADVICE.vmnum: 0",
                "  ADVICE.confident: False",
                "  ADVICE.errmsg: optimizer not enabled in fogmesh",
                "End of scaling algorithm.",
            ]),
        },
    ]
}

#[tokio::test]
async fn the_real_micado_rules_run_unchanged() {
    let worker = worker();
    let cases = real_cases();
    let mut files: Vec<&str> = cases.iter().map(|c| c.file).collect();
    files.dedup();
    assert_eq!(files.len(), 13, "every distinct real rule has a case");
    let mut problems = Vec::new();
    for case in &cases {
        let rule = fixture(case.file);
        if let Err(e) = check_syntax(&rule) {
            problems.push(format!("{}: check_syntax: {e}", case.file));
        }
        let got = worker.evaluate(request(&rule, case.inputs.clone())).await;
        problems.extend(check(case.file, &got, &case.outputs, case.printed));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Time per evaluation of the real rules, in this process (the rules are
/// known to be safe), and the same answers as through the worker.
#[test]
fn real_rules_time_per_evaluation() {
    const ROUNDS: usize = 100;
    let cases = real_cases();
    let mut seen = std::collections::BTreeSet::new();
    let mut total = Duration::ZERO;
    let mut evaluations = 0u32;
    let mut report = Vec::new();
    for case in &cases {
        if !seen.insert(case.file) {
            continue;
        }
        let req = request(&fixture(case.file), case.inputs.clone());
        let problems = check(case.file, &evaluate_in_process(&req), &case.outputs, case.printed);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let start = Instant::now();
        for _ in 0..ROUNDS {
            let _ = std::hint::black_box(evaluate_in_process(std::hint::black_box(&req)));
        }
        let took = start.elapsed();
        total += took;
        evaluations += ROUNDS as u32;
        report.push(format!("{}: {:.1} us", case.file, took.as_secs_f64() * 1e6 / ROUNDS as f64));
    }
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    eprintln!(
        "monty, {} real rules in-process ({profile} build): mean {:.1} us per evaluation (parse + run)\n  {}",
        seen.len(),
        total.as_secs_f64() * 1e6 / f64::from(evaluations),
        report.join("\n  ")
    );
}

#[tokio::test]
async fn runaway_loops_time_out_and_the_worker_goes_on() {
    let worker = worker();
    let start = Instant::now();
    let e = worker.evaluate(request("print('spinning')\nwhile True: pass", json!({}))).await.expect_err("times out");
    assert_eq!(e.kind, RuleErrorKind::Timeout, "{e}");
    assert_eq!(e.printed, ["spinning"]);
    assert!(start.elapsed() < Duration::from_secs(2), "stopped by the VM at its limit: {:?}", start.elapsed());
    // Catching it does not help.
    let e = worker
        .evaluate(request("try:\n  while True: pass\nexcept BaseException:\n  m_node_count = 1", json!({})))
        .await;
    assert_eq!(e.map_err(|e| e.kind), Err(RuleErrorKind::Timeout));
    expect_ok(&worker, "m_node_count = N + 1").await;
}

#[tokio::test]
async fn memory_bombs_are_stopped_and_the_worker_goes_on() {
    let worker = worker();
    for bomb in [
        "x = [0] * 10**10",
        "l = []\nwhile True:\n  l.append('x' * 1000)",
        "d = {}\ni = 0\nwhile True:\n  d[i] = [i] * 100\n  i += 1",
        "s = 'ab'\nwhile True:\n  s = s + s",
    ] {
        let e = worker.evaluate(request(bomb, json!({}))).await.expect_err("refused");
        assert_eq!(e.kind, RuleErrorKind::Memory, "{bomb:?}: {e}");
        expect_ok(&worker, "m_node_count = N + 1").await;
    }
}

#[tokio::test]
async fn deep_recursion_is_a_recursion_error_at_its_line() {
    let worker = worker();
    let e =
        worker.evaluate(request("x = 1\ndef f(n):\n  return f(n + 1)\nf(0)", json!({}))).await.expect_err("too deep");
    assert_eq!((e.kind, e.line), (RuleErrorKind::Recursion, Some(3)), "{e}");
    assert!(e.message.starts_with("RecursionError"), "{e}");
    expect_ok(&worker, "m_node_count = N + 1").await;
}

#[tokio::test]
async fn syntax_and_name_errors_name_the_rule_line() {
    let worker = worker();
    let e = worker.evaluate(request("x = 1\ny = (\nz = 3", json!({}))).await.expect_err("syntax");
    assert_eq!((e.kind, e.line), (RuleErrorKind::Syntax, Some(3)), "{e}");
    assert!(e.message.starts_with("SyntaxError"), "{e}");
    assert_eq!(
        check_syntax("x = 1\ny = (\nz = 3").map_err(|e| (e.kind, e.line)),
        Err((RuleErrorKind::Syntax, Some(3)))
    );

    let e = worker.evaluate(request("x = 1\nif x:\n  m_node_count = TIME + 1", json!({}))).await.expect_err("no TIME");
    assert_eq!((e.kind, e.line), (RuleErrorKind::Runtime, Some(3)));
    assert_eq!(e.message, "NameError: name 'TIME' is not defined");
    assert_eq!(e.to_string(), "line 3: NameError: name 'TIME' is not defined");

    // A NameError is an ordinary exception: a rule may catch it, as in Python.
    let got =
        worker.evaluate(request("try:\n  v = UNSET\nexcept NameError:\n  v = 7\nm_node_count = v", json!({}))).await;
    assert_eq!(got.map(|o| o.outputs["m_node_count"].clone()), Ok(json!(7)));

    // Errors raised by the prelude's helpers point at the rule's line.
    let e = worker.evaluate(request("\n\nt = time.strptime('2024', '%d-%m')", json!({}))).await.expect_err("bad date");
    assert_eq!((e.kind, e.line), (RuleErrorKind::Runtime, Some(3)), "{e}");
    assert_eq!(e.message, "ValueError: time data '2024' does not match format '%d-%m'");

    let e = worker.evaluate(request("print('before')\nx = 1 / 0", json!({}))).await.expect_err("division");
    assert_eq!((e.kind, e.line, e.printed.clone()), (RuleErrorKind::Runtime, Some(2), vec!["before".to_owned()]));
    assert!(e.message.starts_with("ZeroDivisionError"), "{e}");
    expect_ok(&worker, "m_node_count = N + 1").await;
}

#[tokio::test]
async fn printing_a_megabyte_is_cut_at_the_limit() {
    let worker = worker();
    for rule in ["for i in range(20000):\n  print('x' * 100)", "print('y' * 1048576)"] {
        let got = worker.evaluate(request(rule, json!({}))).await.expect("runs");
        let bytes: usize = got.printed.iter().map(|l| l.len() + 1).sum();
        let limit = RuleLimits::default().max_output_bytes as usize;
        assert!(bytes <= limit + 200, "{bytes} bytes kept");
        assert!(got.printed.last().is_some_and(|l| l.starts_with("[output truncated")), "{:?}", got.printed.last());
        expect_ok(&worker, "m_node_count = N + 1").await;
    }
}

#[tokio::test]
async fn outputs_that_cannot_be_kept_are_errors() {
    let worker = worker();
    for (rule, message) in [
        ("m_node_count = float('nan')", "m_node_count is nan; an output must be a finite number"),
        (
            "def f():\n  return 1\nm_userdata = {'f': f}",
            "m_userdata cannot be kept: it contains an object that is not data: <function",
        ),
        ("m_nodes_todrop = [len]", "m_nodes_todrop cannot be kept: it contains a function"),
    ] {
        let e = worker.evaluate(request(rule, json!({}))).await.expect_err("refused");
        assert_eq!(e.kind, RuleErrorKind::Runtime, "{e}");
        assert!(e.message.starts_with(message), "{e}");
    }
    // Nested too deep for JSON: refused, or at worst the worker dies; never the caller.
    let e = worker
        .evaluate(request("l = []\nfor i in range(100000):\n  l = [l]\nm_userdata = l", json!({})))
        .await
        .expect_err("too deep");
    assert!(matches!(e.kind, RuleErrorKind::Runtime | RuleErrorKind::Crashed), "{e}");
    expect_ok(&worker, "m_node_count = N + 1").await;
}

#[tokio::test]
async fn no_files_network_or_environment() {
    let worker = worker();
    for rule in ["open('/etc/passwd').read()", "import os\nos.getenv('HOME')", "import time"] {
        let e = worker.evaluate(request(rule, json!({}))).await.expect_err("refused");
        assert!(matches!(e.kind, RuleErrorKind::Runtime | RuleErrorKind::Syntax), "{rule:?}: {e}");
    }
    expect_ok(&worker, "m_node_count = N + 1").await;
}

#[tokio::test]
async fn an_abandoned_request_does_not_leak_into_the_next() {
    let worker = worker();
    let slow =
        tokio::time::timeout(Duration::from_millis(50), worker.evaluate(request("while True: pass", json!({})))).await;
    assert!(slow.is_err(), "the caller gave up");
    expect_ok(&worker, "m_node_count = N + 1").await;
}

#[tokio::test]
async fn concurrent_callers_each_get_their_own_answer() {
    fn shareable<T: Send + Sync>() {}
    shareable::<RuleWorker>();
    assert_eq!(
        RuleLimits::default(),
        RuleLimits { max_duration_ms: 200, max_memory_bytes: 32 << 20, max_recursion: 200, max_output_bytes: 64 << 10 }
    );
    let worker = Arc::new(worker());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let worker = worker.clone();
            tokio::spawn(async move { (i, worker.evaluate(request("m_node_count = N * 2", json!({"N": i}))).await) })
        })
        .collect();
    for task in tasks {
        let (i, got) = task.await.expect("task");
        assert_eq!(got.map(|o| o.outputs["m_node_count"].clone()), Ok(json!(i * 2)));
    }
}

/// Workers that hang or die are reported and replaced.
#[tokio::test]
async fn hung_and_dead_workers_are_reported() {
    let limits = RuleLimits { max_duration_ms: 100, ..RuleLimits::default() };
    let hung = RuleWorker::new(PathBuf::from("/bin/sh"), vec!["-c".into(), "sleep 30".into()]);
    let start = Instant::now();
    let e = hung.evaluate(RuleRequest { limits, ..request("x = 1", json!({})) }).await.expect_err("no answer");
    assert_eq!(e.kind, RuleErrorKind::Timeout, "{e}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());

    let oom = RuleWorker::new(PathBuf::from("/bin/sh"), vec!["-c".into(), "read line; exit 65".into()]);
    let e = oom.evaluate(request("x = 1", json!({}))).await.expect_err("died");
    assert_eq!(e.kind, RuleErrorKind::Memory, "{e}");

    let crash =
        RuleWorker::new(PathBuf::from("/bin/sh"), vec!["-c".into(), "read line; echo boom >&2; kill -SEGV $$".into()]);
    let e = crash.evaluate(request("x = 1", json!({}))).await.expect_err("died");
    assert_eq!(e.kind, RuleErrorKind::Crashed, "{e}");
    assert!(e.message.contains("signal 11") && e.message.contains("boom"), "{e}");

    let missing = RuleWorker::new(PathBuf::from("/nonexistent/fogmesh-rule-worker"), Vec::new());
    let e = missing.evaluate(request("x = 1", json!({}))).await.expect_err("cannot start");
    assert_eq!(e.kind, RuleErrorKind::Internal, "{e}");
}
