//! A master data folder written by fogmesh before redb (its store in sled)
//! is taken over by today's master: the first start copies the store into
//! redb and moves the sled folder aside, and the nodes, the apps with their
//! revisions, the desired-state generations and the join tokens are all
//! there after it.
//!
//! The old folder is made by the real old binaries: [`OLD_COMMIT`],
//! extracted with `git archive` (no worktree left in the repository) and
//! built into `target/old-fogmesh/` (kept: later runs reuse the binaries;
//! a cold debug build of the two took 2 min 20 s on the project's 2-core
//! machine, the scenario itself 25 s). Chosen over a data folder kept in
//! the repository: the folder is made by the real old programs on every
//! fresh clone, and nothing in it (certificates, token lifetimes) ages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use fogmesh_tests::*;

/// The last commit whose master store is sled (HEAD when the move to redb
/// began). Its history must be in the clone (not shallow).
const OLD_COMMIT: &str = "a383ac8d40c63aa063a5039cd33de0d448ae7d1d";

const T: Duration = Duration::from_secs(30);

/// `fogmesh-master` and `fogmesh` of [`OLD_COMMIT`], built once.
fn old_bins() -> PathBuf {
    let root = workspace().join("target/old-fogmesh");
    let short = &OLD_COMMIT[..12];
    let bins = root.join(format!("bin-{short}"));
    if bins.join("fogmesh-master").is_file() && bins.join("fogmesh").is_file() {
        return bins;
    }
    let src = root.join(format!("src-{short}"));
    if !src.join("Cargo.lock").is_file() {
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).expect("make the old source folder");
        let out = Command::new("bash")
            .args(["-c", "set -o pipefail; git archive --format=tar \"$1\" | tar -x -C \"$2\"", "archive", OLD_COMMIT])
            .arg(&src)
            .current_dir(workspace())
            .output()
            .expect("run git archive");
        assert!(out.status.success(), "git archive {OLD_COMMIT} failed (a shallow clone lacks it: fetch the history): {}", text(&out.stderr));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--locked", "--quiet", "-p", "fogmesh-master", "--bin", "fogmesh-master", "--bin", "fogmesh"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .output()
        .expect("run cargo build for the old binaries");
    assert!(out.status.success(), "building {OLD_COMMIT} failed: {}", text(&out.stderr));
    let made = root.join(format!("bin-{short}.tmp"));
    let _ = std::fs::remove_dir_all(&made);
    std::fs::create_dir_all(&made).expect("make the old binaries' folder");
    for name in ["fogmesh-master", "fogmesh"] {
        std::fs::copy(root.join("target/debug").join(name), made.join(name)).expect("copy an old binary");
    }
    std::fs::rename(&made, &bins).expect("put the old binaries in place");
    bins
}

struct Setup {
    dir: PathBuf,
    data: PathBuf,
    api: u16,
    quic: u16,
    mqtt: u16,
}

impl Setup {
    fn serve(&self, master: &Path, log: &str) -> Proc {
        let mut cmd = Command::new(master);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--api", &format!("127.0.0.1:{}", self.api)])
            .args(["--quic", &format!("127.0.0.1:{}", self.quic)])
            .args(["--mqtt-listen", &format!("127.0.0.1:{}", self.mqtt)])
            .env("RUST_LOG", "info");
        Proc::spawn(cmd, self.dir.join(log))
    }

    fn cli(&self, fogmesh: &Path, args: &[&str]) -> Output {
        Command::new(fogmesh)
            .args(args)
            .env("FOGMESH_CONFIG", self.data.join("client.conf"))
            .env_remove("FOGMESH_API")
            .env_remove("FOGMESH_TOKEN")
            .output()
            .expect("run fogmesh")
    }

    fn cli_ok(&self, fogmesh: &Path, args: &[&str]) -> String {
        let out = self.cli(fogmesh, args);
        assert!(out.status.success(), "{} {args:?} failed:\n{}{}", fogmesh.display(), text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    fn json(&self, fogmesh: &Path, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        serde_json::from_str(&self.cli_ok(fogmesh, &all)).expect("the CLI prints JSON")
    }

    fn wait_for_api(&self, fogmesh: &Path, master: &mut Proc) {
        wait_for("the master's API", T, || {
            if let Ok(Some(status)) = master.child.try_wait() {
                panic!("the master exited ({status}):\n{}", master.log_text());
            }
            self.cli(fogmesh, &["node", "list"]).status.success().then_some(())
        });
    }

    fn aside(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.data)
            .expect("list the data folder")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("store.sled-migrated-")))
            .collect()
    }
}

fn container(env: &str) -> String {
    format!("        image: fogmesh/busybox:test\n        command: [sleep, '3600']\n        env: [{{name: STEP, value: '{env}'}}]\n")
}

