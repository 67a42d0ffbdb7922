//! The store folder at open: a redb store as it is, a new one, or a sled
//! store left by an earlier fogmesh (before redb), copied into redb once.
//!
//! sled stays a dependency only for this: it can go once no data folder
//! written before redb needs a first start any more (a release or two
//! after the one that brought redb; then an old folder would need that
//! release once, to migrate).
//!
//! The migration, crash-safe at every step:
//! 1. the copy goes into `STORE.migrating/fogmesh.redb` (a folder beside
//!    the store folder `STORE`), every tree's records in one transaction,
//!    then synced; a `STORE.migrating` left by an earlier attempt is
//!    removed first (the sled store it came from is still in place);
//! 2. the sled folder moves aside: `STORE` -> `STORE.sled-migrated-SECS`;
//! 3. `STORE.migrating` becomes `STORE`.
//!
//! A crash before 2 leaves the sled store where it was: the next start
//! copies again. A crash between 2 and 3 leaves no `STORE` but a complete
//! `STORE.migrating` (it was synced before 2): the next start finishes 3.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use fogmesh_common::private_files::ensure_private_dir;

use super::redb::{sync_dir, RedbBackend};
use super::{json, Backend, COUNTERS, GENERATION_KEY, TABLES};

/// The redb file inside the store folder.
pub(super) const FILE: &str = "fogmesh.redb";

/// Where a test makes the migration stop, as a crash would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) enum Stop {
    /// Half of the trees copied (and synced) into the new file.
    HalfCopied,
    /// The copy complete and durable, the sled store still in place.
    Copied,
    /// The sled folder moved aside, the copy not yet in its place.
    MovedAside,
}

/// Makes `dir` hold a redb store (migrating a sled store found there) and
/// returns its file's path; the file is missing only for a new store.
pub(super) fn prepare(dir: &Path) -> Result<PathBuf> {
    prepare_until(dir, None)
}

fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir.file_name().ok_or_else(|| anyhow!("{} is not a folder name", dir.display()))?;
    Ok(dir.with_file_name(format!("{}{suffix}", name.to_string_lossy())))
}

/// What sled 0.34 keeps in its folder (beside `conf`, `blobs/`, `snap.*`).
fn holds_sled(dir: &Path) -> bool {
    dir.join("db").is_file() && dir.join("conf").is_file()
}

pub(super) fn prepare_until(dir: &Path, stop: Option<Stop>) -> Result<PathBuf> {
    let file = dir.join(FILE);
    let staging = sibling(dir, ".migrating")?;
    if !dir.exists() && staging.join(FILE).is_file() {
        // Step 3 of a migration that stopped after step 2: the copy is complete.
        std::fs::rename(&staging, dir).with_context(|| format!("move the migrated store {} to {}", staging.display(), dir.display()))?;
        sync_dir(dir)?;
        tracing::info!(store = %dir.display(), "finished the migration from sled that an earlier start began");
    }
    if file.is_file() {
        if holds_sled(dir) {
            tracing::warn!(store = %dir.display(), "sled files beside the redb store are not read (left from a copy by hand?)");
        }
        if staging.exists() {
            // Cannot be newer than the store in place: only a migration makes it.
            std::fs::remove_dir_all(&staging).with_context(|| format!("remove {}", staging.display()))?;
        }
        return Ok(file);
    }
    if holds_sled(dir) {
        migrate(dir, &staging, stop)?;
        return Ok(file);
    }
    ensure_private_dir(dir)?;
    Ok(file)
}

fn stopped(at: Stop, stop: Option<Stop>) -> Result<()> {
    if stop == Some(at) {
        bail!("migration stopped at {at:?} (test)");
    }
    Ok(())
}

