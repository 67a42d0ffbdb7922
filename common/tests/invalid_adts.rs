//! Every ADT in adts/invalid/ must fail with exactly the problems its header
//! names: `# expect: TEXT` lines (all must appear in one message) closed by
//! `# at: LINE:COL` (the message's position) or by the next expect group.

use std::path::Path;

use fogmesh_common::adt::{compile, CompileOptions};

struct Expected {
    texts: Vec<String>,
    at: Option<String>,
}

fn expectations(text: &str) -> Vec<Expected> {
    let mut groups: Vec<Expected> = Vec::new();
    let mut open = false;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(t) = line.strip_prefix("# expect:") {
            if !open {
                groups.push(Expected { texts: Vec::new(), at: None });
                open = true;
            }
            groups.last_mut().unwrap().texts.push(t.trim().to_string());
        } else if let Some(at) = line.strip_prefix("# at:") {
            groups.last_mut().expect("# at: follows # expect:").at = Some(at.trim().to_string());
            open = false;
        }
    }
    groups
}

#[test]
fn each_invalid_adt_reports_exactly_its_problems() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../adts/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "expected the invalid ADT collection in {dir:?}");
    let mut failures = Vec::new();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(path).unwrap();
        let expected = expectations(&text);
        assert!(!expected.is_empty(), "{path:?} has no # expect: header");
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let problems = match compile(&text, &CompileOptions::default()) {
            Ok(_) => {
                failures.push(format!("{name}: compiled, but should fail"));
                continue;
            }
            Err(e) => e.problems,
        };
        let rendered: Vec<String> = problems.iter().map(|p| format!("{}: {}: {}", p.pos, p.subject, p.message)).collect();
        if problems.len() != expected.len() {
            failures.push(format!("{name}: expected {} problems, got {}:\n    {}", expected.len(), problems.len(), rendered.join("\n    ")));
            continue;
        }
        for (want, (got, shown)) in expected.iter().zip(problems.iter().zip(&rendered)) {
            let text_ok = want.texts.iter().all(|t| shown.contains(t.as_str()));
            let pos_ok = want.at.as_ref().is_none_or(|at| *at == got.pos.to_string());
            if !text_ok || !pos_ok {
                failures.push(format!("{name}: wanted {:?} at {:?}, got {shown}", want.texts, want.at));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
