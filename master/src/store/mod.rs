//! The master's durable state: nodes, apps, per-node desired state and what
//! agents acked and reported, join tokens, revoked certificates, placements
//! of hostless workloads, scaling state and events. Values are JSON,
//! readable when debugging.
//!
//! [`Store`] is what the rest of the master uses; where the records live is
//! a [`Backend`]: named tables of string keys and byte values, read
//! directly and changed only through a [`WriteTxn`] that commits several
//! changes at once. One backend today, [`redb`] (one file,
//! `DIR/fogmesh.redb`); a distributed one (etcd) can implement the same two
//! traits. What a store folder written by earlier versions (sled) needs at
//! open is [`migrate`]'s job.
//!
//! Node records, desired states, acked generations and observed statuses
//! are also kept in memory (write-through): every agent session, metrics
//! batch and reschedule pass reads them, and decoding them from disk each
//! time dominated the master's CPU at thousands of nodes.
//!
//! Durability: a commit is visible at once and durable after the next
//! [`Backend::sync`]. Writers call [`Store::flush`] before they tell anyone
//! (API client, agent) that a change happened: nothing is acknowledged that
//! is not on disk. Every flush goes through one [`GroupFlusher`]: concurrent
//! writers share one sync. Writes nobody waits for (what agents report)
//! call [`Store::flush_soon`].

mod migrate;
pub mod redb;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::{Context, Result};
use fogmesh_common::wire::{DesiredState, NodeStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::flusher::GroupFlusher;
use crate::model::{AppRecord, NodeRecord, ScalingEvent, TokenRecord};
use crate::policy_keeper::AppScaling;

/// The records of a table in key order: key, value.
pub type Records = Vec<(String, Vec<u8>)>;

/// Where the store's records live: tables by name, string keys, byte
/// values. Reads see every committed write. A commit is atomic and visible
/// at once; it is durable once a [`Backend::sync`] that started after it
/// has returned.
pub trait Backend: Send + Sync + 'static {
    /// One record (`None`: no such key, or no such table).
    fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// The records with keys in `from..to` (`to: None`: to the end), in key order.
    fn range(&self, table: &str, from: &str, to: Option<&str>) -> Result<Records>;
    /// Starts a write transaction. One at a time: this waits for the one in
    /// progress (dropping a transaction without committing discards it).
    fn write(&self) -> Result<Box<dyn WriteTxn + '_>>;
    /// Makes every commit so far durable.
    fn sync(&self) -> Result<()>;
}

/// Changes that are committed together or not at all; its reads see its
/// own changes.
pub trait WriteTxn {
    fn get(&mut self, table: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// The keys in `from..to` (`to: None`: to the end), in key order.
    fn keys(&mut self, table: &str, from: &str, to: Option<&str>) -> Result<Vec<String>>;
    fn put(&mut self, table: &str, key: &str, value: &[u8]) -> Result<()>;
    fn remove(&mut self, table: &str, key: &str) -> Result<()>;
    /// Applies every change at once: visible now, durable after the next sync.
    fn commit(self: Box<Self>) -> Result<()>;
}

// The tables. The names are those of the sled trees they came from.
const NODES: &str = "nodes";
/// Index of `nodes`: public IP -> node name (joins look nodes up by IP).
const NODE_IPS: &str = "node_ips";
const APPS: &str = "apps";
const DESIRED: &str = "desired";
const ACKED: &str = "acked";
const OBSERVED: &str = "observed";
const TOKENS: &str = "tokens";
const REVOKED: &str = "revoked";
/// Revoked certificates' serial numbers and when, for a CRL: fingerprint -> [`RevokedSerial`].
const REVOKED_SERIALS: &str = "revoked_serials";
const PLACEMENTS: &str = "placements";
const META: &str = "meta";
/// Per app: scaling state (`m_userdata`, alert clocks, last rounds).
const SCALING: &str = "scaling";
/// Per app: scaling events, keyed `APP_ID/SEQ` (SEQ zero-padded).
const EVENTS: &str = "events";
/// Store-wide counters: [`GENERATION_KEY`].
const COUNTERS: &str = "counters";
/// Every generation up to this one may have been handed out (JSON u64).
const GENERATION_KEY: &str = "generation_reserved";

/// Every table of the store (created at open, so reads never miss one).
pub const TABLES: [&str; 14] =
    [NODES, NODE_IPS, APPS, DESIRED, ACKED, OBSERVED, TOKENS, REVOKED, REVOKED_SERIALS, PLACEMENTS, META, SCALING, EVENTS, COUNTERS];

/// Generations are reserved this many at a time: the reservation is
/// synced before the first of them is handed out, so a restart (which
/// starts after the reservation) never hands out one twice.
const GENERATION_BLOCK: u64 = 100_000;

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
    db: Arc<dyn Backend>,
    flusher: GroupFlusher,
    /// Held from reading an app's last event to writing the next: rounds,
    /// node-set hooks and agents' reports append concurrently.
    events_lock: Arc<Mutex<()>>,
    generations: Arc<Mutex<Generations>>,
    /// What `nodes`, `desired`, `acked` and `observed` hold, decoded.
    cache: Arc<Cache>,
}

