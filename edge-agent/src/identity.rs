//! The node's identity in its data directory: who it is, which master it
//! belongs to, its key and certificate, the cluster CA.
//!
//! The agent never deletes these on its own (not on refusals, not on auth
//! errors): only an operator who re-joins replaces them. Like everything in
//! the data folder they are for the owner only (folder 0700, files 0600).

use std::fs;
use std::path::{Path, PathBuf};

use fogmesh_common::private_files;

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

pub struct Identity {
    pub info: NodeInfo,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

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
        Ok(Identity { info, key_pem: read("node.key")?, cert_pem: read("node.pem")?, ca_pem: read("ca.pem")? })
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
