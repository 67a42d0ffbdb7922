//! Sends queued batches to the broker (MQTT, QoS 1, TLS with the node's
//! certificate) and forgets them only when the master acknowledges them.
//!
//! Order: after every (re)connect the newest batch goes first, so scaling
//! sees the present at once; then the backlog drains oldest first, at most
//! [`WINDOW`] batches unacknowledged at a time. A batch the master has not
//! acknowledged within [`RESEND_AFTER`] is sent again (a broker with no
//! subscriber, e.g. an external one while the master is down, accepts and
//! drops it); the master keeps the first copy of a duplicate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use fogmesh_common::metrics::batch::{acks_topic, decode_ack, metrics_topic, MqttUrl};
use fogmesh_common::pki::verify_node_signature;
use fogmesh_common::tls::mqtt_client_config;
use fogmesh_common::wire::MetricsSettings;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{watch, Notify};

use super::queue::MetricQueue;
use crate::identity::Identity;

/// Batches sent but not yet acknowledged by the master, at most.
const WINDOW: usize = 32;
/// A batch unacknowledged this long is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// What the publisher did, for the agent's own metrics.
#[derive(Default)]
pub struct PublishCounters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub bad_acks: AtomicU64,
    /// 1 while connected to the broker.
    pub connected: AtomicU64,
}

pub struct Publisher {
    pub node: String,
    pub queue: Arc<Mutex<MetricQueue>>,
    /// The node's certificate and key for TLS: a renewal ends the
    /// connection so the next one presents the new certificate.
    pub identity: watch::Receiver<Identity>,
    pub settings: watch::Receiver<Option<MetricsSettings>>,
    pub wake: Arc<Notify>,
    pub counters: Arc<PublishCounters>,
}

impl Publisher {
    pub fn new(identity: watch::Receiver<Identity>, queue: Arc<Mutex<MetricQueue>>, settings: watch::Receiver<Option<MetricsSettings>>, wake: Arc<Notify>, counters: Arc<PublishCounters>) -> Publisher {
        let node = identity.borrow().info.node_name.clone();
        Publisher {
            node,
            queue,
            identity,
            settings,
            wake,
            counters,
        }
    }

