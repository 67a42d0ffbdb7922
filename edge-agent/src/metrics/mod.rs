//! The agent's metrics pipeline: collect every interval, sign, queue on
//! disk (fsynced), publish over MQTT, forget on the master's ack.
//!
//! ```text
//! collector ──batch──▶ sign ──▶ queue (disk, fsync) ──▶ publisher ──MQTT──▶ broker ──▶ master
//!                                    ▲                                                   │
//!                                    └──────────── signed ack (stored durably) ◀─────────┘
//! ```
//!
//! It runs whether or not the master or the broker is reachable: batches
//! wait in the queue (bounded by its cap) and keep their original time.

pub mod collector;
pub mod publisher;
pub mod queue;
pub mod recent;
pub mod settings;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fogmesh_common::metrics::batch::{encode_payload, Batch};
use fogmesh_common::metrics::BatchSample;
use fogmesh_common::pki::NodeSigner;
use fogmesh_common::procstat;
use fogmesh_common::wire::MetricsSettings;
use tokio::sync::{watch, Notify};

use crate::identity::{CurrentIdentity, Identity};
use crate::persister::Applied;
pub use collector::Collector;
use collector::sample;
use publisher::{PublishCounters, Publisher};
use queue::{MetricQueue, QueueCap};
use recent::RecentSamples;
use settings::SettingsFile;

/// The interval when neither the master nor a policy says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// The shortest interval anyone may ask for.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Samples per batch: a batch stays well under the 1 MiB payload limit.
const SAMPLES_PER_BATCH: usize = 4000;

pub struct MetricsOptions {
    pub queue_cap: QueueCap,
    /// Also keep each collection here (what local policies query offline).
    pub recent: Option<Arc<RecentSamples>>,
}

/// Starts collecting and publishing; returns the sender the connector
/// gives the master's settings to.
pub fn start(
    data_dir: &Path,
    identity: &CurrentIdentity,
    collector: Collector,
    applied: watch::Receiver<Applied>,
    options: MetricsOptions,
) -> Result<watch::Sender<Option<MetricsSettings>>> {
    let file = SettingsFile::new(data_dir);
    let (settings_tx, settings_rx) = watch::channel(file.load());
    let queue = MetricQueue::open(&data_dir.join("metric-queue"), options.queue_cap)?;
    let queue = Arc::new(Mutex::new(queue));
    let mut identity_rx = identity.subscribe();
    let current = identity_rx.borrow_and_update().clone();
    let signer = NodeSigner::from_key_pem(&current.key_pem).context("the node key cannot sign metric batches")?;
    let wake = Arc::new(Notify::new());
    let counters = Arc::new(PublishCounters::default());

    tokio::spawn(keep_settings(file, settings_rx.clone()));
    let publisher = Publisher::new(identity.subscribe(), queue.clone(), settings_rx.clone(), wake.clone(), counters.clone());
    tokio::spawn(publisher.run_forever());
    let collect = CollectLoop {
        node: current.info.node_name.clone(),
        collector,
        signer,
        identity: identity_rx,
        queue,
        wake,
        counters,
        settings: settings_rx,
        applied,
        recent: options.recent,
    };
    tokio::spawn(collect.run_forever());
    Ok(settings_tx)
}

/// Stores every new setting the master sends.
async fn keep_settings(file: SettingsFile, mut rx: watch::Receiver<Option<MetricsSettings>>) {
    while rx.changed().await.is_ok() {
        let current = rx.borrow_and_update().clone();
        if let Some(s) = current {
            if let Err(e) = file.save(&s) {
                tracing::warn!(error = %format!("{e:#}"), "cannot store the metrics settings (they are used anyway)");
            }
        }
    }
}

struct CollectLoop {
    node: String,
    collector: Collector,
    signer: NodeSigner,
    /// A renewal brings a new key: batches are signed with the newest.
    identity: watch::Receiver<Identity>,
    queue: Arc<Mutex<MetricQueue>>,
    wake: Arc<Notify>,
    counters: Arc<PublishCounters>,
    settings: watch::Receiver<Option<MetricsSettings>>,
    applied: watch::Receiver<Applied>,
    recent: Option<Arc<RecentSamples>>,
}

