//! Fog face detector: claims frames from the shared queue (replicas never
//! take the same one), finds faces with rustface's SeetaFace model, saves
//! face crops, writes one result per frame to the outbox, and only then
//! forgets the frame, so a detector killed mid-frame loses nothing (its
//! claim is put back after a minute).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use image::GrayImage;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rustface::{Detector, ImageData};

use crate::exporter;
use crate::files;
use crate::frames::FrameHeader;
use crate::queue::{now_ms, FrameQueue};
use crate::results::{DetectionResult, Face, Outbox};

/// A claim older than this belongs to a detector that died.
const STALE_CLAIM_MS: u64 = 60_000;
/// Face crops kept on disk (the oldest go first).
const MAX_CROPS: usize = 200;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "QUEUE_DIR", default_value = "/data/frames")]
    queue: PathBuf,
    #[arg(long, env = "OUTBOX_DIR", default_value = "/data/outbox")]
    outbox: PathBuf,
    /// Face crops of recent frames (empty: keep none).
    #[arg(long, env = "CROPS_DIR", default_value = "/data/crops")]
    crops: String,
    #[arg(long, env = "MODEL", default_value = "/model/seeta_fd_frontal_v1.0.bin")]
    model: PathBuf,
    #[command(flatten)]
    tuning: Tuning,
    #[arg(long, env = "METRICS", default_value = "0.0.0.0:9101")]
    metrics: String,
}

#[derive(clap::Args, Clone)]
pub struct Tuning {
    /// Score a detection needs (rustface: 0.95 finds more, 4.5 fewer).
    #[arg(long, env = "THRESHOLD", default_value_t = 2.0)]
    threshold: f64,
    /// Smallest face in pixels (at least 20).
    #[arg(long, env = "MIN_FACE", default_value_t = 20)]
    min_face: u32,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "/model/seeta_fd_frontal_v1.0.bin")]
    model: PathBuf,
    /// Pictures to make the camera's frames from (as `camera --images`).
    #[arg(long, default_value = "/images")]
    images: PathBuf,
    /// Frame width, as the camera sends them.
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Passes over the frame set.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    tuning: Tuning,
}

fn load(model: &Path, tuning: &Tuning) -> anyhow::Result<Box<dyn Detector>> {
    let path = model.to_str().context("model path is not UTF-8")?;
    let mut detector = rustface::create_detector(path).with_context(|| format!("load the face model {}", model.display()))?;
    if tuning.threshold <= 0.0 {
        anyhow::bail!("--threshold {} must be above 0", tuning.threshold);
    }
    detector.set_min_face_size(tuning.min_face.max(20));
    detector.set_score_thresh(tuning.threshold);
    detector.set_pyramid_scale_factor(0.8);
    detector.set_slide_window_step(4, 4);
    Ok(detector)
}

