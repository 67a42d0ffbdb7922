//! The face-detection pipeline of `adts/face-detection.yaml`, deployed as a
//! user would: real master, three real agents, the real images. One test,
//! in phases, because each phase builds on the running pipeline:
//! faces reach the master's PromQL API; detection goes on with the master
//! down; results made while the collector's node is cut off (iptables DROP)
//! reach it afterwards; a camera burst scales the detectors up and back;
//! frames also flow over UDP when the ADT says so.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fogmesh_tests::*;

fn number(result: &[serde_json::Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// The collector's `/status.json`, read over its bridge address so that it
/// works while its public address is cut off.
fn collector_status(cloud: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(&format!("{}/status.json", collector_url(cloud)?))?).ok()
}

/// The collector's bridge address (reachable however its public one is cut).
fn collector_url(cloud: &str) -> Option<String> {
    let c = inspect(cloud, "face-detection", "cloud-collector")?;
    let ip = c["NetworkSettings"]["IPAddress"].as_str().filter(|ip| !ip.is_empty())?.to_string();
    Some(format!("http://{ip}:8080"))
}

/// How many results the collector holds; None when it cannot be read.
fn results_count(cloud: &str) -> Option<u64> {
    collector_status(cloud).and_then(|s| s["results"].as_u64())
}

fn detectors_running(fog: &str) -> usize {
    docker(&["ps", "-q", "--filter", &format!("label=fogmesh.node={fog}"), "--filter", "label=fogmesh.workload=fog-processor"]).lines().count()
}

fn outbox(frames: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(frames.join("outbox/ready"))
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).map(|n| n.trim_end_matches(".json").to_string()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn post(url: &str) {
    let out = Command::new("curl").args(["-sf", "--max-time", "5", "-X", "POST", url]).output().expect("run curl");
    assert!(out.status.success(), "POST {url} failed: {}", text(&out.stderr));
}

#[test]
fn the_face_pipeline_detects_keeps_going_offline_delivers_after_a_cut_and_scales() {
    docker_ready();
    let dir = test_dir("face-detection");
    let mut master = Master::start(&dir);
    let pid = std::process::id();
    let (cam, fog, cloud) = (format!("fdcam{pid}"), format!("fdfog{pid}"), format!("fdcloud{pid}"));
    let (cam_ip, fog_ip, cloud_ip) = ("127.0.0.52", "127.0.0.53", "127.0.0.54");
    let _agents: Vec<Agent> = [(&cam, cam_ip), (&fog, fog_ip), (&cloud, cloud_ip)].iter().map(|(n, ip)| Agent::join_and_run(&master, n, ip)).collect();

    let (frames, results) = (dir.join("frames"), dir.join("results"));
    let collector_port = free_port();
    let (cam1, cam2) = (free_port(), free_port());
    let params = [
        format!("camera_public_ip={cam_ip}"),
        format!("fog_public_ip={fog_ip}"),
        format!("cloud_public_ip={cloud_ip}"),
        format!("camera_ports=[{cam1}, {cam2}]"),
        format!("receiver_port={}", free_port()),
        format!("collector_port={collector_port}"),
        format!("sender_metrics_port={}", free_port()),
        format!("frames_dir={}", frames.display()),
        format!("results_dir={}", results.display()),
        "scaling_interval=5s".to_string(),
    ];
    let mut submit = vec!["app".to_string(), "submit".into(), workspace().join("adts/face-detection.yaml").display().to_string(), "--timeout".into(), "120s".into()];
    for p in &params {
        submit.extend(["--param".to_string(), p.clone()]);
    }
    let started = Instant::now();
    let out = master.cli_ok(&submit.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("app face-detection is running"), "{out}");
    eprintln!("rollout: {:.1} s", started.elapsed().as_secs_f64());

    // 1. Faces from the bundled picture, counted through the master's PromQL API.
    let faces = wait_for("faces in the master's metrics", Duration::from_secs(120), || number(&master.query("sum(faces_detected_total)")).filter(|f| *f > 0.0));
    eprintln!("faces detected so far: {faces}");
    let status = wait_for("results at the collector", Duration::from_secs(60), || collector_status(&cloud).filter(|s| s["faces"].as_u64() > Some(0)));
    assert!(status["cameras"].as_array().is_some_and(|c| c.len() == 2), "both cameras' frames arrive: {status}");
    // The status page says the same.
    let page = wait_for("the status page", Duration::from_secs(10), || http_get(&format!("http://{cloud_ip}:{collector_port}/")));
    assert!(page.contains("Face detection") && page.contains("faces"), "{page}");

    // 2. The master goes down: the pipeline does not notice.
    master.kill();
    let before = results_count(&cloud).expect("the collector's count");
    wait_for("results while the master is down", Duration::from_secs(60), || results_count(&cloud).filter(|n| *n >= before + 10));
    master.restart();

    // 3. The collector's node is cut off: results wait on the fog node's
    // disk and all arrive once it is back.
    let cut = CutOff::insert(&["OUTPUT", "-d", cloud_ip, "-p", "tcp", "--dport", &collector_port.to_string(), "-j", "DROP"]);
    let buffered = wait_for("results buffered in the outbox", Duration::from_secs(60), || {
        let ids = outbox(&frames);
        (ids.len() >= 15).then_some(ids)
    });
    // Results go on being made meanwhile (more wait in the outbox), yet
    // the collector, read over its bridge address, gets none of them. Both
    // reads must succeed: an unreadable collector proves nothing.
    let stalled = results_count(&cloud).expect("the collector's count while cut off");
    wait_for("more results waiting in the outbox", Duration::from_secs(60), || (outbox(&frames).len() >= buffered.len() + 5).then_some(()));
    let now = results_count(&cloud).expect("the collector's count while cut off");
    assert!(now <= stalled + 1, "results reached the collector while it was cut off: {stalled} -> {now}");
    drop(cut);
    wait_for("the buffered results at the collector", Duration::from_secs(60), || {
        let stored = std::fs::read_to_string(results.join("results.jsonl")).unwrap_or_default();
        buffered.iter().all(|id| stored.contains(&format!("\"id\":\"{id}\""))).then_some(())
    });

    // 4. A burst from both cameras scales the detectors up; its end, down.
    assert_eq!(detectors_running(&fog), 1);
    let burst = Instant::now();
    for port in [cam1, cam2] {
        post(&format!("http://{cam_ip}:{port}/burst?fps=4&seconds=40"));
    }
    wait_for("a second detector", Duration::from_secs(90), || (detectors_running(&fog) >= 2).then_some(()));
    eprintln!("scale-up reaction: {:.1} s after the burst began", burst.elapsed().as_secs_f64());
    wait_for("back to one detector", Duration::from_secs(300), || (detectors_running(&fog) == 1).then_some(()));
    eprintln!("back to one detector {:.1} s after the burst began", burst.elapsed().as_secs_f64());
    let events = master.cli_ok(&["app", "events", "face-detection", "--last", "100"]);
    assert!(events.contains("scaled 1 -> ") && events.contains(" -> 1 (by master)"), "{events}");

    // Replicas shared the queue and no frame was stored twice.
    let status = collector_status(&cloud).expect("collector status");
    assert!(status["detectors"].as_array().is_some_and(|d| d.len() >= 2), "{status}");
    let metrics = http_get(&format!("{}/metrics", collector_url(&cloud).expect("collector address"))).unwrap_or_default();
    assert!(metrics.contains("collector_duplicates_total 0"), "{metrics}");

    // 5. The ADT's frame_protocol switches cameras and receiver to UDP
    // (frames in chunks): detection goes on.
    let mut update = submit.clone();
    update[1] = "update".into();
    update.insert(2, "face-detection".into());
    update.extend(["--param".to_string(), "frame_protocol=udp".to_string()]);
    master.cli_ok(&update.iter().map(String::as_str).collect::<Vec<_>>());
    let receiver = inspect(&fog, "face-detection", "fog-receiver").expect("receiver");
    assert!(receiver["HostConfig"]["PortBindings"].as_object().is_some_and(|p| p.keys().any(|k| k.ends_with("/udp"))), "{}", receiver["HostConfig"]);
    // Frames taken after the update can only have come through the UDP receiver.
    let updated_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    wait_for("results of frames sent over UDP", Duration::from_secs(60), || {
        let stored = std::fs::read_to_string(results.join("results.jsonl")).unwrap_or_default();
        let after = stored.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|r| r["captured_ms"].as_u64() > Some(updated_ms)).count();
        (after >= 10).then_some(())
    });
}
