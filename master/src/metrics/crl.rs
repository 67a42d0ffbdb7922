//! The certificate revocation list an external broker reads
//! (`serve --mqtt-crl FILE`, mosquitto's `crlfile`): written at start, after
//! every revocation and daily (a broker refuses everyone once a CRL's next
//! update has passed). The embedded broker needs none: its door asks the
//! registry itself.
//!
//! mosquitto reads the file when it starts and when it gets SIGHUP; its
//! connections that are already open stay open until they drop (the
//! ingest still refuses their batches: the node is no longer registered).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cluster::Cluster;

const REWRITE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Keeps `path` current until the process ends.
pub async fn keep_current(cluster: Arc<Cluster>, path: PathBuf) {
    let mut revocations = cluster.watch_revocations();
    let mut last_number = 0;
    loop {
        // Seconds since the epoch: a later list has a larger number, across restarts too.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let number = now.max(last_number + 1);
        match write(&cluster, &path, number) {
            Ok(revoked) => {
                last_number = number;
                tracing::info!(path = %path.display(), revoked, number, "CRL written for the external MQTT broker (mosquitto rereads it on SIGHUP)");
            }
            Err(e) => tracing::error!(path = %path.display(), error = %format!("{e:#}"), "cannot write the CRL: the external broker still admits certificates revoked since the last one"),
        }
        tokio::select! {
            changed = revocations.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REWRITE_EVERY) => {}
        }
    }
}

/// Writes the CRL of every revoked certificate; how many it lists.
pub fn write(cluster: &Cluster, path: &Path, number: u64) -> Result<usize> {
    let revoked: Vec<(Vec<u8>, SystemTime)> = cluster
        .store
        .revoked_serials()?
        .into_iter()
        .map(|r| (r.serial, UNIX_EPOCH + Duration::from_millis(r.revoked_ms)))
        .collect();
    let pem = cluster.ca.crl_pem(&revoked, number).context("sign the CRL")?;
    write_public_atomic(path, pem.as_bytes())?;
    Ok(revoked.len())
}

/// A CRL is public (the broker may run as another user): 0644, replaced
/// whole so the broker never reads half a list.
pub fn write_public_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(fogmesh_common::private_files::write_atomic_with_mode(path, bytes, 0o644)?)
}
