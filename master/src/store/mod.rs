//! The master's durable state in sled: nodes, apps, per-node desired state
//! and what agents acked and reported, join tokens, revoked certificates,
//! placements of hostless workloads. Values are JSON, readable when debugging.
//!
//! Node records and desired states are also kept in memory (write-through):
//! every agent session, metrics batch and reschedule pass reads them, and
//! decoding them from sled each time dominated the master's CPU at
//! thousands of nodes.
//!
//! Writers call [`Store::flush`] before they tell anyone (API client, agent)
//! that a change happened: nothing is acknowledged that is not on disk.
//! Every flush goes through one [`GroupFlusher`]: concurrent writers share
//! flushes, and sled never runs two at once. Writes nobody waits for (what
//! agents report) call [`Store::flush_soon`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::{Context, Result};
use fogmesh_common::wire::{DesiredState, NodeStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::flusher::GroupFlusher;
use crate::model::{AppRecord, NodeRecord, ScalingEvent, TokenRecord};
use crate::policy_keeper::AppScaling;

/// Why a node certificate is no longer valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Revocation {
    /// The node was removed: its agent must drop its workloads.
    Removed,
    /// Another agent joined as this node (`--replace`): the workloads are
    /// now that agent's, the old one must keep its hands off them.
    Replaced,
}

/// A revoked certificate as a CRL lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RevokedSerial {
    pub serial: Vec<u8>,
    pub revoked_ms: u64,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flusher: GroupFlusher,
    nodes: sled::Tree,
    /// Index of `nodes`: public IP -> node name (joins look nodes up by IP).
    node_ips: sled::Tree,
    apps: sled::Tree,
    desired: sled::Tree,
    acked: sled::Tree,
    observed: sled::Tree,
    tokens: sled::Tree,
    revoked: sled::Tree,
    /// Revoked certificates' serial numbers and when, for a CRL: fingerprint -> [`RevokedSerial`].
    revoked_serials: sled::Tree,
    placements: sled::Tree,
    meta: sled::Tree,
    /// Per app: scaling state (`m_userdata`, alert clocks, last rounds).
    scaling: sled::Tree,
    /// Per app: scaling events, keyed `APP_ID/SEQ` (SEQ zero-padded).
    events: sled::Tree,
    /// Held from reading an app's last event to writing the next: rounds,
    /// node-set hooks and agents' reports append concurrently.
    events_lock: Arc<std::sync::Mutex<()>>,
    /// What `nodes` and `desired` hold, decoded.
    cache: Arc<Cache>,
}

