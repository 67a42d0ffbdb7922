//! Metric batches from the broker into the store.
//!
//! Each batch is checked before anything is stored: size, format, that the
//! node in the topic is registered and not revoked, and that the batch is
//! signed by that node's key (a batch published under another node's name
//! is refused and counted). Then it is written durably, and only then
//! acknowledged to the agent on its `acks` topic, so the agent can forget
//! it. Samples keep their original time stamps; a late batch lands in the
//! past. Every sample's `node` label is set to the verified node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use fogmesh_common::metrics::batch::{acks_topic, decode_payload, encode_ack, node_of_topic, PayloadError};
use fogmesh_common::metrics::BatchAck;
use fogmesh_common::pki::{cert_public_key, verify_node_signature, NodeSigner};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::Semaphore;

use super::remote_write::RemoteWriter;
use super::tsdb::{StoredSample, Tsdb};
use super::MqttEndpoint;
use crate::cluster::Cluster;

/// What ingest did, for `/metrics`.
#[derive(Default)]
pub struct IngestCounters {
    pub batches: AtomicU64,
    pub samples: AtomicU64,
    pub refused_forged: AtomicU64,
    pub refused_unknown_node: AtomicU64,
    pub refused_malformed: AtomicU64,
    pub store_errors: AtomicU64,
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
    let (seq, samples) = match verify_batch(node, &key, payload) {
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
    let n = samples.len() as u64;
    // Forwarded only once stored, so a batch the agent must resend is not forwarded twice.
    let forward = shared.remote.as_ref().map(|_| samples.clone());
    if let Err(e) = shared.tsdb.append(samples).await {
        counters.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%node, seq, error = %format!("{e:#}"), "cannot store a metrics batch; the agent will send it again");
        return;
    }
    if let (Some(remote), Some(samples)) = (&shared.remote, forward) {
        remote.push(samples);
    }
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.samples.fetch_add(n, Ordering::Relaxed);
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
