//! The node's identity in its data directory: who it is, which master it
//! belongs to, its key and certificate, the cluster CA.
//!
//! The agent never deletes these on its own (not on refusals, not on auth
//! errors): only an operator who re-joins replaces them. Like everything in
//! the data folder they are for the owner only (folder 0700, files 0600).

use std::fs;
use std::path::{Path, PathBuf};

use fogmesh_common::pki::key_matches_cert;
use fogmesh_common::private_files;
use tokio::sync::watch;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_name: String,
    /// `HOST:PORT` of the master's QUIC endpoint.
    pub master: String,
    pub public_ip: String,
    pub labels: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct Identity {
    pub info: NodeInfo,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

/// The key before the last renewal: only read when node.key is ahead of node.pem.
const PREVIOUS_KEY: &str = "node.key.previous";

pub struct IdentityFiles {
    dir: PathBuf,
}

impl IdentityFiles {
    pub fn new(data_dir: &Path) -> IdentityFiles {
        IdentityFiles { dir: data_dir.to_path_buf() }
    }

    pub fn exists(&self) -> bool {
        self.dir.join("node.json").exists()
    }

    pub fn load(&self) -> Result<Identity> {
        let read = |name: &str| {
            let p = self.dir.join(name);
            fs::read_to_string(&p).with_context(|| format!("read {} (has this node joined? run `fogmesh-agent join`)", p.display()))
        };
        let info: NodeInfo = serde_json::from_str(&read("node.json")?).context("node.json is corrupt")?;
        let cert_pem = read("node.pem")?;
        let mut key_pem = read("node.key")?;
        if !key_matches_cert(&key_pem, &cert_pem) {
            // A renewal stopped between writing the new key and its certificate.
            match read(PREVIOUS_KEY) {
                Ok(previous) if key_matches_cert(&previous, &cert_pem) => {
                    tracing::warn!("node.key is newer than node.pem (a renewal was cut short): using the key node.pem is for; the next renewal makes a new one");
                    key_pem = previous;
                }
                _ => anyhow::bail!("node.key does not belong to node.pem in {}: join again with a new token", self.dir.display()),
            }
        }
        Ok(Identity { info, key_pem, cert_pem, ca_pem: read("ca.pem")? })
    }

    /// Stores a renewed key and certificate. The key they replace is kept
    /// first, so a crash between the two writes leaves a pair `load` can use.
    pub fn save_renewal(&self, previous_key_pem: &str, key_pem: &str, cert_pem: &str) -> Result<()> {
        private_files::write_private_atomic(&self.dir.join(PREVIOUS_KEY), previous_key_pem.as_bytes())?;
        private_files::write_private_atomic(&self.dir.join("node.key"), key_pem.as_bytes())?;
        private_files::write_private_atomic(&self.dir.join("node.pem"), cert_pem.as_bytes())?;
        Ok(())
    }

    /// Writes a new identity; files are written whole and synced before
    /// node.json, which marks the identity complete.
    pub fn save(&self, id: &Identity) -> Result<()> {
        private_files::ensure_private_dir(&self.dir)?;
        private_files::write_private_atomic(&self.dir.join("node.key"), id.key_pem.as_bytes())?;
        private_files::write_private_atomic(&self.dir.join("node.pem"), id.cert_pem.as_bytes())?;
        private_files::write_private_atomic(&self.dir.join("ca.pem"), id.ca_pem.as_bytes())?;
        private_files::write_private_atomic(&self.dir.join("node.json"), serde_json::to_string_pretty(&id.info)?.as_bytes())?;
        Ok(())
    }
}

/// The node's identity as it is now. A renewal replaces key and certificate
/// while the agent runs; whatever connects (QUIC, MQTT) or signs reads them here.
#[derive(Clone)]
pub struct CurrentIdentity {
    tx: std::sync::Arc<watch::Sender<Identity>>,
    files: Option<std::sync::Arc<IdentityFiles>>,
}

impl CurrentIdentity {
    /// `files`: where renewals are stored (none in tests that keep it in memory).
    pub fn new(identity: Identity, files: Option<IdentityFiles>) -> CurrentIdentity {
        CurrentIdentity { tx: std::sync::Arc::new(watch::channel(identity).0), files: files.map(std::sync::Arc::new) }
    }

    pub fn get(&self) -> Identity {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Identity> {
        self.tx.subscribe()
    }

    /// A renewed key and certificate: stored durably, then used by all.
    pub fn renewed(&self, key_pem: String, cert_pem: String) -> Result<()> {
        anyhow::ensure!(key_matches_cert(&key_pem, &cert_pem), "the renewed certificate is not for the key this node sent");
        let previous = self.get();
        if let Some(files) = &self.files {
            files.save_renewal(&previous.key_pem, &key_pem, &cert_pem)?;
        }
        self.tx.send_modify(|id| {
            id.key_pem = key_pem;
            id.cert_pem = cert_pem;
        });
        Ok(())
    }
}
