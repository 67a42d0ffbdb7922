//! Forwarding stored samples to an external store with the Prometheus
//! remote-write protocol (1.0: snappy-compressed protobuf `WriteRequest`),
//! for users who outgrow one master: VictoriaMetrics, Prometheus, Mimir.
//!
//! Samples are queued in memory (bounded; the oldest are dropped first and
//! counted) and sent in batches. A 5xx or a network error is retried with
//! back-off, keeping the batch; a 4xx means the store refuses the data, so
//! the batch is dropped and counted, as Prometheus does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use fogmesh_common::metrics::Labels;
use prost::Message;
use tokio::sync::Notify;

/// Samples held while the remote store is away.
const MAX_QUEUED: usize = 2_000_000;
/// Samples per request.
const BATCH: usize = 10_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, PartialEq, Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

/// What remote write did, for `/metrics`.
#[derive(Default)]
pub struct RemoteCounters {
    pub sent_samples: AtomicU64,
    pub failed_requests: AtomicU64,
    pub dropped_samples: AtomicU64,
}

pub struct RemoteWriter {
    url: String,
    queue: Mutex<VecDeque<(Labels, i64, f64)>>,
    wake: Notify,
    pub counters: RemoteCounters,
}

impl RemoteWriter {
    /// Starts the sender for `url` (http or https; https trusts the
    /// system's roots).
    pub fn start(url: &str) -> Result<Arc<RemoteWriter>> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("--remote-write {url:?} must be an http:// or https:// URL");
        }
        let client = client()?;
        let writer = Arc::new(RemoteWriter { url: url.to_string(), queue: Mutex::new(VecDeque::new()), wake: Notify::new(), counters: RemoteCounters::default() });
        tokio::spawn(writer.clone().send_forever(client));
        tracing::info!(%url, "forwarding samples with Prometheus remote write");
        Ok(writer)
    }

    /// Queues samples (already stored on the master) for forwarding.
    pub fn push(&self, samples: Vec<(Labels, i64, f64)>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.extend(samples);
        let over = queue.len().saturating_sub(MAX_QUEUED);
        if over > 0 {
            queue.drain(..over);
            self.counters.dropped_samples.fetch_add(over as u64, Ordering::Relaxed);
            tracing::warn!(dropped = over, "remote-write queue full: dropped the oldest samples");
        }
        if queue.len() >= BATCH {
            self.wake.notify_one();
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn send_forever(self: Arc<Self>, client: reqwest::Client) {
        let mut wait = Duration::from_millis(500);
        loop {
            let batch: Vec<_> = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let n = queue.len().min(BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            let body = encode(&batch);
            loop {
                match self.post(&client, body.clone()).await {
                    Ok(()) => {
                        self.counters.sent_samples.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        wait = Duration::from_millis(500);
                        break;
                    }
                    Err(Failure::Refused(e)) => {
                        self.counters.dropped_samples.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        tracing::warn!(url = %self.url, error = %e, samples = batch.len(), "remote store refused a batch: dropped");
                        break;
                    }
                    Err(Failure::Retry(e)) => {
                        self.counters.failed_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(url = %self.url, error = %e, retry_in = ?wait, "remote write failed");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }

    async fn post(&self, client: &reqwest::Client, body: Vec<u8>) -> Result<(), Failure> {
        let response = client
            .post(&self.url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let message = format!("HTTP {status}: {}", text.chars().take(300).collect::<String>());
        if status.is_client_error() && status.as_u16() != 429 {
            Err(Failure::Refused(message))
        } else {
            Err(Failure::Retry(message))
        }
    }
}

enum Failure {
    Retry(String),
    Refused(String),
}

/// One request: samples grouped by series, each series' samples in time order.
pub fn encode(samples: &[(Labels, i64, f64)]) -> Vec<u8> {
    let mut by_series: BTreeMap<&Labels, Vec<Sample>> = BTreeMap::new();
    for (labels, ts, value) in samples {
        by_series.entry(labels).or_default().push(Sample { value: *value, timestamp: *ts });
    }
    let timeseries = by_series
        .into_iter()
        .map(|(labels, mut samples)| {
            samples.sort_by_key(|s| s.timestamp);
            TimeSeries { labels: labels.iter().map(|(k, v)| Label { name: k.to_string(), value: v.to_string() }).collect(), samples }
        })
        .collect();
    let raw = WriteRequest { timeseries }.encode_to_vec();
    // Compressing a buffer in memory cannot fail but for absurd sizes.
    snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default()
}

fn client() -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS for remote write")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).timeout(REQUEST_TIMEOUT).build().context("HTTP client for remote write")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_group_samples_by_series_in_time_order() {
        let a = Labels::metric("up", &[("node", "a")]);
        let b = Labels::metric("up", &[("node", "b")]);
        let body = encode(&[(a.clone(), 2000, 1.0), (b.clone(), 1000, 0.0), (a.clone(), 1000, 1.0)]);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 2);
        let first = &req.timeseries[0];
        assert_eq!(first.labels[0], Label { name: "__name__".into(), value: "up".into() });
        assert_eq!(first.labels[1], Label { name: "node".into(), value: "a".into() });
        assert_eq!(first.samples.iter().map(|s| s.timestamp).collect::<Vec<_>>(), vec![1000, 2000]);
    }
}