    pub async fn run_forever(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let Some(settings) = self.settings.borrow_and_update().clone() else {
                tracing::info!("no metrics settings yet: batches are queued until the master sends them");
                if self.settings.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let started = Instant::now();
            match self.session(&settings).await {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Err(e) => tracing::warn!(broker = %settings.mqtt_url, error = %format!("{e:#}"), retry_in = ?backoff, "metrics broker unreachable; batches stay queued on disk"),
            }
            self.counters.connected.store(0, Ordering::Relaxed);
            if started.elapsed() > Duration::from_secs(30) {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                changed = self.settings.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One broker connection; `Ok` when the settings changed.
    async fn session(&mut self, settings: &MetricsSettings) -> Result<()> {
        let url = MqttUrl::parse(&settings.mqtt_url).map_err(|e| anyhow!(e))?;
        // A fresh client id per session: rumqttd 0.20 panics (and then
        // refuses every client) when a client id reconnects after its
        // previous link failed to start; sessions are clean anyway.
        let mut options = MqttOptions::new(session_client_id(&self.node), url.host.clone(), url.port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_session(true);
        options.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        if url.tls {
            let id = self.identity.borrow_and_update().clone();
            let tls = mqtt_client_config(&id.ca_pem, &id.cert_pem, &id.key_pem)?;
            options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        }
        let (client, mut eventloop) = AsyncClient::new(options, WINDOW * 2);
        let topic = metrics_topic(&self.node);
        let acks = acks_topic(&self.node);
        let mut inflight: HashMap<u64, Instant> = HashMap::new();
        let mut connected = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut settings_open = true;
        let mut identity_open = true;
        loop {
            tokio::select! {
                event = eventloop.poll() => match event.map_err(|e| anyhow!("{e}"))? {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        client.try_subscribe(&acks, QoS::AtLeastOnce)?;
                        connected = true;
                        inflight.clear();
                        self.counters.connected.store(1, Ordering::Relaxed);
                        tracing::info!(broker = %settings.mqtt_url, backlog = self.lock().unacked().len(), "metrics broker connected");
                        self.fill(&client, &topic, &mut inflight);
                    }
                    Event::Incoming(Packet::Publish(p)) if p.topic == acks => {
                        self.take_ack(settings, &p.payload, &mut inflight);
                        self.fill(&client, &topic, &mut inflight);
                    }
                    _ => {}
                },
                _ = self.wake.notified(), if connected => self.fill(&client, &topic, &mut inflight),
                _ = tick.tick(), if connected => self.fill(&client, &topic, &mut inflight),
                changed = self.identity.changed(), if identity_open && url.tls => {
                    identity_open = changed.is_ok();
                    if identity_open {
                        tracing::info!("node certificate renewed: reconnecting to the metrics broker with it");
                        let _ = client.try_disconnect();
                        return Ok(());
                    }
                }
                changed = self.settings.changed(), if settings_open => {
                    settings_open = changed.is_ok();
                    if settings_open && self.settings.borrow().as_ref() != Some(settings) {
                        tracing::info!("metrics settings changed: reconnecting");
                        let _ = client.try_disconnect();
                        return Ok(());
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MetricQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The master's signed ack: the batches it names leave the queue.
    fn take_ack(&self, settings: &MetricsSettings, payload: &[u8], inflight: &mut HashMap<u64, Instant>) {
        let ack = match decode_ack(payload, |bytes, sig| verify_node_signature(&settings.ack_key, bytes, sig)) {
            Ok(ack) if ack.node == self.node => ack,
            Ok(ack) => {
                self.counters.bad_acks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(for_node = %ack.node, "ignoring a metrics ack for another node");
                return;
            }
            Err(e) => {
                self.counters.bad_acks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "ignoring a metrics ack the master did not sign");
                return;
            }
        };
        for seq in &ack.seqs {
            inflight.remove(seq);
        }
        self.counters.acked.fetch_add(ack.seqs.len() as u64, Ordering::Relaxed);
        if let Err(e) = self.lock().ack(&ack.seqs) {
            tracing::warn!(error = %format!("{e:#}"), "cannot remove acknowledged batches from the queue (they will be sent again)");
        }
    }

    /// Sends the newest batch if it is not on its way, then the oldest
    /// ones, up to the window.
    fn fill(&self, client: &AsyncClient, topic: &str, inflight: &mut HashMap<u64, Instant>) {
        let queue = self.lock();
        let unacked = queue.unacked();
        let due = |seq: &u64, inflight: &HashMap<u64, Instant>| inflight.get(seq).is_none_or(|sent| sent.elapsed() >= RESEND_AFTER);
        // Batches dropped by the cap or acked twice are no longer on their way.
        inflight.retain(|seq, _| unacked.binary_search(seq).is_ok());
        let mut busy = inflight.values().filter(|sent| sent.elapsed() < RESEND_AFTER).count();
        let newest = unacked.last().copied();
        for seq in newest.into_iter().chain(unacked.iter().copied()) {
            if !due(&seq, inflight) {
                continue;
            }
            if Some(seq) != newest && busy >= WINDOW {
                break;
            }
            let payload = match queue.read(seq) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(seq, error = %format!("{e:#}"), "cannot read a queued batch");
                    continue;
                }
            };
            if client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_err() {
                break; // the client's buffer is full: more on the next round
            }
            inflight.insert(seq, Instant::now());
            busy += 1;
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `fogmesh-agent-NODE-XXXXXXXX`, different for every session.
fn session_client_id(node: &str) -> String {
    static SESSIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("fogmesh-agent-{node}-{:08x}", nanos ^ n.rotate_left(16) ^ std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_session_has_its_own_client_id() {
        let (a, b) = (super::session_client_id("n1"), super::session_client_id("n1"));
        assert!(a.starts_with("fogmesh-agent-n1-") && a != b, "{a} {b}");
    }
}
