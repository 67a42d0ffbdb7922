//! Data folders only their owner reads, with the real binaries: what
//! `init`, `serve`, `join` and `run` write has no group or other bits, and a
//! folder an older version left open (0755/0644) is tightened at start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fogmesh_common::private_files::open_entries;
use fogmesh_tests::*;

const T: Duration = Duration::from_secs(60);
/// The agent's config maps are for containers to read.
const AGENT_SKIPS: &[&str] = &["configmaps"];

/// Every folder 0755 and file 0644, as older versions left a data folder.
fn open_up(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("exists");
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = if meta.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).expect("list").map(|e| e.expect("entry").path()));
        }
    }
}

fn open_in(root: &Path, skip: &[&str]) -> Vec<String> {
    let open = open_entries(root, skip).unwrap_or_else(|e| panic!("walk {}: {e}", root.display()));
    open.iter().map(|(p, m)| format!("{} {m:o}", p.display())).collect()
}

#[test]
fn master_and_agent_data_folders_are_private_and_older_ones_are_tightened_at_start() {
    let dir = test_dir("file-modes");
    let mut master = Master::start(&dir);
    let master_data = dir.join("master");
    let agent_data = dir.join("agent-fm-1");
    let mut agent = Agent::join_and_run_in(&master, "fm-1", "127.0.0.81", &agent_data);
    // The agent stored a desired state and its metric queue; the master's
    // metrics log is open.
    wait_for("the agent's desired state and metric queue", T, || {
        (agent_data.join("desired.state").exists() && agent_data.join("metric-queue/state").exists()).then_some(())
    });
    let wal = || std::fs::read_dir(master_data.join("metrics")).ok()?.flatten().find(|e| e.file_name().to_string_lossy().starts_with("wal-"));
    wait_for("the master's metrics log", T, wal);
    assert_eq!(open_in(&master_data, &[]), Vec::<String>::new(), "the master's data folder as it made it");
    assert_eq!(open_in(&agent_data, AGENT_SKIPS), Vec::<String>::new(), "the agent's data folder as it made it");

    // Both stop; their folders are opened up as an older version left them.
    agent.kill();
    master.kill();
    open_up(&master_data);
    open_up(&agent_data);
    assert!(!open_in(&master_data, &[]).is_empty() && !open_in(&agent_data, AGENT_SKIPS).is_empty());

    master.restart();
    agent.start();
    wait_for("the agent's start", T, || agent.log_text().contains("data folder made private").then_some(()));
    let master_log = master.proc.as_ref().map(|p| p.log_text()).unwrap_or_default();
    assert!(master_log.contains("data folder made private") && master_log.contains("ca.key (644 -> 600)"), "{master_log}");
    assert!(agent.log_text().contains("desired.state (644 -> 600)"), "{}", agent.log_text());
    assert_eq!(open_in(&master_data, &[]), Vec::<String>::new(), "the master's data folder after a start");
    assert_eq!(open_in(&agent_data, AGENT_SKIPS), Vec::<String>::new(), "the agent's data folder after a start");
}
