//! The master's data directory: cluster CA, master certificate, store, and
//! the client credentials file. `init` creates it; `serve` opens it.
//!
//! ```text
//! DIR/ca.pem  DIR/ca.key          cluster CA
//! DIR/master.pem  DIR/master.key  QUIC + HTTPS certificate of the master
//! DIR/client.conf                 API address, CA, admin token
//! DIR/quic-reset.key              QUIC stateless-reset key
//! DIR/store/fogmesh.redb          the store (redb; see `store`)
//! DIR/metrics/                    metrics store, broker credentials
//! ```
//!
//! Only the owner reads any of it: DIR and its folders are 0700, its files
//! 0600 (see [`fogmesh_common::private_files`]); `serve` tightens a folder
//! that an older version or a hand left open.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fogmesh_common::pki::{random_hex, ClusterCa};
use fogmesh_common::private_files::{self, Tightened};
use serde::{Deserialize, Serialize};

use crate::api::ADMIN_TOKEN_KEY;
use crate::store::Store;

/// Store key of the host agents dial (the first `--advertise` of `init`).
pub const ADVERTISE_HOST_KEY: &str = "advertise_host";

/// What the CLI needs to reach a master, like a kubeconfig.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientConfig {
    /// e.g. `https://127.0.0.1:7400`
    pub api: String,
    pub ca_pem: String,
    pub token: String,
}

pub struct DataDir {
    pub root: PathBuf,
}

pub struct MasterFiles {
    pub ca: ClusterCa,
    pub cert_pem: String,
    pub key_pem: String,
}