struct Generations {
    next: u64,
    /// The highest generation the store has reserved (durably).
    reserved: u64,
}

/// In-memory copies of the tables read on every hot path. Each write holds
/// the map's lock from before its commit until the copy is updated, so the
/// store and the copy never disagree about which of two racing writes came
/// last. Lock order: the backend's write transaction first, then these
/// locks (a writer waiting for the transaction must not hold a lock that
/// the writer in it needs).
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

fn json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

impl Store {
    /// Opens the store in `dir` (made if missing; a sled store left there
    /// by an earlier version is migrated first).
    pub fn open(dir: &Path) -> Result<Store> {
        // redb makes its file with the umask's mode: a 0700 folder keeps
        // it private, and what it made is tightened below.
        let file = migrate::prepare(dir)?;
        let backend = redb::RedbBackend::open(&file, &TABLES)?;
        fogmesh_common::private_files::tighten_tree(dir, &[])?;
        Store::with_backend(Arc::new(backend))
    }

    /// A store on `db`, whose tables exist.
    pub fn with_backend(db: Arc<dyn Backend>) -> Result<Store> {
        // The flusher must not keep the backend open (a store reopened
        // after its last handle dropped would find its file still locked).
        let syncing = Arc::downgrade(&db);
        let flusher = GroupFlusher::start("store", move || match syncing.upgrade() {
            Some(db) => db.sync(),
            None => Ok(()),
        })?;
        let reserved = match db.get(COUNTERS, GENERATION_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("corrupt store record '{GENERATION_KEY}' in table {COUNTERS}"))?,
            None => 0,
        };
        let store = Store {
            db,
            flusher,
            events_lock: Arc::default(),
            generations: Arc::new(Mutex::new(Generations { next: reserved + 1, reserved })),
            cache: Arc::default(),
        };
        store.load_cache()?;
        store.index_node_ips_if_missing()?;
        Ok(store)
    }

    /// Fills the in-memory copies from the backend.
    fn load_cache(&self) -> Result<()> {
        *write(&self.cache.nodes) = all::<NodeRecord>(&*self.db, NODES)?.into_iter().map(|n| (n.name.clone(), Arc::new(n))).collect();
        *write(&self.cache.desired) = keyed(&*self.db, DESIRED, Arc::new)?;
        *write(&self.cache.acked) = keyed(&*self.db, ACKED, |a| a)?;
        *write(&self.cache.observed) = keyed(&*self.db, OBSERVED, Arc::new)?;
        Ok(())
    }

    /// Stores written before the IP index existed: build it once.
    fn index_node_ips_if_missing(&self) -> Result<()> {
        let nodes = self.nodes()?;
        if nodes.is_empty() || !self.db.range(NODE_IPS, "", None)?.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.write()?;
        for node in nodes {
            txn.put(NODE_IPS, &node.public_ip, node.name.as_bytes())?;
        }
        txn.commit()
    }

    /// One record in a transaction of its own.
    fn put<T: Serialize + ?Sized>(&self, table: &str, key: &str, value: &T) -> Result<()> {
        let mut txn = self.db.write()?;
        txn.put(table, key, &json(value)?)?;
        txn.commit()
    }

    fn get<T: DeserializeOwned>(&self, table: &str, key: &str) -> Result<Option<T>> {
        match self.db.get(table, key)? {
            Some(bytes) => Ok(Some(decode(table, key, &bytes)?)),
            None => Ok(None),
        }
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
        self.db.sync().context("flush the master store")
    }

    /// A number larger than any returned before, also across restarts: used
    /// for desired-state generations, so a node re-created under an old name
    /// still sees its new state as newer.
    pub fn next_generation(&self) -> Result<u64> {
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if g.next > g.reserved {
            let reserved = g.next + GENERATION_BLOCK - 1;
            let mut txn = self.db.write()?;
            txn.put(COUNTERS, GENERATION_KEY, &json(&reserved)?)?;
            txn.commit()?;
            // Durable before any of the block is handed out: some never
            // reach the store (a removed node's last, empty state).
            self.db.sync().context("reserve desired-state generations")?;
            g.reserved = reserved;
        }
        let generation = g.next;
        g.next += 1;
        Ok(generation)
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
        match self.db.get(NODE_IPS, public_ip)? {
            Some(name) => self.node(&String::from_utf8_lossy(&name)),
            None => Ok(None),
        }
    }
    /// Stores a node and its IP in the index, in one commit.
    pub fn put_node(&self, node: &NodeRecord) -> Result<()> {
        let mut txn = self.db.write()?;
        let mut cached = write(&self.cache.nodes);
        if txn.get(NODE_IPS, &node.public_ip)?.as_deref() != Some(node.name.as_bytes()) {
            // New, or its IP changed: the old IP no longer names it.
            if let Some(old) = cached.get(&node.name) {
                unindex_ip(&mut *txn, old)?;
            }
            txn.put(NODE_IPS, &node.public_ip, node.name.as_bytes())?;
        }
        txn.put(NODES, &node.name, &json(node)?)?;
        txn.commit()?;
        cached.insert(node.name.clone(), Arc::new(node.clone()));
        Ok(())
    }
    /// Changes a node in place under the node cache's lock, which
    /// `remove_node` takes too: a node removed meanwhile stays removed
    /// (`false`). `change` must not touch the public IP (its index is kept
    /// by `put_node`).
    pub fn update_node(&self, name: &str, change: impl FnOnce(&mut NodeRecord)) -> Result<bool> {
        let mut txn = self.db.write()?;
        let mut cached = write(&self.cache.nodes);
        let Some(current) = cached.get(name) else { return Ok(false) };
        let mut node = NodeRecord::clone(current);
        change(&mut node);
        anyhow::ensure!(node.public_ip == current.public_ip && node.name == name, "update_node cannot rename a node or change its IP");
        txn.put(NODES, name, &json(&node)?)?;
        txn.commit()?;
        cached.insert(name.to_string(), Arc::new(node));
        Ok(true)
    }
    /// Forgets a node and everything about it except that its certificate is revoked.
    pub fn remove_node(&self, name: &str) -> Result<()> {
        let mut txn = self.db.write()?;
        let (mut nodes, mut desired) = (write(&self.cache.nodes), write(&self.cache.desired));
        let (mut acked, mut observed) = (write(&self.cache.acked), write(&self.cache.observed));
        if let Some(old) = nodes.get(name) {
            unindex_ip(&mut *txn, old)?;
        }
        for table in [NODES, DESIRED, ACKED, OBSERVED] {
            txn.remove(table, name)?;
        }
        txn.commit()?;
        nodes.remove(name);
        desired.remove(name);
        acked.remove(name);
        observed.remove(name);
        Ok(())
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        all(&*self.db, APPS)
    }
    pub fn app(&self, id: &str) -> Result<Option<AppRecord>> {
        self.get(APPS, id)
    }
    pub fn put_app(&self, app: &AppRecord) -> Result<()> {
        self.put(APPS, &app.id, app)
    }
    /// Removes an app with its scaling state and events, in one commit.
    pub fn remove_app(&self, id: &str) -> Result<()> {
        let mut txn = self.db.write()?;
        txn.remove(APPS, id)?;
        txn.remove(SCALING, id)?;
        for key in txn.keys(EVENTS, &format!("{id}/"), Some(&format!("{id}0")))? {
            txn.remove(EVENTS, &key)?;
        }
        txn.commit()
    }

    pub fn scaling(&self, app_id: &str) -> Result<AppScaling> {
        Ok(self.get(SCALING, app_id)?.unwrap_or_default())
    }
    pub fn put_scaling(&self, app_id: &str, state: &AppScaling) -> Result<()> {
        self.put(SCALING, app_id, state)
    }

    /// Stores an event under the next sequence number of its app and keeps
    /// only the newest `keep`; returns the sequence number.
    pub fn append_event(&self, app_id: &str, mut event: ScalingEvent, keep: usize) -> Result<u64> {
        let _one_at_a_time = self.events_lock.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = format!("{app_id}/");
        let mut txn = self.db.write()?;
        let mut keys = txn.keys(EVENTS, &prefix, Some(&format!("{app_id}0")))?;
        let last_seq = keys.last().and_then(|k| k.strip_prefix(&prefix)?.parse::<u64>().ok()).unwrap_or(0);
        event.seq = last_seq + 1;
        let key = format!("{prefix}{:020}", event.seq);
        txn.put(EVENTS, &key, &json(&event)?)?;
        keys.push(key);
        for old in keys.iter().take(keys.len().saturating_sub(keep)) {
            txn.remove(EVENTS, old)?;
        }
        txn.commit()?;
        Ok(event.seq)
    }

    /// Events of an app with a sequence number above `after`, oldest first.
    pub fn events(&self, app_id: &str, after: u64, limit: usize) -> Result<Vec<ScalingEvent>> {
        let from = format!("{app_id}/{:020}", after.saturating_add(1));
        let to = format!("{app_id}0");
        self.db
            .range(EVENTS, &from, Some(&to))?
            .into_iter()
            .take(limit)
            .map(|(key, bytes)| decode(EVENTS, &key, &bytes))
            .collect()
    }

    /// The node's desired state (empty, generation 0, when it has none).
    pub fn desired(&self, node: &str) -> Result<Arc<DesiredState>> {
        Ok(read(&self.cache.desired).get(node).cloned().unwrap_or_default())
    }
    pub fn put_desired(&self, node: &str, state: DesiredState) -> Result<()> {
        let mut txn = self.db.write()?;
        let mut cached = write(&self.cache.desired);
        txn.put(DESIRED, node, &json(&state)?)?;
        txn.commit()?;
        cached.insert(node.to_string(), Arc::new(state));
        Ok(())
    }

    pub fn acked(&self, node: &str) -> Result<u64> {
        Ok(read(&self.cache.acked).get(node).copied().unwrap_or(0))
    }
    pub fn set_acked(&self, node: &str, generation: u64) -> Result<()> {
        let mut txn = self.db.write()?;
        let mut cached = write(&self.cache.acked);
        txn.put(ACKED, node, &json(&generation)?)?;
        txn.commit()?;
        cached.insert(node.to_string(), generation);
        Ok(())
    }

    /// What the node's agent last reported (empty before its first report).
    pub fn observed(&self, node: &str) -> Result<Arc<NodeStatus>> {
        Ok(read(&self.cache.observed).get(node).cloned().unwrap_or_default())
    }
    pub fn set_observed(&self, node: &str, status: &NodeStatus) -> Result<()> {
        let mut txn = self.db.write()?;
        let mut cached = write(&self.cache.observed);
        txn.put(OBSERVED, node, &json(status)?)?;
        txn.commit()?;
        cached.insert(node.to_string(), Arc::new(status.clone()));
        Ok(())
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.get(TOKENS, id)
    }
    pub fn put_token(&self, id: &str, token: &TokenRecord) -> Result<()> {
        self.put(TOKENS, id, token)
    }

    /// Revokes a certificate; with its serial number, brokers outside the
    /// master learn it from the CRL.
    pub fn revoke(&self, cert_fingerprint: &str, why: Revocation, serial: Option<Vec<u8>>) -> Result<()> {
        let mut txn = self.db.write()?;
        if let Some(serial) = serial {
            txn.put(REVOKED_SERIALS, cert_fingerprint, &json(&RevokedSerial { serial, revoked_ms: crate::model::now_ms() })?)?;
        }
        txn.put(REVOKED, cert_fingerprint, &json(&why)?)?;
        txn.commit()
    }
    /// Every revoked certificate whose serial number is known.
    pub fn revoked_serials(&self) -> Result<Vec<RevokedSerial>> {
        all(&*self.db, REVOKED_SERIALS)
    }
    /// Why a certificate was revoked, if it was.
    pub fn revocation(&self, cert_fingerprint: &str) -> Result<Option<Revocation>> {
        // Certificates revoked before reasons were kept count as removed.
        match self.db.get(REVOKED, cert_fingerprint)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or(Revocation::Removed))),
        }
    }

    /// Nodes chosen for each replica of hostless workloads, keyed `APP/WORKLOAD`.
    pub fn placements(&self) -> Result<BTreeMap<String, Vec<String>>> {
        Ok(self.get(PLACEMENTS, "all")?.unwrap_or_default())
    }
    pub fn set_placements(&self, placements: &BTreeMap<String, Vec<String>>) -> Result<()> {
        self.put(PLACEMENTS, "all", placements)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.get(META, key)
    }
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.put(META, key, value)
    }
}

