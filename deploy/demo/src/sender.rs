//! Fog sender: forwards results from the outbox to the cloud collector in
//! batches. A result is removed from the outbox only after the collector
//! answered that it stored it, so while the collector (or the link to it)
//! is down results simply wait on disk, oldest first when it is back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::exporter;
use crate::results::{Backlog, DetectionResult, Outbox};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "OUTBOX_DIR", default_value = "/data/outbox")]
    outbox: PathBuf,
    /// The collector's address (its node's IP).
    #[arg(long, env = "COLLECTOR_HOST")]
    collector_host: String,
    #[arg(long, env = "COLLECTOR_PORT", default_value_t = 8080)]
    collector_port: u16,
    /// Results per request.
    #[arg(long, env = "BATCH", default_value_t = 50)]
    batch: usize,
    /// Results kept while the collector is away; beyond, the oldest are dropped and counted.
    #[arg(long, env = "MAX_OUTBOX", default_value_t = 100_000)]
    max_outbox: usize,
    /// Port of /metrics, on every address.
    #[arg(long, env = "METRICS_PORT", default_value_t = 9103)]
    metrics_port: u16,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let outbox = Outbox::open(&args.outbox)?;
    let sent = Counter::<u64>::default();
    let failures = Counter::<u64>::default();
    let dropped = Counter::<u64>::default();
    let buffered = Gauge::<i64>::default();
    let mut registry = Registry::default();
    registry.register("results_sent", "Results the collector has stored", sent.clone());
    registry.register("result_send_failures", "Requests to the collector that failed", failures.clone());
    registry.register("results_dropped", "Results dropped because the outbox was full", dropped.clone());
    registry.register("results_buffered", "Results waiting in the outbox", buffered.clone());
    exporter::serve(&format!("0.0.0.0:{}", args.metrics_port), registry, |_| None)?;
    let url = format!("http://{}:{}/results", args.collector_host, args.collector_port);
    let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(3)).timeout(Duration::from_secs(15)).build();
    tracing::info!(%url, outbox = %args.outbox.display(), "sender ready");

    let mut backoff = Duration::from_secs(1);
    let mut outage: Option<Instant> = None;
    loop {
        let Backlog { dropped: over, waiting, batch } = outbox.take(args.batch.max(1), args.max_outbox);
        if over > 0 {
            dropped.inc_by(over as u64);
            tracing::warn!(dropped = over, cap = args.max_outbox, "outbox full: dropped the oldest results");
        }
        buffered.set(waiting as i64);
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        let results: Vec<&DetectionResult> = batch.iter().map(|(_, r)| r).collect();
        match agent.post(&url).send_json(&results) {
            Ok(_) => {
                for (path, _) in &batch {
                    let _ = std::fs::remove_file(path);
                }
                sent.inc_by(batch.len() as u64);
                if let Some(since) = outage.take() {
                    tracing::info!(down_for_s = since.elapsed().as_secs(), backlog = waiting - batch.len(), "collector reachable again; sending the backlog");
                }
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                failures.inc();
                if outage.is_none() {
                    tracing::warn!(%url, error = %e, buffered = waiting, "collector unreachable; results wait in the outbox");
                    outage = Some(Instant::now());
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