/// In-memory copies of the two trees read on every hot path. Each write
/// holds the map's lock across the sled insert, so sled and the copy never
/// disagree about which of two racing writes came last.
#[derive(Default)]
struct Cache {
    nodes: RwLock<BTreeMap<String, Arc<NodeRecord>>>,
    desired: RwLock<HashMap<String, Arc<DesiredState>>>,
    acked: RwLock<HashMap<String, u64>>,
    observed: RwLock<HashMap<String, Arc<NodeStatus>>>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        // sled makes its files with the umask's mode: a 0700 folder keeps
        // them private, and those it made now are tightened below.
        fogmesh_common::private_files::ensure_private_dir(dir)?;
        // Only our flusher thread flushes: no background flushes beside it.
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .with_context(|| format!("open the master store in {}", dir.display()))?;
        fogmesh_common::private_files::tighten_tree(dir, &[])?;
        let tree = |name: &str| db.open_tree(name).with_context(|| format!("open store tree {name}"));
        let flushing = db.clone();
        let flusher = GroupFlusher::start("store", move || {
            flushing.flush()?;
            Ok(())
        })?;
        let store = Store {
            flusher,
            nodes: tree("nodes")?,
            node_ips: tree("node_ips")?,
            apps: tree("apps")?,
            desired: tree("desired")?,
            acked: tree("acked")?,
            observed: tree("observed")?,
            tokens: tree("tokens")?,
            revoked: tree("revoked")?,
            revoked_serials: tree("revoked_serials")?,
            placements: tree("placements")?,
            meta: tree("meta")?,
            scaling: tree("scaling")?,
            events: tree("events")?,
            events_lock: Arc::default(),
            cache: Arc::default(),
            db,
        };
        store.load_cache()?;
        store.index_node_ips_if_missing()?;
        Ok(store)
    }

    /// Fills the in-memory copies from sled.
    fn load_cache(&self) -> Result<()> {
        *write(&self.cache.nodes) = all::<NodeRecord>(&self.nodes)?.into_iter().map(|n| (n.name.clone(), Arc::new(n))).collect();
        *write(&self.cache.desired) = keyed(&self.desired, Arc::new)?;
        *write(&self.cache.acked) = keyed(&self.acked, |a| a)?;
        *write(&self.cache.observed) = keyed(&self.observed, Arc::new)?;
        Ok(())
    }

    /// Stores written before the IP index existed: build it once.
    fn index_node_ips_if_missing(&self) -> Result<()> {
        if self.node_ips.is_empty() {
            for node in self.nodes()? {
                self.node_ips.insert(node.public_ip.as_bytes(), node.name.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Makes every write so far durable (shares a flush with concurrent callers).
    pub async fn flush(&self) -> Result<()> {
        self.flusher.flush().await
    }

    /// Makes the writes so far durable soon, without waiting.
    pub fn flush_soon(&self) {
        self.flusher.request();
    }

    /// `flush` for code outside the async runtime (`init`), before any
    /// other writer exists.
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush().context("flush the master store")?;
        Ok(())
    }

    /// A number larger than any returned before, also across restarts: used
    /// for desired-state generations, so a node re-created under an old name
    /// still sees its new state as newer.
    pub fn next_generation(&self) -> Result<u64> {
        Ok(self.db.generate_id().context("generate a generation number")? + 1)
    }

    /// Every node, by name (shared, not copied: passes over 10,000 nodes
    /// read them often).
    pub fn nodes(&self) -> Result<Vec<Arc<NodeRecord>>> {
        Ok(read(&self.cache.nodes).values().cloned().collect())
    }
    /// A copy of one node, to change and `put_node` back.
    pub fn node(&self, name: &str) -> Result<Option<NodeRecord>> {
        Ok(read(&self.cache.nodes).get(name).map(|n| NodeRecord::clone(n)))
    }
    /// Reads one field of a node without copying the record.
    pub fn with_node<T>(&self, name: &str, f: impl FnOnce(&NodeRecord) -> T) -> Option<T> {
        read(&self.cache.nodes).get(name).map(|n| f(n))
    }
    /// The node registered for `public_ip`, without reading every node.
    pub fn node_by_ip(&self, public_ip: &str) -> Result<Option<NodeRecord>> {
        match self.node_ips.get(public_ip)? {
            Some(name) => self.node(&String::from_utf8_lossy(&name)),
            None => Ok(None),
        }
    }
    pub fn put_node(&self, node: &NodeRecord) -> Result<()> {
        if self.node_ips.get(&node.public_ip)?.as_deref() != Some(node.name.as_bytes()) {
            // New, or its IP changed: the old IP no longer names it.
            if let Some(old) = self.node(&node.name)? {
                self.unindex_ip(&old);
            }
            self.node_ips.insert(node.public_ip.as_bytes(), node.name.as_bytes())?;
        }
        let mut cached = write(&self.cache.nodes);
        put(&self.nodes, &node.name, node)?;
        cached.insert(node.name.clone(), Arc::new(node.clone()));
        Ok(())
    }
    /// Changes a node in place under the node cache's lock, which
    /// `remove_node` takes too: a node removed meanwhile stays removed
    /// (`false`). `change` must not touch the public IP (its index is kept
    /// by `put_node`).
    pub fn update_node(&self, name: &str, change: impl FnOnce(&mut NodeRecord)) -> Result<bool> {
        let mut cached = write(&self.cache.nodes);
        let Some(current) = cached.get(name) else { return Ok(false) };
        let mut node = NodeRecord::clone(current);
        change(&mut node);
        anyhow::ensure!(node.public_ip == current.public_ip && node.name == name, "update_node cannot rename a node or change its IP");
        put(&self.nodes, name, &node)?;
        cached.insert(name.to_string(), Arc::new(node));
        Ok(true)
    }
    fn unindex_ip(&self, node: &NodeRecord) {
        let _ = self.node_ips.compare_and_swap(node.public_ip.as_bytes(), Some(node.name.as_bytes()), None as Option<&[u8]>);
    }
    /// Forgets a node and everything about it except that its certificate is revoked.
    pub fn remove_node(&self, name: &str) -> Result<()> {
        if let Some(old) = self.node(name)? {
            self.unindex_ip(&old);
        }
        let (mut nodes, mut desired) = (write(&self.cache.nodes), write(&self.cache.desired));
        let (mut acked, mut observed) = (write(&self.cache.acked), write(&self.cache.observed));
        for tree in [&self.nodes, &self.desired, &self.acked, &self.observed] {
            tree.remove(name)?;
        }
        nodes.remove(name);
        desired.remove(name);
        acked.remove(name);
        observed.remove(name);
        Ok(())
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        all(&self.apps)
    }
    pub fn app(&self, id: &str) -> Result<Option<AppRecord>> {
        get(&self.apps, id)
    }
    pub fn put_app(&self, app: &AppRecord) -> Result<()> {
        put(&self.apps, &app.id, app)
    }
    pub fn remove_app(&self, id: &str) -> Result<()> {
        self.apps.remove(id)?;
        self.scaling.remove(id)?;
        for key in self.events.scan_prefix(format!("{id}/")).keys() {
            self.events.remove(key?)?;
        }
        Ok(())
    }

    pub fn scaling(&self, app_id: &str) -> Result<AppScaling> {
        Ok(get(&self.scaling, app_id)?.unwrap_or_default())
    }
    pub fn put_scaling(&self, app_id: &str, state: &AppScaling) -> Result<()> {
        put(&self.scaling, app_id, state)
    }

    /// Stores an event under the next sequence number of its app and keeps
    /// only the newest `keep`; returns the sequence number.
    pub fn append_event(&self, app_id: &str, mut event: ScalingEvent, keep: usize) -> Result<u64> {
        let _one_at_a_time = self.events_lock.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = format!("{app_id}/");
        let last = self.events.scan_prefix(&prefix).keys().next_back().transpose()?;
        let last_seq = last.and_then(|k| std::str::from_utf8(&k).ok()?.strip_prefix(&prefix)?.parse::<u64>().ok()).unwrap_or(0);
        event.seq = last_seq + 1;
        put(&self.events, &format!("{prefix}{:020}", event.seq), &event)?;
        let count = self.events.scan_prefix(&prefix).count();
        for key in self.events.scan_prefix(&prefix).keys().take(count.saturating_sub(keep)) {
            self.events.remove(key?)?;
        }
        Ok(event.seq)
    }

    /// Events of an app with a sequence number above `after`, oldest first.
    pub fn events(&self, app_id: &str, after: u64, limit: usize) -> Result<Vec<ScalingEvent>> {
        let from = format!("{app_id}/{:020}", after.saturating_add(1));
        let to = format!("{app_id}0");
        self.events
            .range(from..to)
            .values()
            .take(limit)
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// The node's desired state (empty, generation 0, when it has none).
    pub fn desired(&self, node: &str) -> Result<Arc<DesiredState>> {
        Ok(read(&self.cache.desired).get(node).cloned().unwrap_or_default())
    }
    pub fn put_desired(&self, node: &str, state: DesiredState) -> Result<()> {
        let mut cached = write(&self.cache.desired);
        put(&self.desired, node, &state)?;
        cached.insert(node.to_string(), Arc::new(state));
        Ok(())
    }

    pub fn acked(&self, node: &str) -> Result<u64> {
        Ok(read(&self.cache.acked).get(node).copied().unwrap_or(0))
    }
    pub fn set_acked(&self, node: &str, generation: u64) -> Result<()> {
        let mut cached = write(&self.cache.acked);
        put(&self.acked, node, &generation)?;
        cached.insert(node.to_string(), generation);
        Ok(())
    }

    /// What the node's agent last reported (empty before its first report).
    pub fn observed(&self, node: &str) -> Result<Arc<NodeStatus>> {
        Ok(read(&self.cache.observed).get(node).cloned().unwrap_or_default())
    }
    pub fn set_observed(&self, node: &str, status: &NodeStatus) -> Result<()> {
        let mut cached = write(&self.cache.observed);
        put(&self.observed, node, status)?;
        cached.insert(node.to_string(), Arc::new(status.clone()));
        Ok(())
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        get(&self.tokens, id)
    }
    pub fn put_token(&self, id: &str, token: &TokenRecord) -> Result<()> {
        put(&self.tokens, id, token)
    }

    /// Revokes a certificate; with its serial number, brokers outside the
    /// master learn it from the CRL.
    pub fn revoke(&self, cert_fingerprint: &str, why: Revocation, serial: Option<Vec<u8>>) -> Result<()> {
        if let Some(serial) = serial {
            put(&self.revoked_serials, cert_fingerprint, &RevokedSerial { serial, revoked_ms: crate::model::now_ms() })?;
        }
        put(&self.revoked, cert_fingerprint, &why)
    }
    /// Every revoked certificate whose serial number is known.
    pub fn revoked_serials(&self) -> Result<Vec<RevokedSerial>> {
        Ok(keyed(&self.revoked_serials, |r: RevokedSerial| r)?.into_values().collect())
    }
    /// Why a certificate was revoked, if it was.
    pub fn revocation(&self, cert_fingerprint: &str) -> Result<Option<Revocation>> {
        // Certificates revoked before reasons were kept count as removed.
        match self.revoked.get(cert_fingerprint)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or(Revocation::Removed))),
        }
    }

    /// Nodes chosen for each replica of hostless workloads, keyed `APP/WORKLOAD`.
    pub fn placements(&self) -> Result<BTreeMap<String, Vec<String>>> {
        Ok(get(&self.placements, "all")?.unwrap_or_default())
    }
    pub fn set_placements(&self, placements: &BTreeMap<String, Vec<String>>) -> Result<()> {
        put(&self.placements, "all", placements)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        get(&self.meta, key)
    }
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        put(&self.meta, key, &value)
    }
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>> {
    match tree.get(key)? {
        Some(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("corrupt store record '{key}'"))?,
        )),
        None => Ok(None),
    }
}