/// Drops `node`'s IP from the index if the index still names it there.
fn unindex_ip(txn: &mut dyn WriteTxn, node: &NodeRecord) -> Result<()> {
    if txn.get(NODE_IPS, &node.public_ip)?.as_deref() == Some(node.name.as_bytes()) {
        txn.remove(NODE_IPS, &node.public_ip)?;
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("corrupt store record '{key}' in table {table}"))
}

/// Every record of a table by key, decoded and wrapped by `wrap`.
fn keyed<T: DeserializeOwned, W>(db: &dyn Backend, table: &str, wrap: impl Fn(T) -> W) -> Result<HashMap<String, W>> {
    db.range(table, "", None)?
        .into_iter()
        .map(|(key, bytes)| {
            let value = decode(table, &key, &bytes)?;
            Ok((key, wrap(value)))
        })
        .collect()
}

fn all<T: DeserializeOwned>(db: &dyn Backend, table: &str) -> Result<Vec<T>> {
    db.range(table, "", None)?.into_iter().map(|(key, bytes)| decode(table, &key, &bytes)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str) -> NodeRecord {
        NodeRecord::declared(name, ip)
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fogmesh-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn an_update_never_brings_back_a_removed_node_nor_moves_one() {
        let dir = temp_dir("update");
        let store = Store::open(&dir).unwrap();
        store.put_node(&node("a", "10.0.0.1")).unwrap();
        assert!(store.update_node("a", |n| n.last_seen_ms = Some(5)).unwrap());
        assert_eq!(store.node("a").unwrap().unwrap().last_seen_ms, Some(5));
        assert!(store.update_node("a", |n| n.public_ip = "10.0.0.2".into()).is_err());
        store.remove_node("a").unwrap();
        assert!(!store.update_node("a", |n| n.last_seen_ms = Some(6)).unwrap());
        assert!(store.node("a").unwrap().is_none());
        assert!(store.db.get(NODES, "a").unwrap().is_none(), "the removed node is back on disk");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_in_memory_copies_hold_what_the_store_holds() {
        let dir = temp_dir("cache");
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
        // What the store holds, read back into fresh copies, is what the copies said.
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
        let dir = temp_dir("ip");
        let store = Store::open(&dir).unwrap();
        store.put_node(&node("a", "10.0.0.1")).unwrap();
        store.put_node(&node("b", "10.0.0.2")).unwrap();
        store.put_node(&node("a", "10.0.0.3")).unwrap();
        assert!(store.node_by_ip("10.0.0.1").unwrap().is_none(), "a moved away from .1");
        assert_eq!(store.node_by_ip("10.0.0.3").unwrap().map(|n| n.name), Some("a".into()));
        store.remove_node("b").unwrap();
        assert!(store.node_by_ip("10.0.0.2").unwrap().is_none());
        // A store from before the index gets it at open.
        let mut txn = store.db.write().unwrap();
        for (ip, _) in store.db.range(NODE_IPS, "", None).unwrap() {
            txn.remove(NODE_IPS, &ip).unwrap();
        }
        txn.commit().unwrap();
        store.index_node_ips_if_missing().unwrap();
        assert_eq!(store.node_by_ip("10.0.0.3").unwrap().map(|n| n.name), Some("a".into()));
        assert!(store.node_by_ip("10.0.0.2").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn generations_grow_across_reopens() {
        let dir = temp_dir("generations");
        let mut last = 0;
        for _ in 0..3 {
            let store = Store::open(&dir).unwrap();
            for _ in 0..3 {
                let g = store.next_generation().unwrap();
                assert!(g > last, "{g} after {last}");
                last = g;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write is durable once `flush` returned: a process killed (-9) right
    /// after it keeps it. The test runs itself as that process.
    #[test]
    fn a_flushed_write_survives_a_kill() {
        const CHILD: &str = "FOGMESH_STORE_TEST_KILL_DIR";
        if let Ok(dir) = std::env::var(CHILD) {
            let store = Store::open(Path::new(&dir)).expect("open in the child");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            store.set_meta("flushed", "yes").expect("write");
            rt.block_on(store.flush()).expect("flush");
            // SAFETY: kill(2) on this very process; nothing after it runs.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        let dir = temp_dir("kill");
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "store::tests::a_flushed_write_survives_a_kill", "--nocapture", "--test-threads", "1"])
            .env(CHILD, &dir)
            .output()
            .expect("run the child");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "the child ends killed: {}", String::from_utf8_lossy(&out.stderr));
        let store = Store::open(&dir).expect("the store opens after the kill");
        assert_eq!(store.meta("flushed").unwrap().as_deref(), Some("yes"), "a flushed write was lost");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_keep_the_newest_in_order_and_go_with_their_app() {
        let dir = temp_dir("flush");
        let store = Store::open(&dir).unwrap();
        for i in 0..5 {
            let event = ScalingEvent {
                seq: 0,
                at_ms: i,
                policy: "p".into(),
                target: "t".into(),
                by: "master".into(),
                outcome: crate::model::EventOutcome::Unchanged,
                from: None,
                to: None,
                readings: Default::default(),
                printed: vec![],
                message: String::new(),
            };
            assert_eq!(store.append_event("app1", event, 3).unwrap(), i as u64 + 1);
        }
        let seqs: Vec<u64> = store.events("app1", 0, 10).unwrap().into_iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5], "the newest three");
        assert_eq!(store.events("app1", 4, 10).unwrap().len(), 1);
        store.remove_app("app1").unwrap();
        assert!(store.events("app1", 0, 10).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
