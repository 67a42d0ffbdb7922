//! Where this agent sends metrics, as the master last said (at join and at
//! every session), kept on disk so an agent that starts while the master is
//! away still collects and queues from its first second.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fogmesh_common::wire::MetricsSettings;

const FILE_NAME: &str = "metrics-settings.json";

pub struct SettingsFile {
    path: PathBuf,
}

impl SettingsFile {
    pub fn new(data_dir: &Path) -> SettingsFile {
        SettingsFile { path: data_dir.join(FILE_NAME) }
    }

    /// The stored settings; `None` when there are none or they do not read
    /// (the master sends them again at the next session).
    pub fn load(&self) -> Option<MetricsSettings> {
        let text = fs::read_to_string(&self.path).ok()?;
        match serde_json::from_str(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "stored metrics settings do not read; waiting for the master's");
                None
            }
        }
    }

    /// Replaces the stored settings atomically.
    pub fn save(&self, settings: &MetricsSettings) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = fogmesh_common::private_files::create_private(&tmp)?;
        f.write_all(serde_json::to_string_pretty(settings)?.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path).with_context(|| format!("replace {}", self.path.display()))?;
        Ok(())
    }
}
