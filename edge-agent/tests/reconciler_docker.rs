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

use bollard::models::ContainerInspectResponse;
use bollard::Docker;
use fogmesh_agent::reconciler::Reconciler;
use fogmesh_common::wire::{
    ContainerSpec, ContainerState, ContainerStatus, MountSource, MountSpec, PortSpec, Protocol,
};

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

fn spec(name: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        app_id: "app1".into(),
        app_name: "App one".into(),
        workload: name.into(),
        replica: 0,
        image: IMAGE.into(),
        command: vec![],
        args: vec![],
        env: vec![],
        ports: vec![],
        mounts: vec![],
        cpu_millis: None,
        memory_bytes: None,
        privileged: false,
        working_dir: None,
        labels: vec![],
    }
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

/// Reconciles every 200 ms until every desired container reports Running.
async fn reconcile_until_running(rec: &mut Reconciler, desired: &[ContainerSpec]) -> Vec<ContainerStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = rec.reconcile(desired).await;
        if statuses.iter().all(|s| s.state == ContainerState::Running) {
            return statuses;
        }
        assert!(Instant::now() < deadline, "containers did not all run within 10 s: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reconciles to nothing and checks the node has no containers left.
async fn remove_all(rec: &mut Reconciler, node: &str) {
    assert!(rec.reconcile(&[]).await.is_empty());
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
    let mut rec = Reconciler::connect(node, &dir.join("data"), Some("127.0.0.1".parse().unwrap()))
        .await
        .expect("connect");
    assert!(rec.runtime_version().await.expect("version").starts_with("docker "));

    let host_dir = dir.join("host/does/not/exist/yet");
    let port = free_port();
    let mut web = spec("app1-web");
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

    let first = rec.reconcile(std::slice::from_ref(&web)).await;
    assert_eq!(by_name(&first, "app1-web").last_error, None, "{first:?}");
    let statuses = reconcile_until_running(&mut rec, std::slice::from_ref(&web)).await;
    assert_eq!(statuses[0].restarts, 0);
    assert_eq!(statuses[0].app_id, "app1");

    let cname = format!("fm-{node}-app1-web");
    let info = inspect(&docker, &cname).await.expect("container exists");
    let config = info.config.clone().expect("config");
    assert!(config.env.unwrap_or_default().contains(&"GREETING=hello world".to_string()));
    assert_eq!(config.entrypoint, Some(web.command.clone()));
    assert_eq!(config.cmd, Some(web.args.clone()));
    let labels = config.labels.unwrap_or_default();
    assert_eq!(labels.get("fogmesh.node"), Some(node));
    assert_eq!(labels.get("fogmesh.name").map(String::as_str), Some("app1-web"));
    assert_eq!(labels.get("fogmesh.app").map(String::as_str), Some("app1"));
    assert_eq!(labels.get("team").map(String::as_str), Some("edge"));
    assert_eq!(labels.get("fogmesh.spec").map(String::len), Some(64));

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
    let again = rec.reconcile(std::slice::from_ref(&web)).await;
    assert_eq!(again[0].state, ContainerState::Running);
    let info2 = inspect(&docker, &cname).await.expect("still exists");
    assert_eq!(info2.id, info.id);
    assert_eq!(info2.state.and_then(|s| s.started_at), started_at);

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn a_changed_spec_replaces_only_its_container() {
    let (nodes, dir, _cleanup) = setup("update", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = Reconciler::connect(node, &dir, None).await.expect("connect");

    let mut a = spec("app1-a");
    a.env = vec![("V".into(), "1".into())];
    let b = spec("app1-b");
    reconcile_until_running(&mut rec, &[a.clone(), b.clone()]).await;
    let (a_name, b_name) = (format!("fm-{node}-app1-a"), format!("fm-{node}-app1-b"));
    let (a_id, b_id) = (id_of(&docker, &a_name).await, id_of(&docker, &b_name).await);

    a.env = vec![("V".into(), "2".into())];
    reconcile_until_running(&mut rec, &[a.clone(), b.clone()]).await;
    let a_info = inspect(&docker, &a_name).await.expect("a exists");
    assert_ne!(a_info.id.as_deref(), Some(a_id.as_str()), "a was not replaced");
    assert!(a_info.config.and_then(|c| c.env).unwrap_or_default().contains(&"V=2".to_string()));
    assert!(inspect(&docker, &a_id).await.is_none(), "old a is still there");
    assert_eq!(id_of(&docker, &b_name).await, b_id, "b was replaced");

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn removes_only_its_own_undesired_containers() {
    let (nodes, dir, mut cleanup) = setup("removal", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = Reconciler::connect(node, &dir, None).await.expect("connect");

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

    let (a, b) = (spec("app1-a"), spec("app1-b"));
    reconcile_until_running(&mut rec, &[a.clone(), b.clone()]).await;
    let a_id = id_of(&docker, &format!("fm-{node}-app1-a")).await;

    let statuses = rec.reconcile(std::slice::from_ref(&a)).await;
    assert_eq!(statuses.len(), 1);
    assert!(inspect(&docker, &format!("fm-{node}-app1-b")).await.is_none(), "b was not removed");
    assert_eq!(id_of(&docker, &format!("fm-{node}-app1-a")).await, a_id);
    assert!(is_running(&docker, &other).await, "another node's container was touched");
    assert!(is_running(&docker, &plain).await, "an unlabelled container was touched");

    remove_all(&mut rec, node).await;
    assert!(is_running(&docker, &other).await && is_running(&docker, &plain).await);
}

#[tokio::test]
async fn restarts_a_killed_container_with_back_off() {
    let (nodes, dir, _cleanup) = setup("restart", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = Reconciler::connect(node, &dir, None).await.expect("connect");

    let s = spec("app1-worker");
    reconcile_until_running(&mut rec, std::slice::from_ref(&s)).await;
    let cname = format!("fm-{node}-app1-worker");
    let id = id_of(&docker, &cname).await;

    let out = Command::new("docker").args(["kill", &cname]).output().expect("docker kill");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_exited = false;
    loop {
        let st = rec.reconcile(std::slice::from_ref(&s)).await.remove(0);
        if st.state == ContainerState::Exited {
            saw_exited = true;
            assert!(st.last_error.as_deref().unwrap_or("").contains("exited with code"), "{st:?}");
        }
        if st.state == ContainerState::Running && saw_exited {
            assert!(st.restarts >= 1, "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not restarted within 10 s: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(is_running(&docker, &cname).await);
    assert_eq!(id_of(&docker, &cname).await, id, "restarted, not recreated");

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn a_missing_image_fails_that_container_only() {
    let (nodes, dir, _cleanup) = setup("image", &["n"]);
    let node = &nodes[0];
    let docker = docker().await;
    let mut rec = Reconciler::connect(node, &dir, None).await.expect("connect");

    let mut bad = spec("app1-bad");
    bad.image = "fogmesh/does-not-exist:1".into();
    let good = spec("app1-good");
    let desired = [bad.clone(), good.clone()];

    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let statuses = rec.reconcile(&desired).await;
        let (b, g) = (by_name(&statuses, "app1-bad"), by_name(&statuses, "app1-good"));
        if b.state == ContainerState::Failed && g.state == ContainerState::Running {
            let err = b.last_error.as_deref().unwrap_or("");
            assert!(err.contains("fogmesh/does-not-exist:1") && err.contains("could not be pulled"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "unexpected statuses: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(is_running(&docker, &format!("fm-{node}-app1-good")).await);
    assert!(inspect(&docker, &format!("fm-{node}-app1-bad")).await.is_none());
    // A second pass does not pull again within a minute, and still says why.
    let again = rec.reconcile(&desired).await;
    assert_eq!(again[0].state, ContainerState::Failed);
    assert!(again[0].last_error.as_deref().unwrap_or("").contains("fogmesh/does-not-exist:1"));

    remove_all(&mut rec, node).await;
}

#[tokio::test]
async fn two_agents_on_one_engine_manage_only_their_own() {
    let (nodes, dir, _cleanup) = setup("two", &["n1", "n2"]);
    let docker = docker().await;
    let mut r1 = Reconciler::connect(&nodes[0], &dir.join("n1"), None).await.expect("connect n1");
    let mut r2 = Reconciler::connect(&nodes[1], &dir.join("n2"), None).await.expect("connect n2");

    // Same spec name on both nodes.
    let web = spec("app1-web");
    let api = spec("app1-api");
    reconcile_until_running(&mut r1, std::slice::from_ref(&web)).await;
    reconcile_until_running(&mut r2, &[web.clone(), api.clone()]).await;
    // n1 does not see n2's extra container as its own to remove.
    reconcile_until_running(&mut r1, std::slice::from_ref(&web)).await;

    assert_eq!(names_of(&docker, owned_ids(&nodes[0])).await, ["app1-web"]);
    assert_eq!(names_of(&docker, owned_ids(&nodes[1])).await, ["app1-api", "app1-web"]);

    let n2_ids = {
        let mut ids = owned_ids(&nodes[1]);
        ids.sort();
        ids
    };
    remove_all(&mut r1, &nodes[0]).await;
    let mut after = owned_ids(&nodes[1]);
    after.sort();
    assert_eq!(after, n2_ids, "n1 touched n2's containers");
    let statuses = r2.reconcile(&[web, api]).await;
    assert!(statuses.iter().all(|s| s.state == ContainerState::Running), "{statuses:?}");

    remove_all(&mut r2, &nodes[1]).await;
}

#[tokio::test]
async fn an_unreachable_nfs_mount_is_reported_not_fatal() {
    let (nodes, dir, _cleanup) = setup("nfs", &["n"]);
    let node = &nodes[0];
    let mut rec = Reconciler::connect(node, &dir, None).await.expect("connect");

    let mut nfs = spec("app1-nfs");
    nfs.mounts = vec![MountSpec {
        source: MountSource::Nfs { server: "127.0.0.1".into(), path: "/exports/nothing".into() },
        target: "/shared".into(),
    }];
    let ok = spec("app1-ok");
    let statuses = rec.reconcile(&[nfs, ok]).await;
    let st = by_name(&statuses, "app1-nfs");
    assert_eq!(st.state, ContainerState::Failed, "{statuses:?}");
    let err = st.last_error.as_deref().unwrap_or("");
    assert!(err.contains(&format!("fm-{node}-app1-nfs")), "{err}");
    assert_ne!(by_name(&statuses, "app1-ok").state, ContainerState::Failed, "{statuses:?}");

    remove_all(&mut rec, node).await;
}
