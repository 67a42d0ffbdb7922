//! `fogmesh-master bench metrics`: the metrics store measured on generated
//! data, side by side with VictoriaMetrics (Debian package) on the same
//! data in the same run.
//!
//! - Ingest: signed node batches verified and stored durably (WAL fsync)
//!   exactly as the MQTT ingest does, minus the network; samples per CPU
//!   second of this process. VictoriaMetrics gets the same samples by
//!   remote write; its CPU seconds are read from /proc.
//! - Queries: policy-sized PromQL over all series, over loopback HTTP for
//!   both (fogmesh's Prometheus API router, VictoriaMetrics' API).
//! - Size: bytes per sample and per series, in memory and on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fogmesh_common::metrics::batch::{encode_payload, Batch, BatchSample};
use fogmesh_common::metrics::Labels;
use fogmesh_common::pki::{cert_public_key, node_key_and_csr, ClusterCa, NodeSigner};
use fogmesh_common::procstat::{cpu_seconds as process_cpu_seconds, rss_bytes as process_rss};
use serde_json::Value;

use crate::metrics::ingest::{verify_batch, IngestCounters};
use crate::metrics::tsdb::Tsdb;
use crate::metrics::{http, remote_write, Metrics};

pub struct BenchOptions {
    pub series: usize,
    pub samples_per_series: usize,
    pub interval: Duration,
    pub series_per_node: usize,
    /// Compare with VictoriaMetrics (its binary must be installed).
    pub victoria_metrics: Option<PathBuf>,
    pub runs: usize,
    pub work_dir: PathBuf,
}

/// Policy-sized queries: every series, aggregated.
pub const QUERIES: [&str; 3] = [
    "sum(rate(container_cpu_usage_seconds_total[5m]))",
    "avg by (node) (rate(container_cpu_usage_seconds_total[1m]))",
    "topk(5, rate(container_cpu_usage_seconds_total[5m]))",
];

struct Side {
    name: &'static str,
    ingest_wall: Duration,
    ingest_cpu: f64,
    memory_bytes: Option<u64>,
    disk_bytes: u64,
    /// Per query: (p50 ms, p90 ms, first value of the answer).
    queries: Vec<(f64, f64, String)>,
    /// From a restart on the ingested data to the first query answered.
    restart: Duration,
    /// The same after a checkpoint (fogmesh), and the checkpoint's
    /// writing time and size.
    checkpointed: Option<Checkpointed>,
}

struct Checkpointed {
    restart: Duration,
    write: Duration,
    bytes: u64,
}

pub async fn run(options: BenchOptions) -> Result<String> {
    let _ = std::fs::remove_dir_all(&options.work_dir);
    std::fs::create_dir_all(&options.work_dir).with_context(|| format!("create {}", options.work_dir.display()))?;
    let total = options.series * options.samples_per_series;
    let end_ms = now_ms() - 60_000;
    let step_ms = options.interval.as_millis() as i64;
    let start_ms = end_ms - step_ms * (options.samples_per_series as i64 - 1);
    eprintln!("bench: {} series x {} samples = {total} samples, one every {:?}", options.series, options.samples_per_series, options.interval);

    let samples = generate(&options, start_ms);
    let mut sides = vec![bench_fogmesh(&options, &samples, end_ms).await?];
    if let Some(vm) = &options.victoria_metrics {
        sides.push(bench_victoria_metrics(vm, &options, &samples, end_ms).await?);
    }
    Ok(report(&options, total, &sides))
}

/// One batch per node and interval, as agents publish them: `(node, samples)`.
type NodeBatches = Vec<(String, Vec<(Labels, i64, f64)>)>;

/// Counters with a steady, per-series slope and some jitter (a fixed
/// linear congruential sequence, so every run has the same data).
fn generate(options: &BenchOptions, start_ms: i64) -> NodeBatches {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let labels: Vec<Labels> = (0..options.series)
        .map(|i| {
            let node = format!("bench-node-{}", i / options.series_per_node);
            Labels::metric("container_cpu_usage_seconds_total", &[("app", "bench"), ("pod", &format!("worker-{i}")), ("node", &node)])
        })
        .collect();
    let mut values = vec![0.0f64; options.series];
    let mut batches = Vec::new();
    let secs = options.interval.as_secs_f64();
    for k in 0..options.samples_per_series {
        let ts = start_ms + k as i64 * options.interval.as_millis() as i64;
        for (n, chunk) in labels.chunks(options.series_per_node).enumerate() {
            let mut samples = Vec::with_capacity(chunk.len());
            for (j, l) in chunk.iter().enumerate() {
                let i = n * options.series_per_node + j;
                let rate = 0.05 + (i % 10) as f64 * 0.1;
                values[i] += rate * secs * (0.8 + 0.4 * next());
                samples.push((l.clone(), ts, (values[i] * 1000.0).round() / 1000.0));
            }
            batches.push((format!("bench-node-{n}"), samples));
        }
    }
    batches
}

