//! The reconciler against the real local Docker engine, with real
//! containers from deploy/images (built offline from busybox).
//!
//! Each test uses its own node name, so the tests run in parallel on one
//! engine, and removes its containers at the end (also when it fails).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bollard::models::ContainerInspectResponse;
use bollard::Docker;
use fogmesh_agent::reconciler::{container_name, Owner, Reconciler};
use fogmesh_common::wire::{
    ContainerSpec, ContainerState, ContainerStatus, MountSource, MountSpec, PortSpec, Probe, ProbeAction, Protocol,
};
use tokio::sync::Notify;

const IMAGE: &str = "fogmesh/busybox:test";

fn build_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/images/build.sh");
        let out = Command::new("bash").arg(&script).output().expect("run deploy/images/build.sh");
        assert!(
            out.status.success(),
            "build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Removes everything a test left behind, even when it panicked.
struct Cleanup {
    nodes: Vec<String>,
    containers: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for node in &self.nodes {
            for id in owned_ids(node) {
                let _ = Command::new("docker").args(["rm", "-f", "-v", &id]).output();
            }
        }
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", "-v", c]).output();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Per-test node name and scratch folder.
fn setup(test: &str, nodes: &[&str]) -> (Vec<String>, PathBuf, Cleanup) {
    build_images();
    let pid = std::process::id();
    let names: Vec<String> = nodes.iter().map(|n| format!("{n}-{test}-{pid}")).collect();
    let dir = std::env::temp_dir().join(format!("fm-reconciler-{test}-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    let cleanup = Cleanup { nodes: names.clone(), containers: vec![], dirs: vec![dir.clone()] };
    (names, dir, cleanup)
}

/// A spec keyed `app1.WORKLOAD.1`, running `sleep` forever.
fn spec(workload: &str) -> ContainerSpec {
    ContainerSpec {
        name: format!("app1.{workload}.1"),
        app_id: "app1".into(),
        app_name: "one".into(),
        workload: workload.into(),
        replica: 1,
        image: IMAGE.into(),
        command: vec![],
        args: vec![],
        env: vec![],
        ports: vec![],
        mounts: vec![],
        cpu_millis: None,
        memory_bytes: None,
        privileged: false,
        host_network: false,
        working_dir: None,
        labels: vec![],
        liveness: None,
        readiness: None,
        pod_network: None,
    }
}

/// The Docker name of the container of this very version of `s`.
fn cname(node: &str, s: &ContainerSpec) -> String {
    container_name(node, s, &s.spec_hash())
}

async fn connect(node: &str, dir: &Path, bind_ip: Option<&str>) -> Reconciler {
    let owner = Owner { node: node.into(), bind_ip: bind_ip.map(|ip| ip.parse().unwrap()), extra_labels: vec![] };
    Reconciler::connect(owner, dir, Arc::new(Notify::new())).await.expect("connect").with_rollback_window(Duration::from_secs(2))
}

async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker version negotiation")
}

fn owned_ids(node: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", &format!("label=fogmesh.node={node}")])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

async fn inspect(docker: &Docker, name: &str) -> Option<ContainerInspectResponse> {
    docker.inspect_container(name, None).await.ok()
}

async fn id_of(docker: &Docker, name: &str) -> String {
    inspect(docker, name).await.and_then(|i| i.id).unwrap_or_else(|| panic!("container {name} does not exist"))
}

async fn is_running(docker: &Docker, name: &str) -> bool {
    inspect(docker, name).await.and_then(|i| i.state).and_then(|s| s.running) == Some(true)
}

fn by_name<'a>(statuses: &'a [ContainerStatus], name: &str) -> &'a ContainerStatus {
    statuses.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no status for {name}: {statuses:?}"))
}

/// Reconciles every 100 ms until every desired container runs its spec.
async fn reconcile_until_running(rec: &mut Reconciler, desired: &[ContainerSpec]) -> Vec<ContainerStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = rec.reconcile(Some(desired)).await;
        if statuses.iter().all(|s| s.runs_desired()) {
            return statuses;
        }
        assert!(Instant::now() < deadline, "containers did not all run within 10 s: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reconciles until `done` holds for the statuses, or panics after `secs`.
async fn reconcile_until(rec: &mut Reconciler, desired: &[ContainerSpec], secs: u64, done: impl Fn(&[ContainerStatus]) -> bool) -> Vec<ContainerStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let statuses = rec.reconcile(Some(desired)).await;
        if done(&statuses) {
            return statuses;
        }
        assert!(Instant::now() < deadline, "not reached within {secs} s: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reconciles to nothing and checks the node has no containers left.
async fn remove_all(rec: &mut Reconciler, node: &str) {
    assert!(rec.reconcile(Some(&[])).await.is_empty());
    assert_eq!(owned_ids(node), Vec::<String>::new(), "containers of {node} left behind");
}

/// Sorted `fogmesh.name` labels of the given containers.
async fn names_of(docker: &Docker, ids: Vec<String>) -> Vec<String> {
    let mut names = Vec::new();
    for id in ids {
        let info = inspect(docker, &id).await.expect("inspect");
        let labels: HashMap<String, String> = info.config.and_then(|c| c.labels).unwrap_or_default();
        names.push(labels.get("fogmesh.name").cloned().unwrap_or_default());
    }
    names.sort();
    names
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn creates_containers_with_their_settings_and_leaves_them_alone() {
    let (nodes, dir, _cleanup) = setup("create", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir.join("data"), Some("127.0.0.1")).await;
    assert!(rec.runtime_version().await.expect("version").starts_with("docker "));

    let host_dir = dir.join("host/does/not/exist/yet");
    let port = free_port();
    let mut web = spec("web");
    web.env = vec![("GREETING".into(), "hello world".into())];
    web.ports = vec![PortSpec { container_port: 8080, host_port: Some(port), protocol: Protocol::Tcp }];
    web.memory_bytes = Some(64 * 1024 * 1024);
    web.cpu_millis = Some(250);
    web.labels = vec![("team".into(), "edge".into())];
    web.mounts = vec![
        MountSpec { source: MountSource::HostPath(host_dir.to_string_lossy().into()), target: "/data".into() },
        MountSpec { source: MountSource::EmptyDir, target: "/scratch".into() },
        MountSpec {
            source: MountSource::ConfigMap(vec![("motd".into(), "from a config map".into())]),
            target: "/etc/fm".into(),
        },
    ];
    web.command = vec!["/bin/sh".into(), "-c".into()];
    web.args = vec!["echo \"$GREETING\" > /data/env; cat /etc/fm/motd > /data/motd; exec sleep 3600".into()];

    let first = rec.reconcile(Some(std::slice::from_ref(&web))).await;
    assert_eq!(by_name(&first, "app1.web.1").last_error, None, "{first:?}");
    let statuses = reconcile_until_running(&mut rec, std::slice::from_ref(&web)).await;
    assert_eq!(statuses[0].restarts, 0);
    assert_eq!(statuses[0].app_id, "app1");
    assert_eq!(statuses[0].running_spec.as_deref(), Some(web.spec_hash().as_str()));

    let name = cname(node, &web);
    assert!(name.starts_with(&format!("fm-{node}-one-web-1-")), "{name}");
    let info = inspect(&docker, &name).await.expect("container exists");
    let config = info.config.clone().expect("config");
    assert!(config.env.unwrap_or_default().contains(&"GREETING=hello world".to_string()));
    assert_eq!(config.entrypoint, Some(web.command.clone()));
    assert_eq!(config.cmd, Some(web.args.clone()));
    let labels = config.labels.unwrap_or_default();
    assert_eq!(labels.get("fogmesh.node"), Some(node));
    assert_eq!(labels.get("fogmesh.name").map(String::as_str), Some("app1.web.1"));
    assert_eq!(labels.get("fogmesh.app").map(String::as_str), Some("app1"));
    assert_eq!(labels.get("fogmesh.app-name").map(String::as_str), Some("one"));
    assert_eq!(labels.get("team").map(String::as_str), Some("edge"));
    assert_eq!(labels.get("fogmesh.spec"), Some(&web.spec_hash()));
    assert_eq!(labels.get("fogmesh.host-ports"), Some(&format!("{port}/tcp")));

    let hc = info.host_config.clone().expect("host config");
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(hc.nano_cpus, Some(250_000_000));
    let bindings = hc.port_bindings.unwrap_or_default();
    let b = bindings.get("8080/tcp").cloned().flatten().expect("binding for 8080/tcp");
    assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(b[0].host_port.as_deref(), Some(port.to_string().as_str()));

    let mounts = info.mounts.clone().unwrap_or_default();
    let at = |dst: &str| mounts.iter().find(|m| m.destination.as_deref() == Some(dst)).cloned();
    let data = at("/data").expect("/data mount");
    assert_eq!(data.typ.as_deref(), Some("bind"));
    assert_eq!(data.source.as_deref(), Some(host_dir.to_string_lossy().as_ref()));
    assert_eq!(at("/scratch").expect("/scratch mount").typ.as_deref(), Some("volume"));
    let cm = at("/etc/fm").expect("/etc/fm mount");
    assert_eq!(cm.rw, Some(false));

    // The container really sees its env, its host folder and its config map.
    assert_eq!(wait_for_file(&host_dir.join("env")).await, "hello world\n");
    assert_eq!(wait_for_file(&host_dir.join("motd")).await, "from a config map");

    // A second pass with the same spec touches nothing.
    let started_at = info.state.and_then(|s| s.started_at);
    let again = rec.reconcile(Some(std::slice::from_ref(&web))).await;
    assert_eq!(again[0].state, ContainerState::Running);
    let info2 = inspect(&docker, &name).await.expect("still exists");
    assert_eq!(info2.id, info.id);
    assert_eq!(info2.state.and_then(|s| s.started_at), started_at);

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn a_changed_spec_replaces_only_its_container_new_before_old() {
    let (nodes, dir, _cleanup) = setup("update", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, None).await;

    let mut a = spec("a");
    a.env = vec![("V".into(), "1".into())];
    let b = spec("b");
    reconcile_until_running(&mut rec, &[a.clone(), b.clone()]).await;
    let (a_old, b_id) = (id_of(&docker, &cname(node, &a)).await, id_of(&docker, &cname(node, &b)).await);

    a.env = vec![("V".into(), "2".into())];
    reconcile_until_running(&mut rec, &[a.clone(), b.clone()]).await;
    let a_info = inspect(&docker, &cname(node, &a)).await.expect("new a exists");
    assert!(a_info.config.and_then(|c| c.env).unwrap_or_default().contains(&"V=2".to_string()));
    // Make before break: the old version still runs while the new one proves itself.
    assert!(is_running(&docker, &a_old).await, "the old version went before the new one settled");
    assert_eq!(id_of(&docker, &cname(node, &b)).await, b_id, "b was replaced");
    // After the rollback window the old version goes.
    reconcile_until(&mut rec, &[a.clone(), b.clone()], 10, |_| owned_ids(node).len() == 2).await;
    assert!(inspect(&docker, &a_old).await.is_none(), "old a is still there");

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn an_update_to_a_missing_image_keeps_the_old_version_serving() {
    let (nodes, dir, _cleanup) = setup("badimage", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, None).await;
    let good = spec("web");
    reconcile_until_running(&mut rec, std::slice::from_ref(&good)).await;
    let old = id_of(&docker, &cname(node, &good)).await;

    let mut bad = good.clone();
    bad.image = "nosuch:tag".into();
    let st = reconcile_until(&mut rec, std::slice::from_ref(&bad), 25, |s| s[0].state == ContainerState::Failed).await;
    let err = st[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("nosuch:tag"), "{err}");
    assert_eq!(st[0].running_spec.as_deref(), Some(good.spec_hash().as_str()), "the old version is reported serving");
    assert!(!st[0].runs_desired());
    assert!(is_running(&docker, &old).await, "the old container must keep running");
    assert_eq!(owned_ids(node), vec![old.clone()]);

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn same_host_port_stops_old_first_and_brings_it_back_when_the_new_one_cannot_start() {
    let (nodes, dir, _cleanup) = setup("portswap", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, Some("127.0.0.1")).await;
    let port = free_port();
    let mut web = spec("web");
    // Stops at once on SIGTERM (a bare httpd as PID 1 would take the 10 s grace).
    web.command = vec!["/bin/sh".into(), "-c".into(), "trap 'exit 0' TERM; /bin/httpd -f -p 8080 & wait".into()];
    web.ports = vec![PortSpec { container_port: 8080, host_port: Some(port), protocol: Protocol::Tcp }];
    reconcile_until_running(&mut rec, std::slice::from_ref(&web)).await;
    let old = id_of(&docker, &cname(node, &web)).await;

    // The new version cannot start (no such executable): the old one is back.
    let mut broken = web.clone();
    broken.command = vec!["/no/such/binary".into()];
    let st = reconcile_until(&mut rec, std::slice::from_ref(&broken), 15, |s| s[0].state == ContainerState::Failed).await;
    assert!(st[0].last_error.as_deref().unwrap_or("").contains("previous version keeps running"), "{st:?}");
    assert!(is_running(&docker, &old).await, "the old version was not brought back");
    assert_eq!(st[0].running_spec.as_deref(), Some(web.spec_hash().as_str()));

    // A good new version with the same port takes over.
    let mut v2 = web.clone();
    v2.env = vec![("V".into(), "2".into())];
    reconcile_until_running(&mut rec, std::slice::from_ref(&v2)).await;
    assert!(is_running(&docker, &cname(node, &v2)).await);
    assert!(!is_running(&docker, &old).await, "old and new cannot both hold the port");

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn a_new_version_that_dies_right_after_the_update_is_rolled_back() {
    let (nodes, dir, _cleanup) = setup("rollback", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, None).await;
    let good = spec("worker");
    reconcile_until_running(&mut rec, std::slice::from_ref(&good)).await;
    let old = id_of(&docker, &cname(node, &good)).await;

    let mut crashing = good.clone();
    crashing.command = vec!["/bin/sh".into(), "-c".into(), "sleep 0.5; exit 3".into()];
    let st = reconcile_until(&mut rec, std::slice::from_ref(&crashing), 15, |s| s[0].state == ContainerState::Failed).await;
    let err = st[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("exited with code 3") && err.contains("brought back the previous version"), "{err}");
    assert!(is_running(&docker, &old).await);
    assert_eq!(owned_ids(node), vec![old]);

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn removes_only_its_own_undesired_containers() {
    let (nodes, dir, mut cleanup) = setup("removal", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, None).await;

    // Not ours: another node's container and an operator's unlabelled one.
    let pid = std::process::id();
    let other = format!("fm-test-other-node-{pid}");
    let plain = format!("fm-test-unlabelled-{pid}");
    cleanup.containers = vec![other.clone(), plain.clone()];
    for args in [
        vec!["run", "-d", "--name", &other, "--label", "fogmesh.node=other-node", IMAGE],
        vec!["run", "-d", "--name", &plain, IMAGE],
    ] {
        let out = Command::new("docker").args(&args).output().expect("docker run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    let (a, b) = (spec("a"), spec("b"));
    reconcile_until_running(&mut rec, &[a.clone(), b.clone()]).await;
    let a_id = id_of(&docker, &cname(node, &a)).await;

    let statuses = rec.reconcile(Some(std::slice::from_ref(&a))).await;
    assert_eq!(statuses.len(), 1);
    assert!(inspect(&docker, &cname(node, &b)).await.is_none(), "b was not removed");
    assert_eq!(id_of(&docker, &cname(node, &a)).await, a_id);
    assert!(is_running(&docker, &other).await, "another node's container was touched");
    assert!(is_running(&docker, &plain).await, "an unlabelled container was touched");

    remove_all(&mut rec, node).await;
    assert!(is_running(&docker, &other).await && is_running(&docker, &plain).await);
}

#[tokio::test]
async fn without_a_desired_state_it_keeps_everything_and_restarts_the_dead() {
    let (nodes, dir, _cleanup) = setup("adopt", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, None).await;
    let (a, b) = (spec("a"), spec("b"));
    reconcile_until_running(&mut rec, &[a.clone(), b.clone()]).await;

    // A new reconciler that knows nothing (lost store): removes nothing.
    let mut lost = connect(node, &dir, None).await;
    let out = Command::new("docker").args(["kill", &cname(node, &b)]).output().expect("docker kill");
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = lost.reconcile(None).await;
        assert_eq!(st.len(), 2, "{st:?}");
        if is_running(&docker, &cname(node, &a)).await && is_running(&docker, &cname(node, &b)).await {
            assert!(st.iter().any(|s| s.name == "app1.b.1"));
            break;
        }
        assert!(Instant::now() < deadline, "the killed container was not restarted: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(owned_ids(node).len(), 2);

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn a_killed_container_is_restarted_at_once() {
    let (nodes, dir, _cleanup) = setup("restart", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, None).await;

    let s = spec("worker");
    reconcile_until_running(&mut rec, std::slice::from_ref(&s)).await;
    let name = cname(node, &s);
    let id = id_of(&docker, &name).await;

    let out = Command::new("docker").args(["kill", &name]).output().expect("docker kill");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The first restart has no back-off: one pass brings it back.
    let st = rec.reconcile(Some(std::slice::from_ref(&s))).await.remove(0);
    assert_eq!(st.restarts, 1, "{st:?}");
    assert!(is_running(&docker, &name).await);
    assert_eq!(id_of(&docker, &name).await, id, "restarted, not recreated");

    // Killed again at once: the second restart waits (back-off).
    let out = Command::new("docker").args(["kill", &name]).output().expect("docker kill");
    assert!(out.status.success());
    let st = rec.reconcile(Some(std::slice::from_ref(&s))).await.remove(0);
    assert_eq!(st.state, ContainerState::Exited, "{st:?}");
    assert!(st.last_error.as_deref().unwrap_or("").contains("restarting in"), "{st:?}");
    reconcile_until_running(&mut rec, std::slice::from_ref(&s)).await;

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn a_missing_image_fails_that_container_only() {
    let (nodes, dir, _cleanup) = setup("image", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, None).await;

    let mut bad = spec("bad");
    bad.image = "fogmesh/does-not-exist:1".into();
    let good = spec("good");
    let desired = [bad.clone(), good.clone()];

    let statuses = reconcile_until(&mut rec, &desired, 25, |s| s[0].state == ContainerState::Failed && s[1].runs_desired()).await;
    let err = by_name(&statuses, "app1.bad.1").last_error.clone().unwrap_or_default();
    assert!(err.contains("fogmesh/does-not-exist:1") && err.contains("could not be pulled"), "{err}");
    assert!(is_running(&docker, &cname(node, &good)).await);
    assert_eq!(owned_ids(node).len(), 1);
    // A second pass does not pull again within a minute, and still says why.
    let again = rec.reconcile(Some(&desired)).await;
    assert_eq!(again[0].state, ContainerState::Failed);
    assert!(again[0].last_error.as_deref().unwrap_or("").contains("fogmesh/does-not-exist:1"));

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn two_agents_on_one_engine_manage_only_their_own() {
    let (nodes, dir, _cleanup) = setup("two", &["n1", "n2"]);
    let docker = docker().await;
    let mut r1 = connect(&nodes[0], &dir.join("n1"), None).await;
    let mut r2 = connect(&nodes[1], &dir.join("n2"), None).await;

    // Same spec on both nodes.
    let web = spec("web");
    let api = spec("api");
    reconcile_until_running(&mut r1, std::slice::from_ref(&web)).await;
    reconcile_until_running(&mut r2, &[web.clone(), api.clone()]).await;
    // n1 does not see n2's extra container as its own to remove.
    reconcile_until_running(&mut r1, std::slice::from_ref(&web)).await;

    assert_eq!(names_of(&docker, owned_ids(&nodes[0])).await, ["app1.web.1"]);
    assert_eq!(names_of(&docker, owned_ids(&nodes[1])).await, ["app1.api.1", "app1.web.1"]);

    let n2_ids = {
        let mut ids = owned_ids(&nodes[1]);
        ids.sort();
        ids
    };
    remove_all(&mut r1, &nodes[0]).await;
    let mut after = owned_ids(&nodes[1]);
    after.sort();
    assert_eq!(after, n2_ids, "n1 touched n2's containers");
    let statuses = r2.reconcile(Some(&[web, api])).await;
    assert!(statuses.iter().all(|s| s.state == ContainerState::Running), "{statuses:?}");

    remove_all(&mut r2, &nodes[1]).await;
}

#[tokio::test]
async fn an_unreachable_nfs_mount_is_reported_not_fatal() {
    let (nodes, dir, _cleanup) = setup("nfs", &["n"]);
    let node = &nodes[0];
    let mut rec = connect(node, &dir, None).await;

    let mut nfs = spec("nfs");
    nfs.mounts = vec![MountSpec {
        source: MountSource::Nfs { server: "127.0.0.1".into(), path: "/exports/nothing".into() },
        target: "/shared".into(),
    }];
    let ok = spec("ok");
    let statuses = rec.reconcile(Some(&[nfs.clone(), ok])).await;
    let st = by_name(&statuses, "app1.nfs.1");
    assert_eq!(st.state, ContainerState::Failed, "{statuses:?}");
    let err = st.last_error.as_deref().unwrap_or("");
    assert!(err.contains(&cname(node, &nfs)), "{err}");
    assert_ne!(by_name(&statuses, "app1.ok.1").state, ContainerState::Failed, "{statuses:?}");

    remove_all(&mut rec, node).await;
}

fn probe(action: ProbeAction) -> Probe {
    Probe { action, initial_delay_ms: 0, period_ms: 200, timeout_ms: 1000, failure_threshold: 2, success_threshold: 1 }
}

#[tokio::test]
async fn readiness_shows_and_a_failing_liveness_probe_restarts() {
    let (nodes, dir, _cleanup) = setup("probes", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, None).await;

    // Ready once /tmp/ready exists (the test makes it, not a timer: a slow
    // machine must not see it ready before the first check); alive while
    // /tmp/alive exists.
    let mut s = spec("probed");
    s.command = vec!["/bin/sh".into(), "-c".into(), "touch /tmp/alive; exec /bin/httpd -f -p 8080 -h /tmp".into()];
    s.readiness = Some(probe(ProbeAction::Exec(vec!["test".into(), "-e".into(), "/tmp/ready".into()])));
    s.liveness = Some(probe(ProbeAction::Http { port: 8080, path: "/alive".into() }));
    let desired = std::slice::from_ref(&s);
    let name = cname(node, &s);
    let exec = |args: &[&str]| {
        let out = Command::new("docker").arg("exec").arg(&name).args(args).output().expect("docker exec");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let first = reconcile_until(&mut rec, desired, 10, |st| st[0].state == ContainerState::Running).await;
    assert_eq!(first[0].ready, Some(false), "not ready before the probe passed: {first:?}");
    assert!(!first[0].runs_desired());
    exec(&["touch", "/tmp/ready"]);
    reconcile_until(&mut rec, desired, 10, |st| st[0].ready == Some(true) && st[0].runs_desired()).await;

    // Liveness fails (HTTP 404 once /tmp/alive is gone): the agent restarts it.
    exec(&["rm", "/tmp/alive"]);
    reconcile_until(&mut rec, desired, 15, |st| st[0].restarts >= 1).await;
    assert!(is_running(&docker, &name).await);

    remove_all(&mut rec, node).await;
}

/// A pass creates its new containers side by side, not one after another,
/// and one that cannot start fails alone.
#[tokio::test]
async fn one_pass_creates_its_new_containers_together_and_a_bad_one_fails_alone() {
    use bollard::query_parameters::EventsOptionsBuilder;
    use futures_util::StreamExt;

    let (nodes, dir, _cleanup) = setup("batch", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = connect(node, &dir, Some("127.0.0.1")).await;
    // A host port someone else holds: that container cannot start.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = held.local_addr().expect("addr").port();
    let mut desired: Vec<ContainerSpec> = (0..12).map(|i| spec(&format!("w{i}"))).collect();
    desired[5].ports = vec![PortSpec { container_port: 8080, host_port: Some(busy), protocol: Protocol::Tcp }];

    let filters = HashMap::from([
        ("label".to_string(), vec![format!("fogmesh.node={node}")]),
        ("type".to_string(), vec!["container".to_string()]),
    ]);
    let unix_now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let since = unix_now();
    let statuses = rec.reconcile(Some(&desired)).await;
    // Docker's events are whole seconds apart at this resolution: ask up to a second past now.
    let until = (unix_now() + 1).to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let opts = EventsOptionsBuilder::new().since(&since.to_string()).until(&until).filters(&filters).build();
    let mut events = docker.events(Some(opts));

    for (i, s) in statuses.iter().enumerate() {
        if i == 5 {
            assert_eq!(s.state, ContainerState::Failed, "{s:?}");
            assert!(s.last_error.as_deref().unwrap_or("").contains(&busy.to_string()), "names the port: {s:?}");
        } else {
            assert_eq!(s.state, ContainerState::Starting, "started in the first pass: {s:?}");
            assert!(is_running(&docker, &cname(node, &desired[i])).await, "{} runs", desired[i].name);
        }
    }
    // Docker's own record of the pass: several creates before the first start.
    let mut actions = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(5), events.next()).await {
        actions.push(e.action.unwrap_or_default());
    }
    let creates_before_first_start = actions.iter().take_while(|a| a.as_str() != "start").filter(|a| a.as_str() == "create").count();
    assert!(creates_before_first_start >= 2, "containers were created one after another: {actions:?}");
    drop(held);
    remove_all(&mut rec, node).await;
}
