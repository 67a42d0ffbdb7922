//! What a detector found in one frame, and the outbox on disk where results
//! wait for the sender: a result leaves it only after the collector has
//! stored it, so a collector outage of any length loses nothing (up to the
//! outbox cap, beyond which the oldest are dropped and counted).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

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

impl Outbox {
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        for dir in ["tmp", "ready"] {
            fs::create_dir_all(root.join(dir)).with_context(|| format!("create {}", root.join(dir).display()))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    /// Writes a result durably (synced, then renamed into `ready/`).
    pub fn put(&self, result: &DetectionResult) -> anyhow::Result<()> {
        let name = format!("{}.json", result.id);
        let tmp = self.root.join("tmp").join(&name);
        let mut f = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(result)?).and_then(|_| f.sync_all()).with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, self.root.join("ready").join(&name)).context("move the result into ready/")
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.join("ready"))
            .map(|d| d.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn len(&self) -> usize {
        self.names().len()
    }

    /// Up to `n` results, oldest first, with the files that hold them. A file
    /// that does not parse is removed with a warning (it could never be sent).
    pub fn oldest(&self, n: usize) -> Vec<(PathBuf, DetectionResult)> {
        let mut out = Vec::new();
        for name in self.names() {
            if out.len() == n {
                break;
            }
            let path = self.root.join("ready").join(&name);
            match fs::read(&path).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice::<DetectionResult>(&b)?)) {
                Ok(r) => out.push((path, r)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "removing an unreadable result from the outbox");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        out
    }

    /// Drops the oldest results beyond `cap`; returns how many.
    pub fn enforce_cap(&self, cap: usize) -> usize {
        let names = self.names();
        let excess = names.len().saturating_sub(cap);
        for name in &names[..excess] {
            let _ = fs::remove_file(self.root.join("ready").join(name));
        }
        excess
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
        let ids: Vec<String> = out.oldest(2).into_iter().map(|(_, r)| r.id).collect();
        assert_eq!(ids, ["001", "002"], "the unreadable file is skipped and removed");
        assert_eq!(out.len(), 3);
        assert_eq!(out.enforce_cap(1), 2);
        assert_eq!(out.oldest(10)[0].1.id, "003");
        fs::remove_dir_all(&dir).unwrap();
    }
}
