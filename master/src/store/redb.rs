//! The embedded backend: one redb file (copy-on-write B-trees, checksummed
//! commits), tables of `&str` keys and `&[u8]` values.
//!
//! Durability: every [`WriteTxn`] commits with `Durability::None` (no
//! fsync; visible to every later read and write at once), and
//! [`Backend::sync`] commits an empty transaction with
//! `Durability::Immediate`. redb documents `None` as "will not be persisted
//! to disk unless followed by a commit with `Durability::Immediate`", and an
//! Immediate commit writes out the pages of the non-durable commits before
//! it (their allocations become durable with it), then the header that
//! names the newest root, then fsyncs: the one fsync of the group flusher
//! makes every commit before it durable. After a crash the file opens at the
//! last Immediate commit; the non-durable ones after it are gone, and none
//! of them was acknowledged to anyone.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use ::redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use anyhow::{Context, Result};

use super::{Backend, Records, WriteTxn};

type Def<'a> = TableDefinition<'a, &'static str, &'static [u8]>;

fn def(table: &str) -> Def<'_> {
    TableDefinition::new(table)
}

fn bounds<'a>(from: &'a str, to: Option<&'a str>) -> (Bound<&'a str>, Bound<&'a str>) {
    (Bound::Included(from), to.map_or(Bound::Unbounded, Bound::Excluded))
}

pub struct RedbBackend {
    db: Database,
    path: PathBuf,
}

impl RedbBackend {
    /// Opens the store file at `path`, or makes it (written as `PATH.new`
    /// and renamed once its tables are durable: a crash never leaves half a
    /// file under the real name). Every table of `tables` exists afterwards.
    pub fn open(path: &Path, tables: &[&str]) -> Result<RedbBackend> {
        if !path.exists() {
            let new = path.with_extension("redb.new");
            let _ = std::fs::remove_file(&new);
            let backend = RedbBackend::create(&new, tables)?;
            std::fs::rename(&new, path).with_context(|| format!("rename {} to {}", new.display(), path.display()))?;
            sync_dir(path)?;
            return Ok(RedbBackend { path: path.to_path_buf(), ..backend });
        }
        let db = Database::builder().open(path).with_context(|| format!("open the master store {}", path.display()))?;
        let backend = RedbBackend { db, path: path.to_path_buf() };
        backend.create_tables(tables)?;
        Ok(backend)
    }

    /// A new, empty store file at `path` with `tables`, durable.
    pub fn create(path: &Path, tables: &[&str]) -> Result<RedbBackend> {
        anyhow::ensure!(!path.exists(), "{} exists already", path.display());
        let db = Database::builder().create(path).with_context(|| format!("create the master store {}", path.display()))?;
        let backend = RedbBackend { db, path: path.to_path_buf() };
        backend.create_tables(tables)?;
        Ok(backend)
    }

    fn create_tables(&self, tables: &[&str]) -> Result<()> {
        let txn = self.db.begin_write().with_context(|| self.at("start a write"))?;
        for table in tables {
            txn.open_table(def(table)).with_context(|| self.at(&format!("create table {table}")))?;
        }
        txn.commit().with_context(|| self.at("commit its tables"))
    }

    fn at(&self, what: &str) -> String {
        format!("master store {}: {what}", self.path.display())
    }
}

/// fsync of the folder holding `path`, so a rename into it is durable.
pub(super) fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("sync the folder {}", dir.display()))
}

impl Backend for RedbBackend {
    fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().with_context(|| self.at("start a read"))?;
        let t = match txn.open_table(def(table)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e).with_context(|| self.at(&format!("open table {table}"))),
        };
        let value = t.get(key).with_context(|| self.at(&format!("read '{key}' in table {table}")))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn range(&self, table: &str, from: &str, to: Option<&str>) -> Result<Records> {
        let txn = self.db.begin_read().with_context(|| self.at("start a read"))?;
        let t = match txn.open_table(def(table)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| self.at(&format!("open table {table}"))),
        };
        let reading = || self.at(&format!("read table {table}"));
        let records = t
            .range(bounds(from, to))
            .with_context(reading)?
            .map(|entry| {
                let (k, v) = entry.with_context(reading)?;
                Ok((k.value().to_string(), v.value().to_vec()))
            })
            .collect();
        records
    }

    fn write(&self) -> Result<Box<dyn WriteTxn + '_>> {
        let mut txn = self.db.begin_write().with_context(|| self.at("start a write"))?;
        txn.set_durability(Durability::None).with_context(|| self.at("set a write's durability"))?;
        Ok(Box::new(RedbTxn { txn, backend: self }))
    }

    fn sync(&self) -> Result<()> {
        let mut txn = self.db.begin_write().with_context(|| self.at("start the sync"))?;
        txn.set_durability(Durability::Immediate).with_context(|| self.at("set the sync's durability"))?;
        txn.commit().with_context(|| self.at("sync"))
    }
}

struct RedbTxn<'a> {
    txn: ::redb::WriteTransaction,
    backend: &'a RedbBackend,
}

impl WriteTxn for RedbTxn<'_> {
    fn get(&mut self, table: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let at = || self.backend.at(&format!("read '{key}' in table {table}"));
        let t = self.txn.open_table(def(table)).with_context(at)?;
        let value = t.get(key).with_context(at)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn keys(&mut self, table: &str, from: &str, to: Option<&str>) -> Result<Vec<String>> {
        let at = || self.backend.at(&format!("read table {table}"));
        let t = self.txn.open_table(def(table)).with_context(at)?;
        let keys = t.range(bounds(from, to)).with_context(at)?.map(|entry| Ok(entry.with_context(at)?.0.value().to_string())).collect();
        keys
    }

    fn put(&mut self, table: &str, key: &str, value: &[u8]) -> Result<()> {
        let at = || self.backend.at(&format!("write '{key}' in table {table}"));
        let mut t = self.txn.open_table(def(table)).with_context(at)?;
        t.insert(key, value).with_context(at)?;
        Ok(())
    }

    fn remove(&mut self, table: &str, key: &str) -> Result<()> {
        let at = || self.backend.at(&format!("remove '{key}' from table {table}"));
        let mut t = self.txn.open_table(def(table)).with_context(at)?;
        t.remove(key).with_context(at)?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let at = self.backend.at("commit");
        self.txn.commit().context(at)
    }
}
