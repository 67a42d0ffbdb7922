//! `fogmesh-agent bench collect`: what collecting metrics costs on a node.
//! Runs the real pipeline's work (collect node and container metrics,
//! sign, append to a queue with fsync) every interval for a while, and
//! reports CPU (% of one core) and memory growth; side by side, if
//! installed, a Prometheus node-exporter scraped at the same interval.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fogmesh_common::metrics::batch::{encode_payload, Batch};
use fogmesh_common::pki::{node_key_and_csr, NodeSigner};
use fogmesh_common::procstat::{cpu_seconds, rss_bytes as rss};

use crate::metrics::collector::Collector;
use crate::metrics::queue::{MetricQueue, QueueCap};

pub struct CollectBenchOptions {
    pub interval: Duration,
    pub duration: Duration,
    pub node_exporter: Option<PathBuf>,
    pub work_dir: PathBuf,
}

pub async fn run(options: CollectBenchOptions) -> Result<String> {
    let _ = std::fs::remove_dir_all(&options.work_dir);
    std::fs::create_dir_all(&options.work_dir).with_context(|| format!("create {}", options.work_dir.display()))?;
    let docker = bollard::Docker::connect_with_local_defaults().ok();
    let containers = match &docker {
        Some(d) => d.list_containers(None::<bollard::query_parameters::ListContainersOptions>).await.map(|c| c.len()).unwrap_or(0),
        None => 0,
    };
    let exporter = match &options.node_exporter {
        Some(bin) => Some(NodeExporter::start(bin, &options.work_dir).await?),
        None => None,
    };
    let (key, _) = node_key_and_csr("bench")?;
    let signer = NodeSigner::from_key_pem(&key)?;

    let rss_before = rss(std::process::id());
    let cpu_before = cpu_seconds(std::process::id());
    let exporter_cpu_before = exporter.as_ref().map(|e| cpu_seconds(e.pid));
    let exporter_rss_before = exporter.as_ref().map(|e| rss(e.pid));
    let mut collector = Collector::new("bench", docker);
    let mut queue = MetricQueue::open(&options.work_dir.join("queue"), QueueCap::default())?;
    let started = Instant::now();
    let mut collections = 0u64;
    let mut samples = 0usize;
    let mut exporter_series = 0usize;
    let mut tick = tokio::time::interval(options.interval);
    while started.elapsed() < options.duration {
        tick.tick().await;
        let now = unix_ms();
        let batch = collector.collect(&[], now).await;
        samples += batch.len();
        let seq = queue.next_seq();
        let batch = Batch { node: "bench".into(), seq, collected_ms: now, samples: batch };
        let payload = encode_payload(&batch, |b| signer.sign(b).map_err(|e| e.to_string())).map_err(anyhow::Error::msg)?;
        queue.append(seq, now, &payload)?;
        if let Some(e) = &exporter {
            exporter_series = e.scrape().await.unwrap_or(0);
        }
        collections += 1;
        eprint!("\rbench: {collections} collections, {:.0}s of {:?}", started.elapsed().as_secs_f64(), options.duration);
    }
    eprintln!();
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(std::process::id()) - cpu_before;
    let grown = rss(std::process::id()).saturating_sub(rss_before);
    let queue_bytes = queue.stats().bytes;
    let mut out = format!(
        "{collections} collections every {:?} over {wall:.0}s; {} containers on this host; {} samples per collection\n\n| | CPU (% of one core) | CPU ms per collection | memory growth |\n|---|---|---|---|\n",
        options.interval,
        containers,
        samples / collections.max(1) as usize
    );
    out.push_str(&format!(
        "| fogmesh-agent collector (collect + sign + fsynced queue append, {} queue bytes per collection) | {:.2} | {:.1} | {} KiB RSS |\n",
        queue_bytes / collections.max(1),
        cpu / wall * 100.0,
        cpu * 1000.0 / collections.max(1) as f64,
        grown / 1024
    ));
    if let (Some(e), Some(c0), Some(r0)) = (&exporter, exporter_cpu_before, exporter_rss_before) {
        let ecpu = cpu_seconds(e.pid) - c0;
        out.push_str(&format!(
            "| node-exporter (scraped each interval, {exporter_series} series; cAdvisor not included) | {:.2} | {:.1} | {} KiB RSS |\n",
            ecpu / wall * 100.0,
            ecpu * 1000.0 / collections.max(1) as f64,
            rss(e.pid).saturating_sub(r0) / 1024
        ));
    }
    Ok(out)
}

/// A Prometheus node-exporter on a free loopback port.
struct NodeExporter {
    child: tokio::process::Child,
    pid: u32,
    url: String,
}

impl NodeExporter {
    async fn start(bin: &Path, dir: &Path) -> Result<NodeExporter> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("node-exporter.log"))?;
        let child = tokio::process::Command::new(bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child.id().context("node-exporter pid")?;
        let e = NodeExporter { child, pid, url: format!("127.0.0.1:{port}") };
        for _ in 0..50 {
            if e.scrape().await.is_ok() {
                return Ok(e);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("node-exporter did not answer on {}", e.url)
    }

    /// One scrape; the number of sample lines.
    async fn scrape(&self) -> Result<usize> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.url).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.url).as_bytes()).await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count().saturating_sub(5))
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