fn faces_in(detector: &mut dyn Detector, gray: &GrayImage) -> Vec<Face> {
    let (w, h) = gray.dimensions();
    detector
        .detect(&ImageData::new(gray, w, h))
        .into_iter()
        .map(|f| Face { x: f.bbox().x(), y: f.bbox().y(), w: f.bbox().width(), h: f.bbox().height(), score: f.score() })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut detector = load(&args.model, &args.tuning)?;
    let queue = FrameQueue::open(&args.queue)?;
    let outbox = Outbox::open(&args.outbox)?;
    let crops = (!args.crops.is_empty()).then(|| PathBuf::from(&args.crops));
    if let Some(dir) = &crops {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let worker = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| format!("detector-{}", std::process::id()));

    let processed = Counter::<u64>::default();
    let faces_total = Counter::<u64>::default();
    let failed = Counter::<u64>::default();
    let depth = Gauge::<i64>::default();
    let latency = Histogram::new(exponential_buckets(0.025, 2.0, 9));
    let mut registry = Registry::default();
    registry.register("frames_processed", "Frames this detector finished", processed.clone());
    registry.register("faces_detected", "Faces found", faces_total.clone());
    registry.register("frames_failed", "Frames that could not be decoded", failed.clone());
    registry.register("frame_queue_depth", "Frames waiting in the shared queue", depth.clone());
    registry.register("detection_seconds", "Time to decode and search one frame", latency.clone());
    exporter::serve(&args.metrics, registry, |_| None)?;
    tracing::info!(%worker, queue = %args.queue.display(), threshold = args.tuning.threshold, "detector ready");

    let mut last_sweep = Instant::now() - Duration::from_secs(3600);
    loop {
        if last_sweep.elapsed() > Duration::from_secs(10) {
            queue.requeue_stale(STALE_CLAIM_MS);
            last_sweep = Instant::now();
        }
        let claim = queue.claim(&worker)?;
        depth.set(claim.waiting as i64);
        let Some(claimed) = claim.frame else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let started = Instant::now();
        let picture = std::fs::read(&claimed.path).map_err(anyhow::Error::from).and_then(|b| Ok(image::load_from_memory(&b)?));
        let picture = match picture {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(frame = %claimed.name, error = %e, "frame does not decode; moved to failed/");
                failed.inc();
                queue.failed(claimed)?;
                continue;
            }
        };
        let gray = picture.to_luma8();
        let faces = faces_in(detector.as_mut(), &gray);
        let seconds = started.elapsed().as_secs_f64();
        latency.observe(seconds);
        let id = claimed.name.trim_end_matches(".jpg").to_string();
        let (captured_ms, camera, _) = FrameHeader::parse_id(&id).unwrap_or_default();
        if let Some(dir) = &crops {
            save_crops(dir, &id, &picture, &faces);
        }
        let result = DetectionResult {
            id,
            camera,
            captured_ms,
            detected_ms: now_ms(),
            detector: worker.clone(),
            detection_ms: seconds * 1000.0,
            width: gray.width(),
            height: gray.height(),
            faces,
        };
        outbox.put(&result)?;
        queue.done(claimed)?;
        processed.inc();
        faces_total.inc_by(result.faces.len() as u64);
        tracing::debug!(frame = %result.id, faces = result.faces.len(), ms = result.detection_ms, "frame done");
    }
}

fn save_crops(dir: &Path, id: &str, picture: &image::DynamicImage, faces: &[Face]) {
    for (i, f) in faces.iter().enumerate() {
        let (x, y) = (f.x.max(0) as u32, f.y.max(0) as u32);
        let crop = picture.crop_imm(x, y, f.w, f.h).to_rgb8();
        if let Err(e) = crop.save(dir.join(format!("{id}-{i}.jpg"))) {
            tracing::debug!(error = %e, "could not save a face crop");
        }
    }
    let Ok(names) = files::sorted_names(dir) else { return };
    for old in &names[..names.len().saturating_sub(MAX_CROPS)] {
        let _ = std::fs::remove_file(dir.join(old));
    }
}

/// Decodes and searches the camera's frames as a detector replica does,
/// on one core, and prints per-frame time and throughput.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut detector = load(&args.model, &args.tuning)?;
    let frames = crate::camera::make_frames(&args.images, args.width)?;
    let mut times = Vec::new();
    let mut faces = 0;
    for _ in 0..args.rounds.max(1) {
        for jpeg in &frames {
            let started = Instant::now();
            let gray = image::load_from_memory(jpeg)?.to_luma8();
            faces += faces_in(detector.as_mut(), &gray).len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    println!(
        "{} frames of {} px width ({} views x {} rounds): {:.1} faces per frame; decode + detect median {:.1} ms, p90 {:.1} ms, max {:.1} ms; {:.2} frames/s per replica (one core)",
        times.len(),
        args.width,
        frames.len(),
        args.rounds.max(1),
        faces as f64 / times.len() as f64,
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1],
        times.len() as f64 * 1000.0 / total
    );
    Ok(())
}
