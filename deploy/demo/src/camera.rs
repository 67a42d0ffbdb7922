//! Camera client: turns the bundled images into a set of frames (halves,
//! centre, a mirror image, one with a band blanked out, the whole picture),
//! each scaled to `--width` and JPEG-encoded, and sends them round-robin to
//! the receiver at `--fps`. `POST /burst?fps=F&seconds=S` on the control
//! port raises the rate for a while, which is how the demo shows scaling.

use std::io::BufWriter;
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use image::{imageops, DynamicImage, GenericImageView, Rgb, RgbImage};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tiny_http::Method;

use crate::exporter::{self, query_param, Reply};
use crate::frames::{self, FrameHeader};
use crate::queue::now_ms;

#[derive(clap::Args)]
pub struct Args {
    /// The fog receiver's address (its node's IP).
    #[arg(long, env = "RECEIVER_HOST")]
    receiver_host: String,
    #[arg(long, env = "RECEIVER_PORT", default_value_t = 5000)]
    receiver_port: u16,
    #[arg(long, env = "PROTOCOL", default_value = "tcp", value_parser = ["tcp", "udp"])]
    protocol: String,
    /// Frames per second when no burst is on.
    #[arg(long, env = "FPS", default_value_t = 1.0)]
    fps: f64,
    /// Folder of PNG/JPEG pictures to make frames from.
    #[arg(long, env = "IMAGES", default_value = "/images")]
    images: PathBuf,
    /// Frame width in pixels (height keeps the aspect ratio).
    #[arg(long, env = "WIDTH", default_value_t = 640)]
    width: u32,
    /// Control and metrics port (`/`, `/burst`, `/metrics`), on every address.
    #[arg(long, env = "CONTROL_PORT", default_value_t = 5001)]
    control_port: u16,
    /// This camera's name in frames and results (default: camera-CONTROLPORT).
    #[arg(long, env = "CAMERA_ID")]
    camera_id: Option<String>,
}

/// The sending rate: the base rate, or a burst until it ends.
struct Rate {
    base: f64,
    burst: Option<(f64, Instant)>,
}

impl Rate {
    fn current(&mut self) -> f64 {
        match self.burst {
            Some((fps, until)) if Instant::now() < until => fps,
            _ => {
                self.burst = None;
                self.base
            }
        }
    }
}

struct Stats {
    sent: Counter,
    dropped: Counter,
    bytes: Counter,
    fps: Gauge<f64, std::sync::atomic::AtomicU64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.fps > 0.0 && args.fps <= 100.0) {
        bail!("--fps {} must be above 0 and at most 100", args.fps);
    }
    let camera = args.camera_id.clone().unwrap_or_else(|| format!("camera-{}", args.control_port));
    let frames = make_frames(&args.images, args.width)?;
    let receiver = format!("{}:{}", args.receiver_host, args.receiver_port);
    tracing::info!(%camera, frames = frames.len(), %receiver, protocol = %args.protocol, fps = args.fps, "camera ready");

    let stats = Arc::new(Stats { sent: Counter::default(), dropped: Counter::default(), bytes: Counter::default(), fps: Gauge::default() });
    let mut registry = Registry::default();
    registry.register("camera_frames_sent", "Frames handed to the network", stats.sent.clone());
    registry.register("camera_frames_dropped", "Frames not sent because the receiver was unreachable", stats.dropped.clone());
    registry.register("camera_bytes_sent", "Frame bytes sent", stats.bytes.clone());
    registry.register("camera_fps", "Frames per second now", stats.fps.clone());
    let rate = Arc::new(Mutex::new(Rate { base: args.fps, burst: None }));
    let control_rate = rate.clone();
    let control_camera = camera.clone();
    exporter::serve(&format!("0.0.0.0:{}", args.control_port), registry, move |req| {
        let mut rate = control_rate.lock().ok()?;
        match (req.method, req.path.as_str()) {
            (Method::Post, "/burst") => Some(start_burst(&mut rate, &req.query)),
            (Method::Get, "/") => {
                let burst_left = rate.burst.map(|(_, until)| until.saturating_duration_since(Instant::now()).as_secs());
                Some(Reply::json(200, &serde_json::json!({ "camera": control_camera, "fps": rate.current(), "base_fps": rate.base, "burst_seconds_left": burst_left })))
            }
            _ => None,
        }
    })?;

    let mut link = Link::new(&receiver, &args.protocol);
    let mut next = Instant::now();
    for (seq, jpeg) in (1u64..).zip(frames.iter().cycle()) {
        let fps = rate.lock().map(|mut r| r.current()).unwrap_or(args.fps);
        stats.fps.set(fps);
        next += Duration::from_secs_f64(1.0 / fps);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now; // fell behind (e.g. a reconnect): do not catch up in a rush
        }
        let header = FrameHeader { camera: camera.clone(), seq, captured_ms: now_ms(), len: jpeg.len(), chunk: None };
        match link.send(&header, jpeg) {
            Ok(()) => {
                stats.sent.inc();
                stats.bytes.inc_by(jpeg.len() as u64);
            }
            Err(e) => {
                if stats.dropped.inc().is_multiple_of(30) {
                    tracing::warn!(%receiver, error = %format!("{e:#}"), "receiver unreachable; frames are dropped until it is back");
                }
            }
        }
    }
    Ok(())
}

