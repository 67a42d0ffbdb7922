//! Metric batches from the broker into the store.
//!
//! Each batch is checked before anything is stored: size, format, that the
//! node in the topic is registered and not revoked, and that the batch is
//! signed by that node's key (a batch published under another node's name
//! is refused and counted). Then it is written durably, and only then
//! acknowledged to the agent on its `acks` topic, so the agent can forget
//! it. Samples keep their original time stamps; a late batch lands in the
//! past. Every sample's `node` label is set to the verified node.
//!
//! Samples the store refuses (a new series past the node's cap, a time
//! stamp over 10 minutes ahead) are counted per node and reason, shown as
//! the node's `MetricsRefused` condition, and the batch is acked with the
//! rest stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use fogmesh_common::metrics::batch::{acks_topic, decode_payload, encode_ack, node_of_topic, PayloadError};
use fogmesh_common::metrics::BatchAck;
use fogmesh_common::pki::{cert_public_key, verify_node_signature, NodeSigner};
use fogmesh_common::wire::Condition;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::Semaphore;

use super::remote_write::RemoteWriter;
use super::tsdb::{now_ms, Appended, StoredSample, Tsdb, MAX_AHEAD};
use super::MqttEndpoint;
use crate::cluster::Cluster;

/// What ingest did, for `/metrics` and the nodes' conditions.
#[derive(Default)]
pub struct IngestCounters {
    pub batches: AtomicU64,
    pub samples: AtomicU64,
    pub refused_forged: AtomicU64,
    pub refused_unknown_node: AtomicU64,
    pub refused_malformed: AtomicU64,
    pub store_errors: AtomicU64,
    /// Samples refused from stored batches, per node (since the start).
    refused_samples: Mutex<BTreeMap<String, SampleRefusals>>,
}

/// The condition a node has while samples of its batches are refused.
pub const METRICS_REFUSED: &str = "MetricsRefused";
/// A node's refusals are shown as a condition this long after the last one.
const REFUSALS_SHOWN_FOR: Duration = Duration::from_secs(15 * 60);

/// Samples of one node's batches that were not stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleRefusals {
    /// That would have started a series past the node's cap.
    pub series_limit: u64,
    /// Stamped more than [`MAX_AHEAD`] ahead of the master's clock.
    pub future: u64,
    /// The cap in force at the last refusal for it.
    pub cap: usize,
    /// The first refusal since refusals last stopped for
    /// [`REFUSALS_SHOWN_FOR`], and the last one (unix ms).
    pub since_ms: u64,
    pub last_ms: u64,
}

impl IngestCounters {
    /// Counts what `appended` refused of a batch of `node`; whether this
    /// starts a new run of refusals (worth a warning: later ones are not).
    pub fn count_refused(&self, node: &str, appended: &Appended, cap: usize, now_ms: u64) -> bool {
        if appended.refused_future == 0 && appended.refused_series_limit == 0 {
            return false;
        }
        let mut all = self.refused_samples.lock().unwrap_or_else(|e| e.into_inner());
        let r = all.entry(node.to_string()).or_default();
        let new_run = r.last_ms == 0 || now_ms.saturating_sub(r.last_ms) > REFUSALS_SHOWN_FOR.as_millis() as u64;
        if new_run {
            r.since_ms = now_ms;
        }
        r.last_ms = now_ms;
        r.future += appended.refused_future as u64;
        r.series_limit += appended.refused_series_limit as u64;
        if appended.refused_series_limit > 0 {
            r.cap = cap;
        }
        new_run
    }

