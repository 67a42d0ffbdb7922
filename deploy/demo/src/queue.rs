//! The frame queue on the fog node's host-path volume, shared by the
//! receiver and every detector replica:
//!
//! - `tmp/`: frames being written; a crash leaves nothing half-visible;
//! - `incoming/NAME.jpg`: frames waiting, oldest name first;
//! - `working/CLAIMMS~WORKER~NAME.jpg`: a frame one detector claimed by
//!   renaming it (atomic: of two replicas racing for a frame one wins, the
//!   other sees it gone); the claim time is in the name so a stale claim (a
//!   detector killed mid-frame) can be put back without a second write;
//! - `failed/`: frames that do not decode, kept for inspection.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::files;

pub struct FrameQueue {
    root: PathBuf,
}

/// What a claim found: the frame taken, if any, and how many frames were
/// waiting (the taken one included).
pub struct Claim {
    pub frame: Option<Claimed>,
    pub waiting: usize,
}

/// A frame this worker owns until `done` or `failed`.
pub struct Claimed {
    pub name: String,
    pub path: PathBuf,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl FrameQueue {
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        files::make_dirs(root, &["tmp", "incoming", "working", "failed"])?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// Queues a frame durably under `id`.
    pub fn push(&self, id: &str, jpeg: &[u8]) -> anyhow::Result<()> {
        files::write_durably(&self.root.join("tmp"), &self.root.join("incoming"), &format!("{id}.jpg"), jpeg)
    }

    /// Frames waiting for a detector.
    pub fn depth(&self) -> usize {
        fs::read_dir(self.root.join("incoming")).map(|d| d.filter_map(Result::ok).count()).unwrap_or(0)
    }

    /// Claims the oldest waiting frame for `worker`, if there is one, and
    /// says how many were waiting when it looked (one listing serves both).
    pub fn claim(&self, worker: &str) -> anyhow::Result<Claim> {
        let names = files::sorted_names(&self.root.join("incoming"))?;
        let listed = names.len();
        for name in names {
            let path = self.root.join("working").join(format!("{}~{worker}~{name}", now_ms()));
            match fs::rename(self.root.join("incoming").join(&name), &path) {
                Ok(()) => return Ok(Claim { frame: Some(Claimed { name, path }), waiting: listed }),
                // Another replica took it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).context(format!("claim {name}")),
            }
        }
        Ok(Claim { frame: None, waiting: listed })
    }

    /// The frame is processed and its result is durable: forget it.
    pub fn done(&self, claimed: Claimed) -> anyhow::Result<()> {
        fs::remove_file(&claimed.path).with_context(|| format!("remove {}", claimed.path.display()))
    }

    /// The frame cannot be processed: keep it aside, out of the queue.
    pub fn failed(&self, claimed: Claimed) -> anyhow::Result<()> {
        fs::rename(&claimed.path, self.root.join("failed").join(&claimed.name)).context("move the frame to failed/")
    }

    /// Puts back frames claimed longer than `max_age_ms` ago (their
    /// detector died); returns how many.
    pub fn requeue_stale(&self, max_age_ms: u64) -> usize {
        let Ok(entries) = fs::read_dir(self.root.join("working")) else { return 0 };
        let now = now_ms();
        let mut moved = 0;
        for entry in entries.filter_map(Result::ok) {
            let Ok(file) = entry.file_name().into_string() else { continue };
            let mut parts = file.splitn(3, '~');
            let (Some(Ok(claimed_ms)), Some(_worker), Some(name)) = (parts.next().map(str::parse::<u64>), parts.next(), parts.next()) else { continue };
            if now.saturating_sub(claimed_ms) > max_age_ms && fs::rename(entry.path(), self.root.join("incoming").join(name)).is_ok() {
                tracing::warn!(frame = name, "put back a frame whose detector stopped while working on it");
                moved += 1;
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fogmesh-demo-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn racing_workers_never_take_the_same_frame() {
        let dir = scratch("race");
        let q = Arc::new(FrameQueue::open(&dir).unwrap());
        for i in 0..400 {
            q.push(&format!("{i:05}"), b"x").unwrap();
        }
        let taken = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (q, taken) = (q.clone(), taken.clone());
                std::thread::spawn(move || {
                    while let Some(c) = q.claim(&format!("w{w}")).unwrap().frame {
                        taken.lock().unwrap().push(c.name.clone());
                        q.done(c).unwrap();
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        let taken = taken.lock().unwrap();
        assert_eq!(taken.len(), 400, "every frame once");
        assert_eq!(taken.iter().collect::<HashSet<_>>().len(), 400, "no frame twice");
        assert_eq!(q.depth(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oldest_first_and_a_dead_workers_frame_comes_back() {
        let dir = scratch("stale");
        let q = FrameQueue::open(&dir).unwrap();
        q.push("0002-b", b"b").unwrap();
        q.push("0001-a", b"a").unwrap();
        let claim = q.claim("dead").unwrap();
        assert_eq!(claim.waiting, 2, "both frames were waiting");
        let first = claim.frame.unwrap();
        assert_eq!(first.name, "0001-a.jpg");
        assert_eq!(q.requeue_stale(60_000), 0, "a fresh claim stays");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(q.requeue_stale(10), 1);
        assert_eq!(q.depth(), 2);
        assert_eq!(q.claim("live").unwrap().frame.unwrap().name, "0001-a.jpg");
        fs::remove_dir_all(&dir).unwrap();
    }
}
