//! The master's domain core, shared by the REST API and the QUIC server: the
//! store, the cluster CA, which agents are connected and when they were last
//! heard, and rescheduling.
//!
//! Invariants:
//! - Every change to apps or nodes happens under [`Cluster::write_lock`] and
//!   goes through [`Cluster::reschedule_locked`], which writes each changed
//!   node's desired state under a new generation, flushes, and only then
//!   wakes the connections that push it to agents. Writes are therefore
//!   serialised: app revisions are unique and increase, and an update that
//!   races a delete either lands before it or finds the app gone.
//! - What agents report (heartbeats, acks, status) never waits for a disk
//!   flush: liveness lives in memory, the rest is flushed by the group
//!   flusher soon after.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use fogmesh_common::pki::ClusterCa;
use fogmesh_common::wire::DesiredState;
use tokio::sync::{watch, MutexGuard};

use crate::model::{now_ms, NodeRecord, NodeState, Pending};
use crate::scheduler;
use crate::store::Store;

pub struct ClusterConfig {
    /// A joined node silent for longer than this is shown offline.
    pub offline_after: Duration,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// `HOST:PORT` agents dial, for hints like the join command.
    pub agent_endpoint: String,
    /// Where agents send metrics, and how often.
    pub metrics: fogmesh_common::wire::MetricsSettings,
    /// Seconds between two rounds of a scaling policy without its own `interval`.
    pub scaling_period: Duration,
    /// How long node certificates live; agents renew at two thirds.
    pub node_cert_lifetime: Duration,
}

pub struct Cluster {
    pub store: Store,
    pub ca: ClusterCa,
    pub config: ClusterConfig,
    /// Connected agents: node name -> connection id (newest wins).
    connected: Mutex<HashMap<String, u64>>,
    /// When each node was last heard from (unix ms); persisted on disconnect.
    last_seen: Mutex<HashMap<String, u64>>,
    /// Bumped after desired states changed and were flushed.
    desired_changed: watch::Sender<u64>,
    /// Bumped when a certificate was revoked (node removed or replaced):
    /// every door that holds a node's session re-checks it.
    revocations: watch::Sender<u64>,
    /// Bumped on anything an app view shows (acks, status, nodes, apps):
    /// what rollout watchers wait on.
    changes: watch::Sender<u64>,
    /// Serialises every write of apps and nodes and their rescheduling.
    write_lock: tokio::sync::Mutex<()>,
    /// Asks the background rescheduler for a pass (see [`Cluster::reschedule_soon`]).
    reschedule_wanted: tokio::sync::Notify,
    /// What metrics ingest counted (set when metrics start): the nodes'
    /// `MetricsRefused` conditions come from it.
    pub ingest: std::sync::OnceLock<Arc<crate::metrics::ingest::IngestCounters>>,
}

impl Cluster {
    pub fn new(store: Store, ca: ClusterCa, config: ClusterConfig) -> Arc<Cluster> {
        Arc::new(Cluster {
            store,
            ca,
            config,
            connected: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            desired_changed: watch::channel(0).0,
            revocations: watch::channel(0).0,
            changes: watch::channel(0).0,
            write_lock: tokio::sync::Mutex::new(()),
            reschedule_wanted: tokio::sync::Notify::new(),
            ingest: std::sync::OnceLock::new(),
        })
    }

    /// Asks for a reschedule without waiting for it: many nodes connecting
    /// at once (a master restart) cost one pass, not one each.
    pub fn reschedule_soon(&self) {
        self.reschedule_wanted.notify_one();
    }

    /// Runs the passes [`Cluster::reschedule_soon`] asks for, coalesced.
    pub async fn reschedule_forever(self: Arc<Self>) {
        loop {
            self.reschedule_wanted.notified().await;
            // Let a burst of connects arrive first.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let started = tokio::time::Instant::now();
            if let Err(e) = self.reschedule().await {
                tracing::error!(error = %format!("{e:#}"), "rescheduling failed");
            }
            // A pass reads every node: with thousands of agents connecting,
            // back-to-back passes took the master's whole core and sessions
            // timed out. Passes asked for meanwhile wait, so these get at
            // most a fifth of the time.
            tokio::time::sleep(started.elapsed() * 4).await;
        }
    }

    /// Holds off every other write of apps and nodes until dropped.
    pub async fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    /// A receiver that wakes whenever some node's desired state changed.
    pub fn watch_desired(&self) -> watch::Receiver<u64> {
        self.desired_changed.subscribe()
    }

