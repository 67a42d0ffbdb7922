//! The node's durable copy of its desired state: one file, replaced
//! atomically (write a temporary file, fsync it, rename it over the old one,
//! fsync the folder). The agent acks a generation to the master only after
//! [`LocalStore::save`] returned, and at boot it runs what is stored here,
//! master or not.
//!
//! Why a file and not sled: the agent keeps one record, and every write must
//! be able to fail (full disk) and succeed on the next try without a
//! restart; sled keeps a global error after a failed flush. A file that does
//! not decode is moved aside, never deleted, and the agent carries on as if
//! it had no state (it then keeps the node's containers and asks the master).
//!
//! File layout: `FMDS` magic, format version (1 byte), payload length
//! (u64 big-endian), SHA-256 of the payload (32 bytes), payload (the
//! [`codec`] record encoding of [`StoredState`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fogmesh_common::codec;
use fogmesh_common::wire::DesiredState;
use ring::digest;
use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "desired.state";
const MAGIC: &[u8; 4] = b"FMDS";
const FORMAT: u8 = 1;
const HEADER_BYTES: usize = 4 + 1 + 8 + 32;

/// What the store holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StoredState {
    /// The newest desired state the master sent (and this node acked).
    Desired(DesiredState),
    /// The master removed this node: run nothing until it joins again.
    Decommissioned { generation: u64, reason: String },
    /// Another agent joined as this node: leave its containers alone.
    HandedOff { generation: u64, reason: String },
}

impl StoredState {
    pub fn generation(&self) -> u64 {
        match self {
            StoredState::Desired(d) => d.generation,
            StoredState::Decommissioned { generation, .. } | StoredState::HandedOff { generation, .. } => *generation,
        }
    }

    /// The containers this node should run.
    pub fn desired(&self) -> DesiredState {
        match self {
            StoredState::Desired(d) => d.clone(),
            StoredState::Decommissioned { generation, .. } | StoredState::HandedOff { generation, .. } => {
                DesiredState { generation: *generation, ..Default::default() }
            }
        }
    }
}

/// The outcome of reading the store at boot.
#[derive(Debug)]
pub enum Loaded {
    Stored(StoredState),
    /// No state file: a new node, or one whose store was deleted.
    Missing,
    /// The file did not decode; it was moved to `moved_to` for inspection.
    Corrupt { error: String, moved_to: Option<PathBuf> },
}

#[derive(Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    pub fn new(dir: &Path) -> LocalStore {
        LocalStore { dir: dir.to_path_buf() }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Reads the stored state. Never fails: what cannot be read is reported
    /// as missing or corrupt, and a corrupt file is moved aside.
    pub fn load(&self) -> Loaded {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Corrupt { error: format!("cannot read {}: {e}", path.display()), moved_to: None },
        };
        match parse(&bytes) {
            Ok(state) => Loaded::Stored(state),
            Err(error) => {
                let aside = self.dir.join(format!("{FILE_NAME}.corrupt-{}", unix_seconds()));
                let moved_to = fs::rename(&path, &aside).ok().map(|_| aside);
                Loaded::Corrupt { error, moved_to }
            }
        }
    }

    /// Writes `state` durably; returns only once it is on disk. A failure
    /// (full disk, read-only folder) leaves the previous file as it was.
    pub fn save(&self, state: &StoredState) -> Result<()> {
        fogmesh_common::private_files::ensure_private_dir(&self.dir)?;
        let payload = codec::encode_record(state).context("encode the desired state")?;
        let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.push(FORMAT);
        bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        bytes.extend_from_slice(digest::digest(&digest::SHA256, &payload).as_ref());
        bytes.extend_from_slice(&payload);

        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let written = write_synced(&tmp, &bytes);
        if let Err(e) = written {
            // Free the space a partial file holds: the disk may be full.
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("write {}", tmp.display()));
        }
        fs::rename(&tmp, self.path()).with_context(|| format!("replace {}", self.path().display()))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("sync folder {}", self.dir.display()))?;
        Ok(())
    }
}

/// Secret env values are in there: mode 0600.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fogmesh_common::private_files::create_private(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn parse(bytes: &[u8]) -> Result<StoredState, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..4] != MAGIC {
        return Err("not a fogmesh state file (bad header)".into());
    }
    if bytes[4] != FORMAT {
        return Err(format!("state file format {} is not the supported {FORMAT}", bytes[4]));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[5..13]);
    let len = u64::from_be_bytes(len);
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() as u64 != len {
        return Err(format!("state file is truncated: {} of {len} payload bytes", payload.len()));
    }
    if digest::digest(&digest::SHA256, payload).as_ref() != &bytes[13..HEADER_BYTES] {
        return Err("state file checksum does not match".into());
    }
    codec::decode_record(payload).map_err(|e| format!("state file does not decode: {e}"))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fm-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_missing() {
        let d = dir("rt");
        let store = LocalStore::new(&d);
        assert!(matches!(store.load(), Loaded::Missing));
        let state = StoredState::Desired(DesiredState { generation: 7, ..Default::default() });
        store.save(&state).unwrap();
        match store.load() {
            Loaded::Stored(s) => assert_eq!(s, state),
            other => panic!("{other:?}"),
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_files_are_moved_aside_not_deleted() {
        let d = dir("corrupt");
        let store = LocalStore::new(&d);
        store.save(&StoredState::Desired(DesiredState { generation: 3, ..Default::default() })).unwrap();
        let path = d.join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        match store.load() {
            Loaded::Corrupt { error, moved_to: Some(aside) } => {
                assert!(error.contains("checksum"), "{error}");
                assert_eq!(fs::read(aside).unwrap(), bytes, "the corrupt file is kept for inspection");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.load(), Loaded::Missing));
        for garbage in [&b""[..], b"FMDS", b"hello world, not a state file at all......................"] {
            fs::write(&path, garbage).unwrap();
            assert!(matches!(store.load(), Loaded::Corrupt { .. }));
        }
        let _ = fs::remove_dir_all(&d);
    }
}
