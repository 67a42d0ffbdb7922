//! What a detector found in one frame, and the outbox on disk where results
//! wait for the sender: a result leaves it only after the collector has
//! stored it, so a collector outage of any length loses nothing (up to the
//! outbox cap, beyond which the oldest are dropped and counted).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectionResult {
    /// The frame's id (`CAPTUREDMS-CAMERA-SEQ`): unique, so stores dedupe on it.
    pub id: String,
    pub camera: String,
    pub captured_ms: u64,
    pub detected_ms: u64,
    /// Which detector replica did the work.
    pub detector: String,
    pub detection_ms: f64,
    pub width: u32,
    pub height: u32,
    pub faces: Vec<Face>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Face {
    pub x: i32,
    pub y: i32,
    pub w: u32,
    pub h: u32,
    pub score: f64,
}

impl DetectionResult {
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > 128 {
            return Err(format!("result id {:?} must be 1-128 characters", self.id));
        }
        if self.faces.len() > 10_000 {
            return Err(format!("result {} lists {} faces; at most 10000", self.id, self.faces.len()));
        }
        Ok(())
    }
}

pub struct Outbox {
    root: PathBuf,
}

/// One look at the outbox.
pub struct Backlog {
    /// Oldest results dropped because the outbox was over its cap.
    pub dropped: usize,
    /// Results waiting (after the drop), the batch included.
    pub waiting: usize,
    /// Up to the asked number of results, oldest first, with their files.
    pub batch: Vec<(PathBuf, DetectionResult)>,
}

impl Outbox {
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        files::make_dirs(root, &["tmp", "ready"])?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// Writes a result durably into `ready/`.
    pub fn put(&self, result: &DetectionResult) -> anyhow::Result<()> {
        files::write_durably(&self.root.join("tmp"), &self.root.join("ready"), &format!("{}.json", result.id), &serde_json::to_vec(result)?)
    }

    /// Drops the oldest results beyond `cap`, then reads up to `n`, oldest
    /// first, from one listing. A file that does not parse is removed with a
    /// warning (it could never be sent).
    pub fn take(&self, n: usize, cap: usize) -> Backlog {
        let ready = self.root.join("ready");
        let names = files::sorted_names(&ready).unwrap_or_default();
        let dropped = names.len().saturating_sub(cap);
        for name in &names[..dropped] {
            let _ = fs::remove_file(ready.join(name));
        }
        let mut backlog = Backlog { dropped, waiting: names.len() - dropped, batch: Vec::new() };
        for name in &names[dropped..] {
            if backlog.batch.len() == n {
                break;
            }
            let path = ready.join(name);
            match fs::read(&path).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice::<DetectionResult>(&b)?)) {
                Ok(r) => backlog.batch.push((path, r)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "removing an unreadable result from the outbox");
                    let _ = fs::remove_file(&path);
                    backlog.waiting -= 1;
                }
            }
        }
        backlog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn result(id: &str) -> DetectionResult {
        DetectionResult { id: id.into(), camera: "c".into(), captured_ms: 1, detected_ms: 2, detector: "d".into(), detection_ms: 1.0, width: 640, height: 480, faces: vec![] }
    }

    #[test]
    fn results_come_out_oldest_first_and_the_cap_drops_the_oldest() {
        let dir = std::env::temp_dir().join(format!("fogmesh-demo-outbox-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let out = Outbox::open(&dir).unwrap();
        for id in ["003", "001", "002"] {
            out.put(&result(id)).unwrap();
        }
        fs::write(dir.join("ready/000.json"), b"garbage").unwrap();
        let backlog = out.take(2, usize::MAX);
        let ids: Vec<String> = backlog.batch.into_iter().map(|(_, r)| r.id).collect();
        assert_eq!(ids, ["001", "002"], "the unreadable file is skipped and removed");
        assert_eq!((backlog.dropped, backlog.waiting), (0, 3));
        let backlog = out.take(10, 1);
        assert_eq!(backlog.dropped, 2);
        assert_eq!(backlog.batch[0].1.id, "003");
        fs::remove_dir_all(&dir).unwrap();
    }
}
