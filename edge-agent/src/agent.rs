//! The running agent: starts the stored workloads at once (master or not),
//! reconciles them forever, and keeps a session with the master.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use fogmesh_common::wire::NodeStatus;
use tokio::sync::watch;

use crate::capacity;
use crate::connector::{run_forever, SessionContext};
use crate::identity::IdentityFiles;
use crate::local_store::LocalStore;
use crate::reconciler::Reconciler;

/// How often the engine is checked against the desired state without a change.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(data_dir: &Path, bind_ip: Option<IpAddr>) -> Result<()> {
    let identity = IdentityFiles::new(data_dir).load()?;
    let node = identity.info.node_name.clone();
    let store = LocalStore::open(&data_dir.join("store"))?;
    let stored = store.desired()?;
    tracing::info!(%node, generation = stored.generation, containers = stored.containers.len(), "starting from the stored desired state");
    let bind_ip = bind_ip.or_else(|| local_address(&identity.info.public_ip));

    let reconciler = connect_engine(&node, data_dir, bind_ip).await;
    let runtime_version = reconciler.runtime_version().await.unwrap_or_else(|e| format!("unknown ({e})"));
    let (desired_tx, desired_rx) = watch::channel(stored);
    let (status_tx, status_rx) = watch::channel(NodeStatus::default());
    tokio::spawn(reconcile_forever(reconciler, desired_rx, status_tx));

    let ctx = SessionContext {
        identity,
        store,
        desired: desired_tx,
        status: status_rx,
        capacity: capacity::detect(),
        runtime_version,
    };
    tokio::select! {
        _ = run_forever(ctx) => {}
        _ = shutdown_signal() => tracing::info!("stopping; containers keep running"),
    }
    Ok(())
}

/// Waits for the container engine: an agent that starts before Docker
/// (at boot) must not give up.
async fn connect_engine(node: &str, data_dir: &Path, bind_ip: Option<IpAddr>) -> Reconciler {
    let mut wait = Duration::from_secs(1);
    loop {
        match Reconciler::connect(node, data_dir, bind_ip).await {
            Ok(r) => return r,
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?wait, "cannot reach the container engine");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn reconcile_forever(
    mut reconciler: Reconciler,
    mut desired: watch::Receiver<fogmesh_common::wire::DesiredState>,
    status: watch::Sender<NodeStatus>,
) {
    loop {
        let state = desired.borrow_and_update().clone();
        let containers = reconciler.reconcile(&state.containers).await;
        let observed = NodeStatus { generation: state.generation, containers };
        status.send_if_modified(|current| {
            let changed = *current != observed;
            if changed {
                *current = observed;
            }
            changed
        });
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
}

/// The public IP if this machine owns it (publish ports there, so several
/// agents on one machine do not collide), else none (all addresses).
fn local_address(public_ip: &str) -> Option<IpAddr> {
    let ip: IpAddr = public_ip.parse().ok()?;
    std::net::UdpSocket::bind((ip, 0)).ok().map(|_| ip)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