fn migrate(dir: &Path, staging: &Path, stop: Option<Stop>) -> Result<()> {
    tracing::info!(store = %dir.display(), "the store is a sled store (fogmesh before redb): copying it into redb");
    if staging.exists() {
        std::fs::remove_dir_all(staging).with_context(|| format!("remove the unfinished migration {}", staging.display()))?;
    }
    ensure_private_dir(staging)?;
    let backend = RedbBackend::create(&staging.join(FILE), &TABLES)?;
    let counts = copy_sled(dir, &backend, stop)?;
    drop(backend);
    sync_dir(&staging.join(FILE))?;
    stopped(Stop::Copied, stop)?;

    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut aside = sibling(dir, &format!(".sled-migrated-{secs}"))?;
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = sibling(dir, &format!(".sled-migrated-{secs}-{n}"))?;
    }
    std::fs::rename(dir, &aside).with_context(|| format!("move the sled store {} aside to {}", dir.display(), aside.display()))?;
    sync_dir(dir)?;
    stopped(Stop::MovedAside, stop)?;
    std::fs::rename(staging, dir).with_context(|| format!("move the migrated store {} to {}", staging.display(), dir.display()))?;
    sync_dir(dir)?;
    let total: usize = counts.values().sum();
    tracing::info!(
        store = %dir.display(),
        records = total,
        trees = %counts.iter().map(|(t, n)| format!("{t}={n}")).collect::<Vec<_>>().join(" "),
        sled_store_now = %aside.display(),
        "migrated the store from sled to redb (the sled folder can be deleted once this version runs well)"
    );
    Ok(())
}

#[derive(serde::Deserialize)]
struct Generation {
    generation: u64,
}