#[test]
fn a_data_folder_from_before_redb_is_migrated_at_its_first_start() {
    let old = old_bins();
    let (old_master, old_cli) = (old.join("fogmesh-master"), old.join("fogmesh"));
    let (new_master, new_cli) = (bin("fogmesh-master"), bin("fogmesh"));
    let dir = test_dir("store-migration");
    let s = Setup { data: dir.join("master"), dir: dir.clone(), api: free_port(), quic: free_port(), mqtt: free_port() };
    let out = Command::new(&old_master).args(["init", "--data-dir"]).arg(&s.data).args(["--api", &format!("127.0.0.1:{}", s.api)]).output().expect("run the old init");
    assert!(out.status.success(), "the old init failed: {}", text(&out.stderr));

    // What an operator of the old version had: a declared node, an app on
    // it at revision 2, a join token not used yet.
    let mut master = s.serve(&old_master, "master-old.log");
    s.wait_for_api(&old_cli, &mut master);
    let (node, ip) = (format!("mig{}", std::process::id()), "127.0.0.61");
    s.cli_ok(&old_cli, &["node", "add", "--public-ip", ip, "--name", &node]);
    let adt = write_adt(&dir, "web", &edge_adt(ip, "web", &container("1")));
    s.cli_ok(&old_cli, &["app", "submit", adt.to_str().unwrap(), "--name", "web", "--no-wait"]);
    write_adt(&dir, "web", &edge_adt(ip, "web", &container("2")));
    s.cli_ok(&old_cli, &["app", "update", "web", adt.to_str().unwrap(), "--no-wait"]);
    let token = s.cli_ok(&old_cli, &["token", "create", "--ttl", "1h"]).trim().to_string();
    let nodes_before = s.json(&old_cli, &["node", "list"]);
    let apps_before = s.json(&old_cli, &["app", "list"]);
    let generation_before = nodes_before[0]["desired_generation"].as_u64().expect("a desired generation");
    assert!(generation_before > 0, "the app's container is the node's desired state: {nodes_before}");
    assert_eq!(apps_before[0]["revision"], 2, "{apps_before}");
    // Killed, not stopped: what it acknowledged is on disk.
    master.kill();
    assert!(s.data.join("store/db").is_file() && s.data.join("store/conf").is_file(), "the old master's store is sled");

    // Today's master on the same folder.
    let mut master = s.serve(&new_master, "master-new.log");
    s.wait_for_api(&new_cli, &mut master);
    let log = master.log_text();
    assert!(log.contains("migrated the store from sled to redb"), "{log}");
    for (tree, records) in [("nodes", 1), ("node_ips", 1), ("apps", 1), ("desired", 1), ("tokens", 1)] {
        let line = log.lines().find(|l| l.contains("copied from sled") && l.contains(&format!("tree={tree} "))).unwrap_or_else(|| panic!("no count for tree {tree}:\n{log}"));
        assert!(line.contains(&format!("records={records}")), "tree {tree}: {line}");
    }
    assert_eq!(s.aside().len(), 1, "the sled folder is moved aside");
    assert!(s.data.join("store/fogmesh.redb").is_file() && !s.data.join("store/db").exists());

    let nodes = s.json(&new_cli, &["node", "list"]);
    for field in ["name", "public_ip", "state", "labels", "desired_generation", "containers_desired"] {
        assert_eq!(nodes[0][field], nodes_before[0][field], "node field {field}");
    }
    let apps = s.json(&new_cli, &["app", "list"]);
    for field in ["id", "name", "revision", "workloads", "desired"] {
        assert_eq!(apps[0][field], apps_before[0][field], "app field {field}");
    }

    // The token made before is still known: an agent joins with it as the declared node.
    let agent = Command::new(bin("fogmesh-agent"))
        .args(["join", "--master", &format!("127.0.0.1:{}", s.quic), "--name", &node, "--public-ip", ip, "--data-dir"])
        .arg(dir.join("agent"))
        .env("FOGMESH_JOIN_TOKEN", &token)
        .output()
        .expect("run fogmesh-agent join");
    assert!(agent.status.success(), "the join with the old token failed: {}", text(&agent.stderr));
    wait_for("the joined node", T, || (s.json(&new_cli, &["node", "list"])[0]["state"] != "pending").then_some(()));

    // New desired states come after the old ones (the generation counter
    // came along), and apps go on from their revision.
    write_adt(&dir, "web", &edge_adt(ip, "web", &container("3")));
    s.cli_ok(&new_cli, &["app", "update", "web", adt.to_str().unwrap(), "--no-wait"]);
    let generation = s.json(&new_cli, &["node", "list"])[0]["desired_generation"].as_u64().unwrap_or(0);
    assert!(generation > generation_before, "desired generation {generation} after the old {generation_before}");
    assert_eq!(s.json(&new_cli, &["app", "list"])[0]["revision"], 3);

    // The next start opens the redb store as it is: no second migration.
    master.kill();
    let mut master = s.serve(&new_master, "master-new-2.log");
    s.wait_for_api(&new_cli, &mut master);
    assert!(!master.log_text().contains("migrat"), "{}", master.log_text());
    assert_eq!(s.json(&new_cli, &["app", "list"])[0]["revision"], 3);
    assert_eq!(s.json(&new_cli, &["node", "list"])[0]["desired_generation"].as_u64(), Some(generation));
    assert_eq!(s.aside().len(), 1);
}