fn start_burst(rate: &mut Rate, query: &str) -> Reply {
    let fps = query_param(query, "fps").and_then(|v| v.parse::<f64>().ok());
    let seconds = query_param(query, "seconds").and_then(|v| v.parse::<u64>().ok());
    match (fps, seconds) {
        (Some(fps), Some(seconds)) if fps > 0.0 && fps <= 100.0 && (1..=3600).contains(&seconds) => {
            rate.burst = Some((fps, Instant::now() + Duration::from_secs(seconds)));
            tracing::info!(fps, seconds, "burst started");
            Reply::json(200, &serde_json::json!({ "fps": fps, "seconds": seconds }))
        }
        _ => Reply::error(400, "POST /burst?fps=F&seconds=S needs 0 < F <= 100 and 1 <= S <= 3600"),
    }
}

/// The connection to the receiver.
enum Link {
    Tcp { address: String, stream: Option<BufWriter<TcpStream>>, retry_at: Instant },
    Udp { address: String, socket: Option<UdpSocket> },
}

impl Link {
    fn new(address: &str, protocol: &str) -> Self {
        match protocol {
            "udp" => Link::Udp { address: address.into(), socket: None },
            _ => Link::Tcp { address: address.into(), stream: None, retry_at: Instant::now() },
        }
    }

    fn send(&mut self, header: &FrameHeader, jpeg: &[u8]) -> anyhow::Result<()> {
        match self {
            Link::Tcp { address, stream, retry_at } => {
                if stream.is_none() {
                    if Instant::now() < *retry_at {
                        bail!("waiting to reconnect to {address}");
                    }
                    *retry_at = Instant::now() + Duration::from_secs(1);
                    let addr = address.parse().with_context(|| format!("receiver address {address} is not IP:PORT"))?;
                    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connect to {address}"))?;
                    s.set_write_timeout(Some(Duration::from_secs(5)))?;
                    tracing::info!(receiver = %address, "connected");
                    *stream = Some(BufWriter::new(s));
                }
                let Some(s) = stream.as_mut() else { bail!("not connected") };
                if let Err(e) = frames::write_tcp(s, header, jpeg) {
                    *stream = None;
                    return Err(e).context("send the frame");
                }
                Ok(())
            }
            Link::Udp { address, socket } => {
                if socket.is_none() {
                    let s = UdpSocket::bind("0.0.0.0:0").context("open a UDP socket")?;
                    s.connect(address.as_str()).with_context(|| format!("UDP peer {address}"))?;
                    *socket = Some(s);
                }
                let Some(s) = socket.as_ref() else { bail!("no socket") };
                for datagram in frames::udp_datagrams(header, jpeg) {
                    s.send(&datagram).context("send a datagram")?;
                }
                Ok(())
            }
        }
    }
}

/// Every picture in `dir`, in several versions, as JPEG frames.
pub fn make_frames(dir: &std::path::Path, width: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read the picture folder {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| ["png", "jpg", "jpeg"].contains(&x.to_string_lossy().to_lowercase().as_str())))
        .collect();
    paths.sort();
    let mut frames = Vec::new();
    for path in paths {
        let picture = image::open(&path).with_context(|| format!("decode {}", path.display()))?;
        for variant in variants(&picture) {
            let scaled = variant.resize(width, width * 4, imageops::FilterType::Triangle).to_rgb8();
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85).encode_image(&scaled).context("encode a frame")?;
            frames.push(jpeg);
        }
    }
    if frames.is_empty() {
        bail!("no PNG or JPEG pictures in {}", dir.display());
    }
    Ok(frames)
}

/// Views of a picture a camera could see: its halves and centre (faces
/// big enough to find at 640 px), a mirrored half, a half with a band
/// blanked out (fewer faces), and the whole picture (faces mostly too small).
fn variants(picture: &DynamicImage) -> Vec<DynamicImage> {
    let (w, h) = picture.dimensions();
    let mut out: Vec<DynamicImage> =
        [(0, 0, w / 2, h), (w / 2, 0, w - w / 2, h), (0, 0, w, h / 2), (0, h / 2, w, h - h / 2), (w / 4, h / 4, w / 2, h / 2)]
            .into_iter()
            .map(|(x, y, cw, ch)| picture.crop_imm(x, y, cw, ch))
            .collect();
    out.push(out[0].fliph());
    let mut blanked: RgbImage = out[1].to_rgb8();
    let bw = blanked.width();
    for x in bw / 3..2 * bw / 3 {
        for y in 0..blanked.height() {
            blanked.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    out.push(DynamicImage::ImageRgb8(blanked));
    out.push(picture.clone());
    out
}