async fn bench_fogmesh(options: &BenchOptions, batches: &NodeBatches, end_ms: i64) -> Result<Side> {
    eprintln!("bench: fogmesh: signing {} node batches (agent side, not timed)", batches.len());
    let ca = ClusterCa::generate("bench CA")?;
    let mut keys = std::collections::HashMap::new();
    let mut payloads = Vec::with_capacity(batches.len());
    for (seq, (node, samples)) in batches.iter().enumerate() {
        if !keys.contains_key(node) {
            let (key, csr) = node_key_and_csr(node)?;
            let cert = ca.sign_node_csr(&csr, node, 1)?;
            keys.insert(node.clone(), (NodeSigner::from_key_pem(&key)?, cert_public_key(&cert)?));
        }
        let (signer, _) = &keys[node];
        let batch = Batch {
            node: node.clone(),
            seq: seq as u64,
            collected_ms: samples[0].1,
            samples: samples.iter().map(|(l, t, v)| BatchSample { labels: l.clone(), ts_ms: *t, value: *v }).collect(),
        };
        payloads.push((node.clone(), encode_payload(&batch, |b| signer.sign(b).map_err(|e| e.to_string())).map_err(anyhow::Error::msg)?));
    }
    let keys: Arc<std::collections::HashMap<String, Vec<u8>>> = Arc::new(keys.into_iter().map(|(n, (_, k))| (n, k)).collect());

    let dir = options.work_dir.join("fogmesh");
    let tsdb = Tsdb::open(&dir, KEEP_ALL)?;
    let rss_before = rss_bytes();
    eprintln!("bench: fogmesh: ingesting (verify signature, decode, WAL append + fsync, index)");
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(payloads.len());
    for (node, payload) in payloads {
        let permit = slots.clone().acquire_owned().await?;
        let (tsdb, keys) = (tsdb.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let key = keys.get(&node).context("key")?;
            let (_, samples) = verify_batch(&node, key, &payload).map_err(|_| anyhow::anyhow!("a bench batch did not verify"))?;
            tsdb.append(samples).await?;
            drop(permit);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ingest_wall = started.elapsed();
    let ingest_cpu = own_cpu_seconds() - cpu_before;
    let rss_after = rss_bytes();
    let stats = tsdb.stats();
    eprintln!("bench: fogmesh: {} samples in {ingest_wall:.2?} ({ingest_cpu:.2} CPU s); RSS +{} MiB", stats.samples, (rss_after.saturating_sub(rss_before)) >> 20);

    let disk_bytes = dir_bytes(&dir);
    let (url, server) = serve_store(tsdb.clone()).await?;
    let queries = time_queries(&url, end_ms, options.runs).await?;
    server.abort();
    let _ = server.await;
    drop(tsdb);

    // A restart as the master does it: the log replays in the background
    // while queries are refused (503), until the first one is answered.
    eprintln!("bench: fogmesh: restart on the same data");
    let restart = restart_until_answered(&dir, end_ms).await?;

    // As the master does after its log rotated: a checkpoint, then a
    // restart that reads it instead of the log. On a copy: the log stays
    // as written (a test restarts a master on it).
    eprintln!("bench: fogmesh: checkpoint, then restart on it");
    let copy = options.work_dir.join("fogmesh-checkpointed");
    copy_files(&dir, &copy)?;
    let store = Tsdb::open(&copy, KEEP_ALL)?;
    let started = Instant::now();
    let writer = store.clone();
    tokio::task::spawn_blocking(move || writer.checkpoint_now()).await??.context("the checkpoint did not run")?;
    let write = started.elapsed();
    drop(store);
    let bytes = dir_bytes(&copy);
    let checkpointed = Some(Checkpointed { restart: restart_until_answered(&copy, end_ms).await?, write, bytes });
    Ok(Side {
        name: "fogmesh",
        ingest_wall,
        ingest_cpu,
        memory_bytes: Some(stats.bytes as u64),
        disk_bytes,
        queries,
        restart,
        checkpointed,
    })
}

/// The store's retention in the benchmark: its generated samples are old.
const KEEP_ALL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Reopens the store in `dir` as the master does (its log replays while
/// queries get 503) and serves it: the time until a query is answered.
async fn restart_until_answered(dir: &Path, end_ms: i64) -> Result<Duration> {
    let started = Instant::now();
    let (url, server) = serve_store(Tsdb::open_loading(dir, KEEP_ALL)?).await?;
    first_answer(&url, end_ms).await?;
    let restart = started.elapsed();
    server.abort();
    let _ = server.await;
    Ok(restart)
}

/// `store` behind the router the master serves, on a loopback port: its URL.
async fn serve_store(store: Arc<Tsdb>) -> Result<(String, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let metrics = Arc::new(Metrics { tsdb: store, counters: Arc::new(IngestCounters::default()), settings: Default::default(), remote: None, gate: None, cluster: None });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((url, tokio::spawn(async move { axum::serve(listener, http::router(metrics)).await })))
}

/// An instant query's form as both stores take it.
fn query_form(query: &str, at_ms: i64) -> [(&'static str, String); 2] {
    [("query", query.to_string()), ("time", format!("{:.3}", at_ms as f64 / 1000.0))]
}

/// Waits until the first benchmark query is answered (up to 10 minutes).
async fn first_answer(url: &str, at_ms: i64) -> Result<()> {
    let client = plain_client()?;
    let form = query_form(QUERIES[0], at_ms);
    for _ in 0..60_000 {
        if let Ok(r) = client.post(format!("{url}/api/v1/query")).form(&form).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{url} answered no query within 10 minutes of its restart")
}

/// Starts VictoriaMetrics on `data` and waits for its health check.
async fn start_victoria_metrics(binary: &Path, options: &BenchOptions, port: u16) -> Result<tokio::process::Child> {
    let data = options.work_dir.join("victoria-metrics");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(options.work_dir.join("victoria-metrics.log"))?;
    let child = tokio::process::Command::new(binary)
        .arg(format!("-storageDataPath={}", data.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=100y")
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let client = plain_client()?;
    for _ in 0..1000 {
        if client.get(format!("http://127.0.0.1:{port}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("victoria-metrics did not come up; see {}", options.work_dir.join("victoria-metrics.log").display())
}

async fn bench_victoria_metrics(binary: &Path, options: &BenchOptions, batches: &NodeBatches, end_ms: i64) -> Result<Side> {
    let port = free_port()?;
    let data = options.work_dir.join("victoria-metrics");
    let mut child = start_victoria_metrics(binary, options, port).await?;
    let pid = child.id().context("victoria-metrics pid")?;
    let url = format!("http://127.0.0.1:{port}");
    let client = plain_client()?;
    let rss_before = process_rss(pid);
    // The same samples, by remote write, 10 000 per request, 4 requests at once.
    let all: Vec<(Labels, i64, f64)> = batches.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let bodies: Vec<Vec<u8>> = all.chunks(10_000).map(remote_write::encode).collect();
    eprintln!("bench: victoria-metrics: ingesting {} samples by remote write", all.len());
    let cpu_before = process_cpu_seconds(pid);
    let started = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for body in bodies {
        let permit = slots.clone().acquire_owned().await?;
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{url}/api/v1/write"))
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .body(body)
                .send()
                .await?;
            drop(permit);
            anyhow::ensure!(r.status().is_success(), "remote write: HTTP {}", r.status());
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Count ingest as done once the data is searchable and flushed.
    client.get(format!("{url}/internal/force_flush")).send().await?;
    let ingest_wall = started.elapsed();
    let ingest_cpu = process_cpu_seconds(pid) - cpu_before;
    let rss_after = process_rss(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queries = time_queries(&url, end_ms, options.runs).await?;
    let disk_bytes = dir_bytes(&data);
    // SIGKILL, as a crash: what it has not flushed it must recover.
    let _ = child.kill().await;
    eprintln!("bench: victoria-metrics: restart on the same data");
    let started = Instant::now();
    let mut child = start_victoria_metrics(binary, options, port).await?;
    first_answer(&url, end_ms).await?;
    let restart = started.elapsed();
    let _ = child.kill().await;
    Ok(Side { name: "VictoriaMetrics", ingest_wall, ingest_cpu, memory_bytes: rss_after.checked_sub(rss_before), disk_bytes, queries, restart, checkpointed: None })
}

/// p50 and p90 latency of each query (after warm-up), and its answer.
async fn time_queries(url: &str, at_ms: i64, runs: usize) -> Result<Vec<(f64, f64, String)>> {
    let client = plain_client()?;
    let mut out = Vec::new();
    for q in QUERIES {
        let form = query_form(q, at_ms);
        let mut times = Vec::with_capacity(runs);
        let mut answer = String::new();
        for i in 0..runs + 3 {
            let started = Instant::now();
            let r = client.post(format!("{url}/api/v1/query")).form(&form).send().await?;
            let status = r.status();
            let body: Value = r.json().await?;
            if !status.is_success() {
                bail!("query {q} at {url}: {body}");
            }
            if i >= 3 {
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            answer = answer_summary(&body);
        }
        times.sort_by(f64::total_cmp);
        out.push((percentile(&times, 0.5), percentile(&times, 0.9), answer));
    }
    Ok(out)
}

/// `N series, sum S`: comparable whatever order the series come in.
fn answer_summary(body: &Value) -> String {
    let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
    let sum: f64 = result.iter().filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok()).sum();
    format!("{} series, sum {sum:.4}", result.len())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(options: &BenchOptions, total: usize, sides: &[Side]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{} series x {} samples ({total} samples, {} series per node batch), one sample every {:?}; {} runs per query\n\n",
        options.series, options.samples_per_series, options.series_per_node, options.interval, options.runs
    ));
    out.push_str("| | ingest samples/s (wall) | ingest samples per CPU second | memory bytes/sample | disk bytes/sample | disk bytes/series | restart → first query answered |\n|---|---|---|---|---|---|---|\n");
    for s in sides {
        let mem = s.memory_bytes.map_or("-".to_string(), |b| format!("{:.2}", b as f64 / total as f64));
        let restart = match &s.checkpointed {
            Some(c) => format!("{:.2} s from its log, {:.2} s from a checkpoint", s.restart.as_secs_f64(), c.restart.as_secs_f64()),
            None => format!("{:.2} s", s.restart.as_secs_f64()),
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {mem} | {:.2} | {:.0} | {restart} |\n",
            s.name,
            total as f64 / s.ingest_wall.as_secs_f64(),
            total as f64 / s.ingest_cpu.max(0.01),
            s.disk_bytes as f64 / total as f64,
            s.disk_bytes as f64 / options.series as f64,
        ));
    }
    out.push_str("\n| query (HTTP, loopback) | ");
    out.push_str(&sides.iter().map(|s| format!("{} p50 / p90 ms | answer", s.name)).collect::<Vec<_>>().join(" | "));
    out.push_str(" |\n|---|");
    out.push_str(&"---|---|".repeat(sides.len()));
    out.push('\n');
    for (i, q) in QUERIES.iter().enumerate() {
        out.push_str(&format!("| `{q}` |"));
        for s in sides {
            let (p50, p90, answer) = &s.queries[i];
            out.push_str(&format!(" {p50:.2} / {p90:.2} | {answer} |"));
        }
        out.push('\n');
    }
    out.push_str("\nfogmesh memory is its compressed chunks (the store's own count); VictoriaMetrics memory is its RSS growth during ingest. Disk is the data folder after ingest (fogmesh: its write-ahead log). Restart: fogmesh reopens its store as the master does (the log replays while queries get 503); VictoriaMetrics is killed (SIGKILL) and started again; both until the first query is answered.\n");
    for s in sides {
        if let Some(c) = &s.checkpointed {
            out.push_str(&format!(
                "{}: the checkpoint took {:.2} s to write; the data folder then held {:.1} MiB ({:.2} bytes/sample).\n",
                s.name,
                c.write.as_secs_f64(),
                c.bytes as f64 / (1 << 20) as f64,
                c.bytes as f64 / total as f64
            ));
        }
    }
    out
}

/// An HTTP client for loopback (reqwest needs a TLS provider even for http).
fn plain_client() -> Result<reqwest::Client> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().context("HTTP client")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The files of `from` (not its folders) into a new folder `to`.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        if path.is_file() {
            let target = to.join(path.file_name().context("a file name")?);
            std::fs::copy(&path, &target).with_context(|| format!("copy {} to {}", path.display(), target.display()))?;
        }
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id())
}

fn rss_bytes() -> u64 {
    process_rss(std::process::id())
}