    /// Every node's refusals, by node name.
    pub fn refused_samples(&self) -> BTreeMap<String, SampleRefusals> {
        self.refused_samples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `MetricsRefused` while samples of `node` were refused in the last
    /// [`REFUSALS_SHOWN_FOR`]: how many since the master started, and why.
    pub fn refusal_condition(&self, node: &str, now_ms: u64) -> Option<Condition> {
        let all = self.refused_samples.lock().unwrap_or_else(|e| e.into_inner());
        let r = all.get(node).filter(|r| now_ms.saturating_sub(r.last_ms) <= REFUSALS_SHOWN_FOR.as_millis() as u64)?;
        let mut why = Vec::new();
        if r.series_limit > 0 {
            why.push((r.series_limit, format!("series limit {} reached", thousands(r.cap as u64))));
        }
        if r.future > 0 {
            why.push((r.future, format!("stamped more than {} min ahead of the master's clock", MAX_AHEAD.as_secs() / 60)));
        }
        let total = r.series_limit + r.future;
        let samples = if total == 1 { "sample" } else { "samples" };
        let message = match why.as_slice() {
            [(_, one)] => format!("{} {samples} refused: {one}", thousands(total)),
            _ => format!("{} {samples} refused: {}", thousands(total), why.iter().map(|(n, w)| format!("{w} ({})", thousands(*n))).collect::<Vec<_>>().join("; ")),
        };
        Some(Condition { kind: METRICS_REFUSED.to_string(), message, since_ms: r.since_ms })
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Batches handled at once: each waits for a log flush, which batches share.
const PARALLEL: usize = 64;

/// What every batch handler shares.
struct Shared {
    cluster: Arc<Cluster>,
    tsdb: Arc<Tsdb>,
    counters: Arc<IngestCounters>,
    signer: Arc<NodeSigner>,
    remote: Option<Arc<RemoteWriter>>,
    /// Node name -> (certificate fingerprint, public key).
    keys: Mutex<HashMap<String, (String, Vec<u8>)>>,
}

pub async fn run_forever(
    cluster: Arc<Cluster>,
    tsdb: Arc<Tsdb>,
    endpoint: MqttEndpoint,
    counters: Arc<IngestCounters>,
    signer: Arc<NodeSigner>,
    remote: Option<Arc<RemoteWriter>>,
) {
    let shared = Arc::new(Shared { cluster, tsdb, counters, signer, remote, keys: Mutex::new(HashMap::new()) });
    let mut wait = Duration::from_millis(500);
    loop {
        let (client, eventloop) = connect(&endpoint);
        match pump(client, eventloop, &shared).await {
            Ok(()) => wait = Duration::from_millis(500),
            Err(e) => {
                tracing::warn!(broker = %endpoint.url, error = %format!("{e:#}"), retry_in = ?wait, "metrics ingest lost the broker");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn connect(endpoint: &MqttEndpoint) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new("fogmesh-master-ingest", endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    options.set_clean_session(true);
    if let Some(login) = &endpoint.login {
        options.set_credentials(login.username.clone(), login.password.clone());
    }
    if let Some(tls) = &endpoint.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
    }
    AsyncClient::new(options, 1024)
}

async fn pump(client: AsyncClient, mut eventloop: EventLoop, shared: &Arc<Shared>) -> Result<()> {
    let slots = Arc::new(Semaphore::new(PARALLEL));
    loop {
        match eventloop.poll().await.map_err(|e| anyhow!("{e}"))? {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe("fogmesh/v1/nodes/+/metrics", QoS::AtLeastOnce).await?;
                tracing::info!("metrics ingest subscribed");
            }
            Event::Incoming(Packet::Publish(p)) => {
                let permit = slots.clone().acquire_owned().await?;
                let (client, shared) = (client.clone(), shared.clone());
                tokio::spawn(async move {
                    handle(&client, &shared, &p.topic, &p.payload).await;
                    drop(permit);
                });
            }
            _ => {}
        }
    }
}

async fn handle(client: &AsyncClient, shared: &Shared, topic: &str, payload: &[u8]) {
    let counters = &shared.counters;
    let Some(node) = node_of_topic(topic) else { return };
    let Some(key) = node_key(&shared.cluster, &shared.keys, node) else {
        counters.refused_unknown_node.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%node, "metrics batch from a node that is not registered (or was removed): refused");
        return;
    };
    let checked = verify_batch(node, &key, payload).or_else(|refused| match (&refused, previous_key(&shared.cluster, node)) {
        // Signed before the node's last renewal (queued while offline, or in flight).
        (Refused::Forged(_), Some(previous)) => verify_batch(node, &previous, payload).map_err(|_| refused),
        _ => Err(refused),
    });
    let (seq, samples) = match checked {
        Ok(checked) => checked,
        Err(Refused::Forged(why)) => {
            counters.refused_forged.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%node, "metrics batch refused: {why}");
            return;
        }
        Err(Refused::Malformed(why)) => {
            counters.refused_malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%node, error = %why, "metrics batch refused");
            return;
        }
    };
    // Forwarded only once stored, so a batch the agent must resend is not forwarded twice.
    let forward = shared.remote.as_ref().map(|_| samples.clone());
    let appended = match shared.tsdb.append(samples).await {
        Ok(appended) => appended,
        Err(e) => {
            counters.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%node, seq, error = %format!("{e:#}"), "cannot store a metrics batch; the agent will send it again");
            return;
        }
    };
    // Refused samples are counted and shown, and the batch is acked all
    // the same: sent again, they would be refused again, forever, and hold
    // up the agent's queue behind them.
    let cap = shared.tsdb.max_series_per_node();
    if counters.count_refused(node, &appended, cap, now_ms() as u64) {
        tracing::warn!(
            %node,
            seq,
            series_limit = appended.refused_series_limit,
            future = appended.refused_future,
            max_series_per_node = cap,
            "samples of a metrics batch refused (new series past the node's cap, or stamped over 10 min ahead); the rest is stored. Counted in /metrics and shown as the node's MetricsRefused condition"
        );
    }
    if let (Some(remote), Some(samples)) = (&shared.remote, forward) {
        let mut refused = appended.refused.iter().copied().peekable();
        let stored = samples.into_iter().enumerate().filter(|(i, _)| refused.next_if_eq(i).is_none()).map(|(_, sample)| sample).collect();
        remote.push(stored);
    }
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.samples.fetch_add(appended.stored as u64, Ordering::Relaxed);
    // Durable: the agent may forget it now.
    let ack = BatchAck { node: node.to_string(), seqs: vec![seq] };
    match encode_ack(&ack, |bytes| shared.signer.sign(bytes).map_err(|e| e.to_string())) {
        Ok(payload) => {
            let _ = client.publish(acks_topic(node), QoS::AtLeastOnce, false, payload).await;
        }
        Err(e) => tracing::error!(%node, error = %e, "cannot sign a metrics ack; the agent will send the batch again"),
    }
}

/// Why a batch is not stored.
pub enum Refused {
    /// Not signed by the node of its topic, or naming another node.
    Forged(String),
    Malformed(String),
}

/// Checks a payload published under `node` against the node's public key;
/// its sequence number and samples, each labelled with the verified node.
pub fn verify_batch(node: &str, key: &[u8], payload: &[u8]) -> Result<(u64, Vec<StoredSample>), Refused> {
    let batch = match decode_payload(payload, |bytes, sig| verify_node_signature(key, bytes, sig)) {
        Ok(b) if b.node == node => b,
        Ok(b) => return Err(Refused::Forged(format!("published under {node} but names {}", b.node))),
        Err(PayloadError::BadSignature) => return Err(Refused::Forged("not signed by the node's key".into())),
        Err(e) => return Err(Refused::Malformed(e.to_string())),
    };
    Ok((batch.seq, batch.samples.into_iter().map(|s| (s.labels.with("node", node), s.ts_ms, s.value)).collect()))
}

/// The node's public key, from its registered certificate (cached by fingerprint).
fn node_key(cluster: &Cluster, keys: &Mutex<HashMap<String, (String, Vec<u8>)>>, node: &str) -> Option<Vec<u8>> {
    let fingerprint = cluster.store.with_node(node, |n| n.cert_fingerprint.clone())??;
    let mut cache = keys.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((fp, key)) = cache.get(node) {
        if *fp == fingerprint {
            return Some(key.clone());
        }
    }
    let pem = cluster.store.with_node(node, |n| n.cert_pem.clone())??;
    let key = cert_public_key(&pem).ok()?;
    cache.insert(node.to_string(), (fingerprint, key.clone()));
    Some(key)
}

/// The public key of the certificate the node's last renewal replaced.
fn previous_key(cluster: &Cluster, node: &str) -> Option<Vec<u8>> {
    let pem = cluster.store.with_node(node, |n| n.previous_cert.as_ref().map(|p| p.pem.clone()))??;
    cert_public_key(&pem).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(series_limit: usize, future: usize) -> Appended {
        Appended { stored: 1, refused_future: future, refused_series_limit: series_limit, refused: vec![] }
    }

    #[test]
    fn refusals_are_counted_per_node_and_shown_while_recent() {
        let c = IngestCounters::default();
        let t0 = 1_700_000_000_000u64;
        assert!(!c.count_refused("a", &refused(0, 0), 10_000, t0), "nothing refused: nothing counted");
        assert_eq!(c.refusal_condition("a", t0), None);
        assert!(c.count_refused("a", &refused(1_233, 0), 10_000, t0), "the first refusal starts a run");
        assert!(!c.count_refused("a", &refused(1, 0), 10_000, t0 + 1000));
        let shown = c.refusal_condition("a", t0 + 2000).expect("a condition");
        assert_eq!(shown.kind, "MetricsRefused");
        assert_eq!(shown.message, "1,234 samples refused: series limit 10,000 reached");
        assert_eq!(shown.since_ms, t0);
        assert_eq!(c.refusal_condition("b", t0 + 2000), None, "per node");

        c.count_refused("b", &refused(0, 1), 50, t0);
        assert_eq!(c.refusal_condition("b", t0).unwrap().message, "1 sample refused: stamped more than 10 min ahead of the master's clock");
        c.count_refused("b", &refused(3, 0), 50, t0);
        assert_eq!(c.refusal_condition("b", t0).unwrap().message, "4 samples refused: series limit 50 reached (3); stamped more than 10 min ahead of the master's clock (1)");

        // Quiet for long enough: no longer shown; the next refusal starts a new run.
        let later = t0 + 1000 + REFUSALS_SHOWN_FOR.as_millis() as u64 + 1;
        assert_eq!(c.refusal_condition("a", later), None);
        assert!(c.count_refused("a", &refused(1, 0), 10_000, later));
        let shown = c.refusal_condition("a", later).expect("shown again");
        assert_eq!((shown.since_ms, shown.message.as_str()), (later, "1,235 samples refused: series limit 10,000 reached"));
        let all = c.refused_samples();
        assert_eq!((all["a"].series_limit, all["a"].future, all["b"].series_limit, all["b"].future), (1_235, 0, 3, 1));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
