//! The master's domain core, shared by the REST API and the QUIC server: the
//! store, the cluster CA, which agents are connected, and rescheduling.
//!
//! Invariant: every change to apps or nodes goes through [`Cluster::reschedule`],
//! which writes each changed node's desired state under a new generation,
//! flushes, and only then wakes the connections that push it to agents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use fogmesh_common::pki::ClusterCa;
use fogmesh_common::wire::DesiredState;
use tokio::sync::watch;

use crate::model::{now_ms, NodeRecord, NodeState};
use crate::scheduler;
use crate::store::Store;

pub struct ClusterConfig {
    /// A joined node silent for longer than this is shown offline.
    pub offline_after: Duration,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
}

pub struct Cluster {
    pub store: Store,
    pub ca: ClusterCa,
    pub config: ClusterConfig,
    /// Connected agents: node name -> connection id (newest wins).
    connected: Mutex<HashMap<String, u64>>,
    /// Bumped after desired states changed and were flushed.
    desired_changed: watch::Sender<u64>,
    /// Serialises rescheduling so generations are assigned in order.
    schedule_lock: tokio::sync::Mutex<()>,
}

impl Cluster {
    pub fn new(store: Store, ca: ClusterCa, config: ClusterConfig) -> Arc<Cluster> {
        Arc::new(Cluster {
            store,
            ca,
            config,
            connected: Mutex::new(HashMap::new()),
            desired_changed: watch::channel(0).0,
            schedule_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// A receiver that wakes whenever some node's desired state changed.
    pub fn watch_desired(&self) -> watch::Receiver<u64> {
        self.desired_changed.subscribe()
    }

    pub fn node_state(&self, node: &NodeRecord) -> NodeState {
        if node.cert_fingerprint.is_none() {
            return NodeState::Pending;
        }
        let connected = self.lock_connected().contains_key(&node.name);
        let recent = node
            .last_seen_ms
            .is_some_and(|seen| now_ms().saturating_sub(seen) <= self.config.offline_after.as_millis() as u64);
        if connected && recent {
            NodeState::Ready
        } else {
            NodeState::Offline
        }
    }

    pub fn mark_connected(&self, node: &str, connection: u64) {
        self.lock_connected().insert(node.to_string(), connection);
    }

    /// Forgets the connection unless a newer one of the same node replaced it.
    pub fn mark_disconnected(&self, node: &str, connection: u64) {
        let mut map = self.lock_connected();
        if map.get(node) == Some(&connection) {
            map.remove(node);
        }
    }

    pub fn is_current_connection(&self, node: &str, connection: u64) -> bool {
        self.lock_connected().get(node) == Some(&connection)
    }

    fn lock_connected(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.connected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recomputes every node's containers; stores changed desired states with
    /// new generations, flushes, then notifies connections.
    pub async fn reschedule(&self) -> Result<()> {
        let _guard = self.schedule_lock.lock().await;
        let apps = self.store.apps()?;
        let nodes: Vec<(NodeRecord, NodeState)> = self
            .store
            .nodes()?
            .into_iter()
            .map(|n| {
                let state = self.node_state(&n);
                (n, state)
            })
            .collect();
        let previous = self.store.placements()?;
        let plan = scheduler::schedule(&apps, &nodes, &previous);
        let mut changed = 0;
        for (node, containers) in &plan.per_node {
            let current = self.store.desired(node)?;
            if current.containers != *containers || current.generation == 0 {
                let state = DesiredState {
                    generation: self.store.next_generation()?,
                    containers: containers.clone(),
                };
                self.store.put_desired(node, &state)?;
                changed += 1;
                tracing::info!(node = %node, generation = state.generation, containers = containers.len(), "desired state changed");
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
        Ok(())
    }

    /// Makes every agent connection re-check its node (desired state, registration).
    pub fn wake_connections(&self) {
        self.desired_changed.send_modify(|n| *n += 1);
    }

    /// Why workloads are not placed, keyed `APP_ID/WORKLOAD`, as of the last reschedule.
    pub fn pending_reasons(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(match self.store.meta("pending")? {
            Some(json) => serde_json::from_str(&json)?,
            None => Default::default(),
        })
    }
}