impl DataDir {
    pub fn new(root: &Path) -> DataDir {
        DataDir { root: root.to_path_buf() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.path("store")
    }

    pub fn client_config_path(&self) -> PathBuf {
        self.path("client.conf")
    }

    /// Creates the CA, the master certificate (names: `advertise` plus the
    /// loopback defaults), the admin token and `client.conf`.
    pub fn init(&self, advertise: &[String], api_addr: &str) -> Result<PathBuf> {
        if self.path("ca.pem").exists() {
            bail!("{} is already initialised (ca.pem exists); use another --data-dir or remove it", self.root.display());
        }
        private_files::ensure_private_dir(&self.root)?;
        let ca = ClusterCa::generate("fogmesh cluster CA").context("generate the cluster CA")?;
        let mut names: Vec<String> = advertise.to_vec();
        if let Some((host, _)) = api_addr.rsplit_once(':') {
            names.push(host.trim_matches(['[', ']']).to_string());
        }
        let (cert_pem, key_pem) = ca.issue_server_cert(&names).context("issue the master certificate")?;
        write_file(&self.path("ca.pem"), ca.cert_pem())?;
        write_file(&self.path("ca.key"), ca.key_pem())?;
        write_file(&self.path("master.pem"), &cert_pem)?;
        write_file(&self.path("master.key"), &key_pem)?;
        self.quic_reset_key()?;

        let token = random_hex(32);
        let store = Store::open(&self.store_dir())?;
        store.set_meta(ADMIN_TOKEN_KEY, &fogmesh_common::pki::hash_secret(&token))?;
        // The name agents dial, for hints such as the join command.
        let host = advertise.first().cloned().unwrap_or_else(|| names.last().cloned().unwrap_or_else(|| "127.0.0.1".into()));
        store.set_meta(ADVERTISE_HOST_KEY, &host)?;
        store.flush_blocking()?;
        drop(store);
        let client = ClientConfig { api: format!("https://{api_addr}"), ca_pem: ca.cert_pem().to_string(), token };
        let path = self.client_config_path();
        write_file(&path, &serde_json::to_string_pretty(&client)?)?;
        // The store's own file (redb makes it with the umask's mode).
        private_files::tighten_tree(&self.root, &[])?;
        Ok(path)
    }

    /// Makes the folder private before `serve` opens anything in it: a
    /// folder made by an older version (0755, certificates 0644), or opened
    /// up by hand, is tightened, and said so in the log.
    pub fn make_private(&self) -> Result<Vec<Tightened>> {
        if !self.root.is_dir() {
            bail!("{} is not a folder (is it initialised? run `fogmesh-master init --data-dir {}`)", self.root.display(), self.root.display());
        }
        Ok(private_files::secure_data_dir(&self.root, &[])?)
    }

    pub fn load(&self) -> Result<MasterFiles> {
        let read = |name: &str| {
            let p = self.path(name);
            fs::read_to_string(&p).with_context(|| {
                format!("read {} (is {} initialised? run `fogmesh-master init --data-dir {}`)", p.display(), self.root.display(), self.root.display())
            })
        };
        let ca = ClusterCa::from_pem(&read("ca.pem")?, &read("ca.key")?).context("load the cluster CA")?;
        Ok(MasterFiles { ca, cert_pem: read("master.pem")?, key_pem: read("master.key")? })
    }

    /// The key the master's QUIC reset tokens come from. It must outlive the
    /// process: a restarted master can then end the agents' old sessions at
    /// their next packet. Created on first use (data dirs from before it).
    pub fn quic_reset_key(&self) -> Result<Vec<u8>> {
        let path = self.path("quic-reset.key");
        if !path.exists() {
            let key = fogmesh_common::pki::try_random_hex(32).context("generate the QUIC reset key")?;
            write_file(&path, &key)?;
        }
        let key = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let key = key.trim().as_bytes().to_vec();
        if key.len() < fogmesh_common::tls::MIN_RESET_KEY_BYTES {
            bail!("{} holds {} bytes, at least {} needed: remove it and restart (agents then wait out their idle timeout once)", path.display(), key.len(), fogmesh_common::tls::MIN_RESET_KEY_BYTES);
        }
        Ok(key)
    }
}

/// A new file, mode 0600.
fn write_file(path: &Path, contents: &str) -> Result<()> {
    let mut f = private_files::private_options()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_quic_reset_key_is_made_once_and_kept() {
        let root = std::env::temp_dir().join(format!("fogmesh-datadir-reset-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("dir");
        let dir = DataDir::new(&root);
        let first = dir.quic_reset_key().expect("created");
        assert_eq!(dir.quic_reset_key().expect("read back"), first);
        assert_eq!(fs::metadata(root.join("quic-reset.key")).expect("file").permissions().mode() & 0o777, 0o600);
        fs::write(root.join("quic-reset.key"), "short").expect("overwrite");
        let err = dir.quic_reset_key().expect_err("a short key is refused").to_string();
        assert!(err.contains("quic-reset.key holds 5 bytes"), "{err}");
        let _ = fs::remove_dir_all(&root);
    }

    /// Every folder 0755 and file 0644 under `root`, as older versions
    /// left a data folder.
    fn open_up(root: &Path) {
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            let dir = path.is_dir();
            fs::set_permissions(&path, fs::Permissions::from_mode(if dir { 0o755 } else { 0o644 })).expect("chmod");
            if dir {
                stack.extend(fs::read_dir(&path).expect("list").map(|e| e.expect("entry").path()));
            }
        }
    }

    #[test]
    fn a_data_dir_is_private_when_made_and_when_an_older_one_is_served() {
        let root = std::env::temp_dir().join(format!("fogmesh-datadir-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = DataDir::new(&root);
        dir.init(&[], "127.0.0.1:7400").expect("init");
        assert_eq!(private_files::open_entries(&root, &[]).expect("walk"), [], "as init made it");
        assert!(root.join("store/fogmesh.redb").exists() && root.join("client.conf").exists(), "the real files were looked at");

        open_up(&root);
        assert!(!private_files::open_entries(&root, &[]).expect("walk").is_empty());
        // What `serve` does first, then opens the store.
        let tightened = dir.make_private().expect("tightened");
        let names: Vec<_> = tightened.iter().map(|t| t.path.strip_prefix(&root).unwrap_or(&t.path).to_string_lossy().into_owned()).collect();
        for name in ["", "ca.key", "client.conf", "quic-reset.key", "store", "store/fogmesh.redb"] {
            assert!(names.iter().any(|n| n == name), "{name:?} not in {names:?}");
        }
        assert_eq!(private_files::open_entries(&root, &[]).expect("walk"), []);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn the_store_folder_and_the_file_redb_makes_are_private() {
        let root = std::env::temp_dir().join(format!("fogmesh-store-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("dir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        let store = Store::open(&root.join("store")).expect("the store opens");
        let open = private_files::open_entries(&root.join("store"), &[]).expect("walk");
        drop(store);
        assert!(root.join("store/fogmesh.redb").exists(), "redb made its file");
        assert_eq!(open, []);
        let _ = fs::remove_dir_all(&root);
    }
}
