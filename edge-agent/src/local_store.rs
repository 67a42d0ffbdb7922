//! The node's durable copy of its desired state (sled). The agent acks a
//! generation to the master only after it is flushed here, and at boot it
//! runs what is stored here, master or not.

use std::path::Path;

use anyhow::{Context, Result};
use fogmesh_common::codec;
use fogmesh_common::wire::DesiredState;

const DESIRED_KEY: &str = "desired";
/// The store holds one small record; sled's default cache (1 GiB) is for databases.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct LocalStore {
    db: sled::Db,
}

impl LocalStore {
    pub fn open(dir: &Path) -> Result<LocalStore> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
            .with_context(|| format!("open the agent store in {}", dir.display()))?;
        Ok(LocalStore { db })
    }

    /// The stored desired state; generation 0 and no containers if none.
    pub fn desired(&self) -> Result<DesiredState> {
        match self.db.get(DESIRED_KEY)? {
            Some(bytes) => codec::decode(&bytes).context("the stored desired state is corrupt"),
            None => Ok(DesiredState::default()),
        }
    }

    /// Stores and flushes; returns only once the state is durable.
    pub async fn put_desired(&self, state: &DesiredState) -> Result<()> {
        self.db.insert(DESIRED_KEY, codec::encode(state)?)?;
        self.db.flush_async().await.context("flush the agent store")?;
        Ok(())
    }
}