impl CollectLoop {
    async fn run_forever(mut self) {
        let mut last = tokio::time::Instant::now();
        let mut next = last;
        let (mut applied_open, mut settings_open) = (true, true);
        loop {
            // A new desired state or new settings may change the interval: re-plan.
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                changed = self.applied.changed(), if applied_open => {
                    applied_open = changed.is_ok();
                    next = next.min(last + self.interval());
                    continue;
                }
                changed = self.settings.changed(), if settings_open => {
                    settings_open = changed.is_ok();
                    next = next.min(last + self.interval());
                    continue;
                }
            }
            let interval = self.interval();
            let started = Instant::now();
            last = tokio::time::Instant::now();
            let now_ms = unix_ms();
            let scrapes = match &*self.applied.borrow() {
                Applied::Desired(d) => d.scrapes(),
                _ => Vec::new(),
            };
            let mut samples = self.collector.collect(&scrapes, now_ms).await;
            samples.extend(self.own_samples(now_ms, started.elapsed()));
            if let Some(recent) = &self.recent {
                recent.add(&samples, now_ms);
            }
            self.follow_renewals();
            if let Err(e) = self.enqueue(samples, now_ms).await {
                tracing::error!(error = %format!("{e:#}"), "cannot queue this interval's metrics (disk full?): they are lost");
            }
            self.wake.notify_one();
            next = last + interval;
            let now = tokio::time::Instant::now();
            if next < now {
                next = now + interval;
            }
        }
    }

    /// A policy's interval, else the master's, else the default.
    fn interval(&self) -> Duration {
        let from_policy = match &*self.applied.borrow() {
            Applied::Desired(d) => d.interval_ms(),
            _ => None,
        };
        let from_master = self.settings.borrow().as_ref().map(|s| s.interval_ms);
        from_policy.or(from_master).map(Duration::from_millis).unwrap_or(DEFAULT_INTERVAL).max(MIN_INTERVAL)
    }

    /// The agent's own state: queue depth, drops, what the publisher did,
    /// and what collecting costs (CPU seconds, resident memory).
    fn own_samples(&self, now_ms: i64, took: Duration) -> Vec<BatchSample> {
        let stats = self.queue.lock().unwrap_or_else(|e| e.into_inner()).stats();
        let n = &self.node;
        let c = &self.counters;
        let mut out = vec![
            sample(n, "fogmesh_agent_queue_batches", &[], stats.batches as f64, now_ms),
            sample(n, "fogmesh_agent_queue_bytes", &[], stats.bytes as f64, now_ms),
            sample(n, "fogmesh_agent_queue_dropped_batches_total", &[], stats.dropped_total as f64, now_ms),
            sample(n, "fogmesh_agent_batches_sent_total", &[], c.sent.load(Ordering::Relaxed) as f64, now_ms),
            sample(n, "fogmesh_agent_batches_acked_total", &[], c.acked.load(Ordering::Relaxed) as f64, now_ms),
            sample(n, "fogmesh_agent_bad_acks_total", &[], c.bad_acks.load(Ordering::Relaxed) as f64, now_ms),
            sample(n, "fogmesh_agent_broker_connected", &[], c.connected.load(Ordering::Relaxed) as f64, now_ms),
            sample(n, "fogmesh_agent_collect_duration_seconds", &[], took.as_secs_f64(), now_ms),
        ];
        if let Some(oldest) = stats.oldest_ms {
            out.push(sample(n, "fogmesh_agent_queue_oldest_timestamp_seconds", &[], oldest as f64 / 1000.0, now_ms));
        }
        let pid = std::process::id();
        out.push(sample(n, "process_cpu_seconds_total", &[("job", "fogmesh-agent")], procstat::cpu_seconds(pid), now_ms));
        out.push(sample(n, "process_resident_memory_bytes", &[("job", "fogmesh-agent")], procstat::rss_bytes(pid) as f64, now_ms));
        out
    }

    fn follow_renewals(&mut self) {
        if !self.identity.has_changed().unwrap_or(false) {
            return;
        }
        let key_pem = self.identity.borrow_and_update().key_pem.clone();
        match NodeSigner::from_key_pem(&key_pem) {
            Ok(signer) => self.signer = signer,
            Err(e) => tracing::warn!(error = %e, "the renewed node key cannot sign; batches keep the previous key"),
        }
    }

    /// Signs and queues the samples durably, in batches of bounded size.
    async fn enqueue(&self, samples: Vec<BatchSample>, now_ms: i64) -> Result<()> {
        let mut payloads = Vec::new();
        let mut seq = self.queue.lock().unwrap_or_else(|e| e.into_inner()).next_seq();
        let mut rest = samples;
        // The collection's first batch number: consecutive when nothing was lost.
        rest.push(sample(&self.node, "fogmesh_agent_batch_seq", &[], seq as f64, now_ms));
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(SAMPLES_PER_BATCH));
            let batch = Batch { node: self.node.clone(), seq, collected_ms: now_ms, samples: std::mem::replace(&mut rest, tail) };
            let payload = encode_payload(&batch, |bytes| self.signer.sign(bytes).map_err(|e| e.to_string())).map_err(anyhow::Error::msg)?;
            payloads.push((seq, payload));
            seq += 1;
        }
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            for (seq, payload) in payloads {
                q.append(seq, now_ms, &payload)?;
            }
            q.enforce_cap(now_ms)?;
            Ok(())
        })
        .await
        .context("queue writer")?
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
