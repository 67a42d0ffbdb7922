//! The README's quickstart, run as a newcomer would, then `burst` and
//! `stop`: it must start the pipeline without putting join tokens on
//! command lines, show faces, scale on a burst, and `stop` must remove
//! exactly what it made.

use std::process::Command;

use fogmesh_tests::*;

#[test]
fn quickstart_runs_and_stop_removes_everything_it_made() {
    docker_ready();
    let work = test_dir("quickstart").join("qs");
    let script = workspace().join("deploy/quickstart.sh");
    let run = |arg: Option<&str>| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(arg).env("FOGMESH_QUICKSTART_DIR", &work);
        cmd.env("FOGMESH_QS_API_PORT", free_port().to_string()).env("FOGMESH_QS_QUIC_PORT", free_port().to_string());
        cmd.env("FOGMESH_QS_MQTT_PORT", free_port().to_string());
        cmd.output().expect("run quickstart.sh")
    };
    // A container of someone else's on the same engine must survive `stop`.
    let bystander = format!("fm-qs-bystander-{}", std::process::id());
    docker(&["run", "-d", "--name", &bystander, "fogmesh/busybox:test"]);

    let out = run(None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "quickstart failed:\n{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("app face-detection is running"), "{stdout}");
    // Every node's container metrics reached the master.
    let metrics = stdout.split("== metrics").nth(1).unwrap_or_default();
    for node in ["camera", "fog", "cloud"] {
        assert!(metrics.contains(&format!("node=\"{node}\"")), "no metrics of {node}:\n{metrics}");
    }
    // Faces found by the detector, counted through the master.
    let faces = stdout.split("== faces").nth(1).unwrap_or_default();
    assert!(faces.contains("fog-processor"), "no faces counted:\n{faces}");
    assert!(stdout.contains("http://127.0.0.4:8080/"), "the collector's page is pointed to");

    let out = run(Some("burst"));
    let said = text(&out.stdout);
    assert!(out.status.success(), "burst failed:\n{said}\n{}", text(&out.stderr));
    assert!(said.contains("and back to 1") && said.contains("scaled 1 -> "), "the detectors did not scale up and back:\n{said}");

    let pids: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().trim().to_string())
        .collect();
    assert_eq!(pids.len(), 4, "master and three agents");
    for pid in &pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| text(&b)).unwrap_or_default();
        assert!(!cmdline.contains("fmj1."), "a join token is visible in the process list: {cmdline}");
    }
    let marker = format!("label=fogmesh.quickstart={}", work.display());
    assert_eq!(docker(&["ps", "-q", "--filter", &marker]).lines().count(), 6, "the pipeline's containers carry the marker");
    assert!(work.join("volumes/frames").is_dir(), "host folders live under the quickstart's folder");

    let out = run(Some("stop"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!work.exists(), "stop removes the state folder (CA key, admin token)");
    assert_eq!(docker(&["ps", "-aq", "--filter", &marker]), "", "stop removes the marked containers");
    for pid in &pids {
        let alive = std::fs::read(format!("/proc/{pid}/status")).map(|s| !text(&s).contains("State:\tZ")).unwrap_or(false);
        assert!(!alive, "process {pid} still runs after stop");
    }
    assert!(!docker(&["ps", "-q", "--filter", &format!("name={bystander}")]).is_empty(), "stop touched a container it did not make");
    docker(&["rm", "-f", &bystander]);
}