/// Copies every tree of the sled store in `dir` into `backend` in one
/// transaction and syncs it; returns the records per tree.
fn copy_sled(dir: &Path, backend: &RedbBackend, stop: Option<Stop>) -> Result<BTreeMap<String, usize>> {
    let where_ = || format!("the sled store in {}", dir.display());
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().with_context(|| format!("open {}", where_()))?;
    let mut txn = backend.write()?;
    let mut counts = BTreeMap::new();
    // The highest generation any record names: desired states, acks, reports.
    let mut highest = 0u64;
    let names = db.tree_names();
    let half = names.len() / 2;
    for (i, raw) in names.iter().enumerate() {
        if stop == Some(Stop::HalfCopied) && i == half {
            txn.commit()?;
            backend.sync()?;
            bail!("migration stopped at {:?} (test)", Stop::HalfCopied);
        }
        let name = std::str::from_utf8(raw).map_err(|_| anyhow!("{}: a tree's name is not UTF-8: {:?}", where_(), String::from_utf8_lossy(raw)))?;
        let tree = db.open_tree(raw).with_context(|| format!("{}: open tree {name}", where_()))?;
        // sled's default tree: today's code never wrote to it.
        if raw.as_ref() == b"__sled__default" && tree.is_empty() {
            continue;
        }
        if !TABLES.contains(&name) {
            tracing::warn!(tree = name, records = tree.len(), "the sled store has a tree this version does not know: copied as it is");
        }
        let mut count = 0;
        for entry in tree.iter() {
            let (k, v) = entry.with_context(|| format!("{}: read tree {name}", where_()))?;
            let key = std::str::from_utf8(&k).map_err(|_| anyhow!("{}: tree {name}: a key is not UTF-8: {:?}", where_(), String::from_utf8_lossy(&k)))?;
            let corrupt = || format!("{}: tree {name}: record '{key}' is not what this version stored", where_());
            match name {
                "desired" | "observed" => highest = highest.max(serde_json::from_slice::<Generation>(&v).with_context(corrupt)?.generation),
                "acked" => highest = highest.max(serde_json::from_slice::<u64>(&v).with_context(corrupt)?),
                _ => {}
            }
            txn.put(name, key, &v)?;
            count += 1;
        }
        counts.insert(name.to_string(), count);
    }
    // sled's id generator hands out numbers above any it returned before
    // (it persists a bound and jumps past it at open); the first
    // generation of the new store comes after it and after every stored one.
    let sled_next = db.generate_id().with_context(|| format!("{}: read its generation counter", where_()))? + 1;
    let reserved = sled_next.max(highest + 1) - 1;
    txn.put(COUNTERS, GENERATION_KEY, &json(&reserved)?)?;
    txn.commit()?;
    backend.sync()?;
    for (tree, records) in &counts {
        tracing::info!(tree = %tree, records, "copied from sled");
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::model::{EventOutcome, ScalingEvent};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fogmesh-migrate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make the test folder");
        dir
    }

    /// A sled store laid out as fogmesh wrote it before redb (the trees and
    /// JSON values of master/src/store.rs at a383ac8): every record, by
    /// tree and key, and the highest generation sled's counter gave out.
    fn old_store(dir: &Path) -> (BTreeMap<(String, String), Vec<u8>>, u64) {
        let db = sled::Config::new().path(dir).flush_every_ms(None).open().expect("sled opens");
        let mut records = BTreeMap::new();
        let mut put = |tree: &str, key: &str, value: Vec<u8>| {
            db.open_tree(tree).expect("tree").insert(key, value.clone()).expect("insert");
            records.insert((tree.to_string(), key.to_string()), value);
        };
        let mut joined = NodeRecord::declared("edge-1", "10.1.0.1");
        joined.labels = vec![("zone".into(), "a".into())];
        joined.cert_fingerprint = Some("ab".repeat(32));
        joined.cert_pem = Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
        joined.last_seen_ms = Some(1_700_000_000_000);
        let declared = NodeRecord::declared("edge-2", "10.1.0.2");
        for n in [&joined, &declared] {
            put("nodes", &n.name, serde_json::to_vec(n).unwrap());
            put("node_ips", &n.public_ip, n.name.clone().into_bytes());
        }
        let app = AppRecord {
            id: "0123456789abcdef".into(),
            name: "web".into(),
            adt: "tosca_definitions_version: micado_tosca_1_0\n".into(),
            params: vec![("replicas".into(), "2".into())],
            plan: Default::default(),
            revision: 3,
            created_ms: 1,
            updated_ms: 2,
        };
        put("apps", &app.id, serde_json::to_vec(&app).unwrap());
        // Generations as sled's counter gave them out.
        let mut last = 0;
        for node in ["edge-1", "edge-2"] {
            last = db.generate_id().unwrap() + 1;
            put("desired", node, serde_json::to_vec(&DesiredState { generation: last, ..Default::default() }).unwrap());
        }
        put("acked", "edge-1", serde_json::to_vec(&(last - 1)).unwrap());
        put("observed", "edge-1", serde_json::to_vec(&NodeStatus { generation: last - 1, ..Default::default() }).unwrap());
        let token = TokenRecord { secret_hash: "5e".repeat(32), expires_ms: u64::MAX / 2, uses_left: 4, replace: None };
        put("tokens", "tok1", serde_json::to_vec(&token).unwrap());
        put("revoked", &"cd".repeat(32), serde_json::to_vec(&Revocation::Replaced).unwrap());
        // A revocation from before reasons were kept.
        put("revoked", &"ef".repeat(32), b"true".to_vec());
        put("revoked_serials", &"cd".repeat(32), serde_json::to_vec(&RevokedSerial { serial: vec![1, 2, 3], revoked_ms: 5 }).unwrap());
        let placements: BTreeMap<String, Vec<String>> = [("0123456789abcdef/web".to_string(), vec!["edge-1".to_string()])].into();
        put("placements", "all", serde_json::to_vec(&placements).unwrap());
        put("meta", "admin_token", serde_json::to_vec("f00d").unwrap());
        put("meta", "advertise_host", serde_json::to_vec("127.0.0.1").unwrap());
        put("scaling", &app.id, serde_json::to_vec(&AppScaling::default()).unwrap());
        for seq in 1..=3u64 {
            let event = ScalingEvent {
                seq,
                at_ms: seq as i64,
                policy: "scale".into(),
                target: "web".into(),
                by: "master".into(),
                outcome: EventOutcome::Scaled,
                from: Some(1),
                to: Some(2),
                readings: Default::default(),
                printed: vec![],
                message: format!("event {seq}"),
            };
            put("events", &format!("{}/{seq:020}", app.id), serde_json::to_vec(&event).unwrap());
        }
        db.flush().expect("sled flush");
        (records, last)
    }

    fn aside_folders(root: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("store.sled-migrated-")))
            .collect();
        found.sort();
        found
    }

    /// Opens the store and checks it holds every record of the sled store,
    /// byte for byte, and what the master reads of them.
    fn check_migrated(root: &Path, records: &BTreeMap<(String, String), Vec<u8>>, last_generation: u64) {
        let dir = root.join("store");
        let store = Store::open(&dir).expect("the migrated store opens");
        for ((tree, key), value) in records {
            assert_eq!(store.db.get(tree, key).unwrap().as_ref(), Some(value), "record '{key}' of tree {tree}");
        }
        for (tree, _) in records.keys() {
            let copied = store.db.range(tree, "", None).unwrap().len();
            let expected = records.keys().filter(|(t, _)| t == tree).count();
            assert_eq!(copied, expected, "records in table {tree}");
        }
        let names: Vec<String> = store.nodes().unwrap().iter().map(|n| n.name.clone()).collect();
        assert_eq!(names, ["edge-1", "edge-2"]);
        assert_eq!(store.node_by_ip("10.1.0.2").unwrap().map(|n| n.name), Some("edge-2".into()));
        assert_eq!(store.with_node("edge-1", |n| n.labels.clone()), Some(vec![("zone".to_string(), "a".to_string())]));
        assert_eq!(store.app("0123456789abcdef").unwrap().map(|a| a.revision), Some(3));
        assert_eq!(store.desired("edge-2").unwrap().generation, last_generation);
        assert_eq!(store.acked("edge-1").unwrap(), last_generation - 1);
        assert_eq!(store.observed("edge-1").unwrap().generation, last_generation - 1);
        assert_eq!(store.token("tok1").unwrap().map(|t| t.uses_left), Some(4));
        assert_eq!(store.revocation(&"cd".repeat(32)).unwrap(), Some(Revocation::Replaced));
        assert_eq!(store.revocation(&"ef".repeat(32)).unwrap(), Some(Revocation::Removed));
        assert_eq!(store.revoked_serials().unwrap().len(), 1);
        assert_eq!(store.placements().unwrap().len(), 1);
        assert_eq!(store.meta("advertise_host").unwrap().as_deref(), Some("127.0.0.1"));
        assert_eq!(store.events("0123456789abcdef", 1, 10).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let next = store.next_generation().unwrap();
        assert!(next > last_generation, "generation {next} after the sled store's {last_generation}");
        drop(store);
        // The sled folder is aside, once, untouched; nothing half-done is left.
        let aside = aside_folders(root);
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert!(holds_sled(&aside[0]), "the sled store is kept aside whole");
        assert!(!holds_sled(&dir), "no sled files in the store folder");
        assert!(!root.join("store.migrating").exists());
        // And a second start is a plain open.
        let again = Store::open(&dir).expect("opens again");
        assert_eq!(again.nodes().unwrap().len(), 2);
        assert_eq!(aside_folders(root).len(), 1);
    }

    #[test]
    fn a_sled_store_is_copied_record_for_record_and_moved_aside() {
        let root = temp_dir("whole");
        let (records, last) = old_store(&root.join("store"));
        check_migrated(&root, &records, last);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_migration_stopped_at_any_step_is_done_whole_at_the_next_start() {
        for stop in [Stop::HalfCopied, Stop::Copied, Stop::MovedAside] {
            let root = temp_dir(&format!("{stop:?}"));
            let dir = root.join("store");
            let (records, last) = old_store(&dir);
            let err = prepare_until(&dir, Some(stop)).expect_err("stopped");
            assert!(err.to_string().contains("stopped"), "{err:#}");
            match stop {
                Stop::MovedAside => assert!(!dir.exists() && root.join("store.migrating").exists()),
                _ => assert!(holds_sled(&dir) && root.join("store.migrating").exists(), "{stop:?}: the sled store is in place"),
            }
            check_migrated(&root, &records, last);
            let _ = std::fs::remove_dir_all(&root);
        }
    }

    #[test]
    fn a_new_store_is_made_and_nothing_is_migrated() {
        let root = temp_dir("new");
        let dir = root.join("store");
        let store = Store::open(&dir).expect("a new store");
        store.set_meta("k", "v").unwrap();
        store.flush_blocking().unwrap();
        drop(store);
        assert!(dir.join(FILE).is_file());
        assert!(!dir.join("fogmesh.redb.new").exists());
        assert!(aside_folders(&root).is_empty());
        assert_eq!(Store::open(&dir).unwrap().meta("k").unwrap().as_deref(), Some("v"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
