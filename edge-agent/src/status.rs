//! What the agent reports about itself: the containers' observed states
//! (from the reconciler) and node conditions (from the store writer), in
//! one [`NodeStatus`] that the connector sends whenever it changes.

use std::sync::Arc;

use fogmesh_common::wire::{Condition, ContainerStatus, NodeStatus};
use tokio::sync::watch;

/// A node condition kind: the last desired state could not be written.
pub const STORE_WRITE_FAILED: &str = "StoreWriteFailed";
/// A node condition kind: the local store was missing or unreadable at boot.
pub const STORE_LOST: &str = "StoreLost";
/// A node condition kind: the master removed this node.
pub const DECOMMISSIONED: &str = "Decommissioned";
/// A node condition kind: another agent joined as this node.
pub const HANDED_OFF: &str = "HandedOff";

#[derive(Clone)]
pub struct StatusBoard {
    tx: Arc<watch::Sender<NodeStatus>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard { tx: Arc::new(watch::channel(NodeStatus::default()).0) }
    }
}

impl StatusBoard {
    pub fn subscribe(&self) -> watch::Receiver<NodeStatus> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> NodeStatus {
        self.tx.borrow().clone()
    }

    pub fn set_containers(&self, generation: u64, containers: Vec<ContainerStatus>) {
        self.tx.send_if_modified(|s| {
            let changed = s.generation != generation || s.containers != containers;
            if changed {
                s.generation = generation;
                s.containers = containers;
            }
            changed
        });
    }

    /// Raises a condition or updates its message; `since_ms` is kept.
    pub fn set_condition(&self, kind: &str, message: String) {
        self.tx.send_if_modified(|s| match s.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(c) if c.message == message => false,
            Some(c) => {
                c.message = message;
                true
            }
            None => {
                s.conditions.push(Condition { kind: kind.to_string(), message, since_ms: now_ms() });
                true
            }
        });
    }

    pub fn clear_condition(&self, kind: &str) {
        self.tx.send_if_modified(|s| {
            let before = s.conditions.len();
            s.conditions.retain(|c| c.kind != kind);
            s.conditions.len() != before
        });
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
