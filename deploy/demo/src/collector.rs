//! Cloud collector: stores every result once (append-only JSON lines,
//! synced before it answers, deduplicated by frame id because a sender
//! retries after a lost answer), and shows what the pipeline found: a
//! status page at `/`, the same as JSON at `/status.json`, and Prometheus
//! metrics at `/metrics`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;
use tiny_http::Method;

use crate::exporter::{self, Reply};
use crate::queue::now_ms;
use crate::results::DetectionResult;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Where `results.jsonl` lives (a host-path volume).
    #[arg(long, env = "DATA_DIR", default_value = "/data/results")]
    data: PathBuf,
}

/// Everything the collector knows, rebuilt from the file at start.
struct Store {
    file: File,
    seen: HashSet<String>,
    results: u64,
    faces: u64,
    per_camera: BTreeMap<String, (u64, u64)>,
    per_detector: BTreeMap<String, u64>,
    recent: VecDeque<DetectionResult>,
    /// (stored at ms, faces) of the last minute, for faces per second.
    last_minute: VecDeque<(u64, u64)>,
}

struct Metrics {
    results: Counter,
    faces: Counter,
    duplicates: Counter,
    rejected: Counter,
    age: Histogram,
}

impl Store {
    fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join("results.jsonl");
        let mut store = Store {
            file: OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("open {}", path.display()))?,
            seen: HashSet::new(),
            results: 0,
            faces: 0,
            per_camera: BTreeMap::new(),
            per_detector: BTreeMap::new(),
            recent: VecDeque::new(),
            last_minute: VecDeque::new(),
        };
        // A crash mid-append leaves a cut last line: keep everything before it.
        let mut good_len = 0u64;
        for line in BufReader::new(File::open(&path)?).split(b'\n') {
            let line = line?;
            match serde_json::from_slice::<DetectionResult>(&line) {
                Ok(r) => {
                    good_len += line.len() as u64 + 1;
                    store.count(r, 0);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring a cut last line");
                    break;
                }
            }
        }
        store.file.set_len(good_len).context("drop the cut line")?;
        store.last_minute.clear();
        tracing::info!(results = store.results, faces = store.faces, file = %path.display(), "collector store loaded");
        Ok(store)
    }

    fn count(&mut self, r: DetectionResult, now: u64) {
        let faces = r.faces.len() as u64;
        self.seen.insert(r.id.clone());
        self.results += 1;
        self.faces += faces;
        let cam = self.per_camera.entry(r.camera.clone()).or_default();
        cam.0 += 1;
        cam.1 += faces;
        *self.per_detector.entry(r.detector.clone()).or_default() += 1;
        self.last_minute.push_back((now, faces));
        self.recent.push_back(r);
        if self.recent.len() > 20 {
            self.recent.pop_front();
        }
    }

    /// Stores the new results of a batch durably; answers what happened to each.
    fn take(&mut self, batch: Vec<serde_json::Value>, metrics: &Metrics) -> anyhow::Result<serde_json::Value> {
        let (mut fresh, mut duplicates, mut rejected) = (Vec::new(), 0, Vec::new());
        let mut in_batch = HashSet::new();
        for value in batch {
            let parsed: Result<DetectionResult, String> = serde_json::from_value(value.clone()).map_err(|e| e.to_string()).and_then(|r: DetectionResult| r.check().map(|_| r));
            match parsed {
                Ok(r) if self.seen.contains(&r.id) || !in_batch.insert(r.id.clone()) => duplicates += 1,
                Ok(r) => fresh.push(r),
                Err(error) => rejected.push(json!({ "id": value.get("id"), "error": error })),
            }
        }
        let mut lines = Vec::new();
        for r in &fresh {
            lines.extend(serde_json::to_vec(r)?);
            lines.push(b'\n');
        }
        self.file.write_all(&lines).and_then(|_| self.file.sync_data()).context("append results")?;
        let now = now_ms();
        let stored = fresh.len();
        for r in fresh {
            metrics.faces.inc_by(r.faces.len() as u64);
            metrics.age.observe(now.saturating_sub(r.captured_ms) as f64 / 1000.0);
            self.count(r, now);
        }
        metrics.results.inc_by(stored as u64);
        metrics.duplicates.inc_by(duplicates);
        metrics.rejected.inc_by(rejected.len() as u64);
        if !rejected.is_empty() {
            tracing::warn!(?rejected, "refused malformed results");
        }
        Ok(json!({ "stored": stored, "duplicates": duplicates, "rejected": rejected }))
    }

    fn status(&mut self) -> serde_json::Value {
        let now = now_ms();
        while self.last_minute.front().is_some_and(|(t, _)| now.saturating_sub(*t) > 60_000) {
            self.last_minute.pop_front();
        }
        let faces_last_minute: u64 = self.last_minute.iter().map(|(_, f)| f).sum();
        json!({
            "results": self.results,
            "faces": self.faces,
            "faces_per_second_last_minute": faces_last_minute as f64 / 60.0,
            "results_last_minute": self.last_minute.len(),
            "cameras": self.per_camera.iter().map(|(c, (n, f))| json!({ "camera": c, "results": n, "faces": f })).collect::<Vec<_>>(),
            "detectors": self.per_detector.iter().map(|(d, n)| json!({ "detector": d, "results": n })).collect::<Vec<_>>(),
            "recent": self.recent.iter().rev().map(|r| json!({
                "id": r.id, "camera": r.camera, "faces": r.faces.len(), "detector": r.detector,
                "detection_ms": r.detection_ms, "latency_ms": r.detected_ms.saturating_sub(r.captured_ms),
            })).collect::<Vec<_>>(),
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let store = Arc::new(Mutex::new(Store::open(&args.data)?));
    let metrics = Arc::new(Metrics {
        results: Counter::default(),
        faces: Counter::default(),
        duplicates: Counter::default(),
        rejected: Counter::default(),
        age: Histogram::new(exponential_buckets(0.1, 2.0, 12)),
    });
    let mut registry = Registry::default();
    registry.register("collector_results", "Results stored", metrics.results.clone());
    registry.register("collector_faces", "Faces in the stored results", metrics.faces.clone());
    registry.register("collector_duplicates", "Results received again and ignored", metrics.duplicates.clone());
    registry.register("collector_rejected", "Malformed results refused", metrics.rejected.clone());
    registry.register("collector_result_age_seconds", "From the camera's capture to stored here", metrics.age.clone());
    tracing::info!(listen = %args.listen, "collector ready");
    exporter::serve(&args.listen, registry, move |req| {
        let mut store = store.lock().ok()?;
        Some(match (req.method, req.path.as_str()) {
            (Method::Post, "/results") => match serde_json::from_slice::<Vec<serde_json::Value>>(&req.body) {
                Err(e) => Reply::error(400, format!("body must be a JSON list of results: {e}")),
                Ok(batch) => match store.take(batch, &metrics) {
                    Ok(answer) => Reply::json(200, &answer),
                    Err(e) => Reply::error(500, format!("{e:#}")),
                },
            },
            (Method::Get, "/status.json") => Reply::json(200, &store.status()),
            (Method::Get, "/") => Reply::html(page(&store.status())),
            _ => return None,
        })
    })?;
    loop {
        std::thread::park();
    }
}

/// The status page: totals, per camera and detector, the latest results.
fn page(status: &serde_json::Value) -> String {
    let rows = |list: &serde_json::Value, cols: &[&str]| -> String {
        list.as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| format!("<tr>{}</tr>", cols.iter().map(|c| format!("<td>{}</td>", html_escape(&item[c].to_string().replace('"', "")))).collect::<String>()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let head = |cols: &[&str]| cols.iter().map(|c| format!("<th>{c}</th>")).collect::<String>();
    let recent = ["id", "camera", "faces", "detector", "detection_ms", "latency_ms"];
    format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5><title>fogmesh face detection</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:.2em .6em}}</style></head><body>\
         <h1>Face detection: results at the collector</h1>\
         <p><b>{}</b> frames, <b>{}</b> faces; {:.2} faces/s over the last minute ({} frames).</p>\
         <h2>Cameras</h2><table><tr>{}</tr>{}</table>\
         <h2>Detector replicas</h2><table><tr>{}</tr>{}</table>\
         <h2>Latest results</h2><table><tr>{}</tr>{}</table>\
         <p>JSON: <a href=/status.json>/status.json</a>, Prometheus: <a href=/metrics>/metrics</a></p></body></html>",
        status["results"],
        status["faces"],
        status["faces_per_second_last_minute"].as_f64().unwrap_or(0.0),
        status["results_last_minute"],
        head(&["camera", "results", "faces"]),
        rows(&status["cameras"], &["camera", "results", "faces"]),
        head(&["detector", "results"]),
        rows(&status["detectors"], &["detector", "results"]),
        head(&recent),
        rows(&status["recent"], &recent),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics { results: Counter::default(), faces: Counter::default(), duplicates: Counter::default(), rejected: Counter::default(), age: Histogram::new(exponential_buckets(0.1, 2.0, 4)) }
    }

    fn result(id: &str, faces: usize) -> serde_json::Value {
        let face = json!({ "x": 1, "y": 2, "w": 20, "h": 20, "score": 3.0 });
        json!({ "id": id, "camera": "cam", "captured_ms": 1, "detected_ms": 2, "detector": "d1", "detection_ms": 180.0, "width": 640, "height": 480, "faces": vec![face; faces] })
    }

    #[test]
    fn results_are_stored_once_survive_a_restart_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("fogmesh-demo-collector-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = metrics();
        let mut store = Store::open(&dir).unwrap();
        let answer = store.take(vec![result("a", 3), result("b", 0), result("a", 3), json!({"id": "c"})], &m).unwrap();
        assert_eq!(answer["stored"], 2);
        assert_eq!(answer["duplicates"], 1);
        assert_eq!(answer["rejected"][0]["id"], "c");
        assert!(answer["rejected"][0]["error"].as_str().unwrap().contains("missing field"), "{answer}");
        assert_eq!(store.take(vec![result("b", 0)], &m).unwrap()["duplicates"], 1, "a retried batch is not stored twice");
        drop(store);

        // A crash mid-append: the cut line is dropped, the rest is kept.
        let mut f = OpenOptions::new().append(true).open(dir.join("results.jsonl")).unwrap();
        f.write_all(b"{\"id\":\"cut").unwrap();
        let mut store = Store::open(&dir).unwrap();
        let status = store.status();
        assert_eq!((status["results"].as_u64(), status["faces"].as_u64()), (Some(2), Some(3)));
        store.take(vec![result("d", 1)], &m).unwrap();
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.results, 3, "appends after the repair parse");
        assert!(page(&json!({"results": 1, "cameras": [{"camera": "<b>", "results": 1, "faces": 0}]})).contains("&lt;b&gt;"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