fn put<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<()> {
    tree.insert(key, serde_json::to_vec(value)?)?;
    Ok(())
}

/// Every record of a tree by key, decoded and wrapped by `wrap`.
fn keyed<T: DeserializeOwned, W>(tree: &sled::Tree, wrap: impl Fn(T) -> W) -> Result<HashMap<String, W>> {
    tree.iter()
        .map(|entry| {
            let (key, bytes) = entry?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let value = serde_json::from_slice(&bytes).with_context(|| format!("corrupt store record '{key}'"))?;
            Ok((key, wrap(value)))
        })
        .collect()
}

fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>> {
    tree.iter()
        .map(|entry| {
            let (key, bytes) = entry?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("corrupt store record '{}'", String::from_utf8_lossy(&key)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str) -> NodeRecord {
        NodeRecord::declared(name, ip)
    }

    #[test]
    fn an_update_never_brings_back_a_removed_node_nor_moves_one() {
        let dir = std::env::temp_dir().join(format!("fogmesh-store-update-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.put_node(&node("a", "10.0.0.1")).unwrap();
        assert!(store.update_node("a", |n| n.last_seen_ms = Some(5)).unwrap());
        assert_eq!(store.node("a").unwrap().unwrap().last_seen_ms, Some(5));
        assert!(store.update_node("a", |n| n.public_ip = "10.0.0.2".into()).is_err());
        store.remove_node("a").unwrap();
        assert!(!store.update_node("a", |n| n.last_seen_ms = Some(6)).unwrap());
        assert!(store.node("a").unwrap().is_none());
        assert!(store.nodes.get("a").unwrap().is_none(), "the removed node is back on disk");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_in_memory_copies_hold_what_sled_holds() {
        let dir = std::env::temp_dir().join(format!("fogmesh-store-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        {
            for (name, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
                store.put_node(&node(name, ip)).unwrap();
                store.put_desired(name, DesiredState { generation: 7, ..Default::default() }).unwrap();
                store.set_acked(name, 6).unwrap();
                store.set_observed(name, &NodeStatus { generation: 6, ..Default::default() }).unwrap();
            }
            let mut moved = node("b", "10.0.0.9");
            moved.labels.push(("zone".into(), "x".into()));
            store.put_node(&moved).unwrap();
            store.put_desired("b", DesiredState { generation: 8, ..Default::default() }).unwrap();
            store.remove_node("c").unwrap();
            assert_eq!(store.node("b").unwrap().unwrap().labels, [("zone".to_string(), "x".to_string())]);
        }
        // What sled holds, read back into fresh copies, is what the copies said.
        *write(&store.cache.nodes) = Default::default();
        *write(&store.cache.desired) = Default::default();
        *write(&store.cache.acked) = Default::default();
        *write(&store.cache.observed) = Default::default();
        assert!(store.nodes().unwrap().is_empty());
        store.load_cache().unwrap();
        let names: Vec<String> = store.nodes().unwrap().into_iter().map(|n| n.name.clone()).collect();
        assert_eq!(names, ["a", "b"], "by name, without the removed node");
        assert_eq!(store.node("b").unwrap().unwrap().public_ip, "10.0.0.9");
        assert_eq!(store.with_node("b", |n| n.labels.len()), Some(1));
        assert_eq!((store.desired("a").unwrap().generation, store.desired("b").unwrap().generation), (7, 8));
        assert_eq!((store.acked("a").unwrap(), store.observed("a").unwrap().generation), (6, 6));
        assert_eq!(store.desired("c").unwrap().generation, 0, "removed with its node");
        assert_eq!((store.acked("c").unwrap(), store.observed("c").unwrap().generation), (0, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nodes_are_found_by_ip_after_moves_removals_and_a_rebuild() {
        let dir = std::env::temp_dir().join(format!("fogmesh-store-ip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.put_node(&node("a", "10.0.0.1")).unwrap();
        store.put_node(&node("b", "10.0.0.2")).unwrap();
        store.put_node(&node("a", "10.0.0.3")).unwrap();
        assert!(store.node_by_ip("10.0.0.1").unwrap().is_none(), "a moved away from .1");
        assert_eq!(store.node_by_ip("10.0.0.3").unwrap().map(|n| n.name), Some("a".into()));
        store.remove_node("b").unwrap();
        assert!(store.node_by_ip("10.0.0.2").unwrap().is_none());
        // A store from before the index gets it at open.
        store.node_ips.clear().unwrap();
        store.index_node_ips_if_missing().unwrap();
        assert_eq!(store.node_by_ip("10.0.0.3").unwrap().map(|n| n.name), Some("a".into()));
        assert!(store.node_by_ip("10.0.0.2").unwrap().is_none());
    }
}