    /// The change counter and a receiver for its next bumps.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn note_change(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Waits until the change counter passes `after`, or `timeout`; returns
    /// at once when it already has.
    pub async fn wait_for_change(&self, after: u64, timeout: Duration) {
        let mut rx = self.watch_changes();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n > after)).await;
    }

    pub fn node_state(&self, node: &NodeRecord) -> NodeState {
        if node.cert_fingerprint.is_none() {
            return NodeState::Pending;
        }
        let connected = lock(&self.connected).contains_key(&node.name);
        let recent = self
            .last_seen(node)
            .is_some_and(|seen| now_ms().saturating_sub(seen) <= self.config.offline_after.as_millis() as u64);
        if connected && recent {
            NodeState::Ready
        } else {
            NodeState::Offline
        }
    }

    /// When the node's agent was last heard from, in memory or as stored.
    pub fn last_seen(&self, node: &NodeRecord) -> Option<u64> {
        lock(&self.last_seen).get(&node.name).copied().or(node.last_seen_ms)
    }

    /// Records that a node's agent spoke; memory only, no disk write.
    pub fn record_seen(&self, node: &str) {
        lock(&self.last_seen).insert(node.to_string(), now_ms());
    }

    pub fn mark_connected(&self, node: &str, connection: u64) {
        lock(&self.connected).insert(node.to_string(), connection);
        self.record_seen(node);
        self.note_change();
    }

    /// Forgets the connection unless a newer one of the same node replaced
    /// it, and keeps the last-seen time in the store for `node list` after a
    /// master restart.
    pub fn mark_disconnected(&self, node: &str, connection: u64) {
        {
            let mut map = lock(&self.connected);
            if map.get(node) != Some(&connection) {
                return;
            }
            map.remove(node);
        }
        let seen = lock(&self.last_seen).get(node).copied();
        // In place: a node removed meanwhile must not be written back.
        if let Some(seen) = seen {
            if let Ok(true) = self.store.update_node(node, |record| record.last_seen_ms = Some(seen)) {
                self.store.flush_soon();
            }
        }
        self.note_change();
    }

    pub fn is_current_connection(&self, node: &str, connection: u64) -> bool {
        lock(&self.connected).get(node) == Some(&connection)
    }

    pub fn connected_count(&self) -> usize {
        lock(&self.connected).len()
    }

    /// Takes the write lock and reschedules.
    pub async fn reschedule(&self) -> Result<()> {
        let _guard = self.write_lock().await;
        self.reschedule_locked().await
    }

    /// Recomputes every node's containers; stores changed desired states with
    /// new generations, flushes, then notifies connections. The caller holds
    /// the write lock.
    pub async fn reschedule_locked(&self) -> Result<()> {
        let apps = self.store.apps()?;
        let nodes: Vec<(Arc<NodeRecord>, NodeState)> = self
            .store
            .nodes()?
            .into_iter()
            .map(|n| {
                let state = self.node_state(&n);
                (n, state)
            })
            .collect();
        let previous = self.store.placements()?;
        let plan = scheduler::schedule(&apps, &nodes, &previous, &self.config.agent_endpoint);
        let mut local = crate::policy_keeper::local_policies(&apps, &plan.per_node);
        let mut changed = 0;
        for (node, containers) in &plan.per_node {
            let current = self.store.desired(node)?;
            let metrics = plan.metrics.get(node).cloned().unwrap_or_default();
            let policies = local.remove(node).unwrap_or_default();
            if current.containers != *containers || current.metrics != metrics || current.policies != policies || current.generation == 0 {
                let generation = self.store.next_generation()?;
                self.store.put_desired(node, DesiredState { generation, containers: containers.clone(), metrics, policies })?;
                changed += 1;
                tracing::info!(node = %node, generation, containers = containers.len(), "desired state changed");
            }
        }
        if plan.placements != previous {
            self.store.set_placements(&plan.placements)?;
        }
        self.store.set_meta("pending", &serde_json::to_string(&plan.pending)?)?;
        self.store.flush().await?;
        if changed > 0 {
            self.wake_connections();
        }
        self.note_change();
        Ok(())
    }

    /// Makes every agent connection re-check its node (desired state, registration).
    pub fn wake_connections(&self) {
        self.desired_changed.send_modify(|n| *n += 1);
    }

    /// A receiver that wakes after every revocation.
    pub fn watch_revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// Tells every door (QUIC sessions, the MQTT door) that some certificate
    /// was revoked, so a session of that node ends now, not at its next connect.
    pub fn note_revocation(&self) {
        self.revocations.send_modify(|n| *n += 1);
        self.wake_connections();
    }

    /// Why workloads are not placed, keyed `APP_ID/WORKLOAD`, as of the last reschedule.
    pub fn pending_reasons(&self) -> Result<BTreeMap<String, Pending>> {
        Ok(match self.store.meta("pending")? {
            Some(json) => serde_json::from_str(&json).unwrap_or_default(),
            None => Default::default(),
        })
    }
}

/// A panic while holding one of these maps cannot leave it inconsistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
