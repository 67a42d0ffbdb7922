//! The running agent: starts the stored workloads at once (master or not),
//! reconciles them forever, and keeps a session with the master.
//!
//! ```text
//! connector ──Apply──▶ persister ──stored──▶ reconcile loop ──statuses──▶ status board ──▶ connector
//!     ▲                   │ durable generation                    ▲ docker events, probes
//!     └───────Ack─────────┘
//! ```

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{watch, Notify};

use crate::autonomy::{self, AutonomyOptions, Link};
use crate::capacity;
use crate::connector::{run_forever, SessionContext};
use crate::identity::{CurrentIdentity, IdentityFiles};
use crate::local_store::LocalStore;
use crate::metrics::{self, queue::QueueCap, recent::RecentSamples, MetricsOptions};
use fogmesh_common::scaling::round::NodeRef;
use fogmesh_common::scaling::{RuleLimits, RuleWorker};
use crate::persister::{self, Applied};
use crate::reconciler::{events, Owner, Reconciler};
use crate::status::StatusBoard;
use fogmesh_common::tls::QuicTiming;

/// Longest time between two passes when nothing happens.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// Events that arrive together are handled in one pass.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(20);
/// A second look after an event, once Docker's state has caught up.
const EVENT_FOLLOW_UP: Duration = Duration::from_millis(200);

pub struct RunOptions {
    /// Address to publish ports on; default: the public IP if this machine has it.
    pub bind_ip: Option<IpAddr>,
    /// Labels put on every container this agent creates.
    pub container_labels: Vec<(String, String)>,
    /// How fast a dead master or a silent partition is noticed.
    pub master_timeout: Duration,
    /// How much the metrics queue may hold while the master is away.
    pub metrics_queue: QueueCap,
    /// How long the master must be unreachable before the node runs its
    /// scaling policies itself.
    pub autonomy_after: Duration,
    /// The program and arguments that run scaling rules in a child process.
    pub rule_worker: (std::path::PathBuf, Vec<String>),
}

pub async fn run(data_dir: &Path, options: RunOptions) -> Result<()> {
    make_private(data_dir)?;
    let identity = CurrentIdentity::new(IdentityFiles::new(data_dir).load()?, Some(IdentityFiles::new(data_dir)));
    let id = identity.get();
    let node = id.info.node_name.clone();
    let board = StatusBoard::default();
    let persist = persister::start(LocalStore::new(data_dir), board.clone(), &node);
    let bind_ip = options.bind_ip.or_else(|| local_address(&id.info.public_ip));

    let wake = Arc::new(Notify::new());
    let owner = Owner { node: node.clone(), bind_ip, extra_labels: options.container_labels };
    let reconciler = connect_engine(owner, data_dir, wake.clone()).await;
    let runtime_version = reconciler.runtime_version().await.unwrap_or_else(|e| format!("unknown ({e})"));
    tokio::spawn(events::watch_forever(reconciler.docker(), node.clone(), wake.clone()));
    let recent = Arc::new(RecentSamples::default());
    let metrics_settings = metrics::start(
        data_dir,
        &identity,
        metrics::Collector::new(&node, Some(reconciler.docker())),
        persist.applied.clone(),
        MetricsOptions { queue_cap: options.metrics_queue, recent: Some(recent.clone()) },
    )?;
    let (link_tx, link_rx) = watch::channel(Link::Down { since: Instant::now() });
    let worker = Arc::new(RuleWorker::new(options.rule_worker.0.clone(), options.rule_worker.1.clone()));
    let me = NodeRef { id: node.clone(), addr: id.info.public_ip.clone() };
    let (autonomy, effective) = autonomy::start(
        data_dir,
        me,
        persist.applied.clone(),
        link_rx,
        recent,
        AutonomyOptions { after: options.autonomy_after, limits: RuleLimits::default(), worker },
    );
    // The reconciler runs the stored desired state with local scaling applied.
    tokio::spawn(reconcile_forever(reconciler, effective, board.clone(), wake));

    let ctx = SessionContext {
        identity,
        commands: persist.commands,
        durable: persist.durable,
        status: board.subscribe(),
        capacity: capacity::detect(),
        runtime_version,
        timing: QuicTiming::with_idle_timeout(options.master_timeout),
        endpoint: None,
        metrics_settings: Some(metrics_settings),
        link: Some(link_tx),
        autonomy: Some(autonomy),
    };
    tokio::select! {
        _ = run_forever(ctx) => {}
        _ = shutdown_signal() => tracing::info!("stopping; containers keep running"),
    }
    Ok(())
}

/// Config maps (`reconciler::config::configmap_dir`) are written for
/// containers to read (bind-mounted; their users may not be the agent's):
/// left as they are.
pub const SHARED_WITH_CONTAINERS: &[&str] = &["configmaps"];

/// The data folder for the owner only: tightens one made by an older
/// version (0755/0644) or opened up by hand, and says so in the log.
pub fn make_private(data_dir: &Path) -> Result<Vec<fogmesh_common::private_files::Tightened>> {
    if !data_dir.is_dir() {
        anyhow::bail!("{} is not a folder (has this node joined? run `fogmesh-agent join`)", data_dir.display());
    }
    Ok(fogmesh_common::private_files::secure_data_dir(data_dir, SHARED_WITH_CONTAINERS)?)
}

/// Waits for the container engine: an agent that starts before Docker
/// (at boot) must not give up.
async fn connect_engine(owner: Owner, data_dir: &Path, wake: Arc<Notify>) -> Reconciler {
    let mut wait = Duration::from_secs(1);
    loop {
        match Reconciler::connect(owner.clone(), data_dir, wake.clone()).await {
            Ok(r) => return r,
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?wait, "cannot reach the container engine");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Passes run when the desired state changes, when Docker reports that a
/// container of this node died, when a probe result changes, when the
/// reconciler has something scheduled (a restart back-off ends), and at
/// least every `RECONCILE_INTERVAL`.
async fn reconcile_forever(mut reconciler: Reconciler, mut desired: watch::Receiver<Applied>, board: StatusBoard, wake: Arc<Notify>) {
    // Docker sends `kill`/`die` a moment before its container list shows
    // the container as exited: after an event, look once more shortly.
    let mut follow_up: Option<Instant> = None;
    loop {
        let applied = desired.borrow_and_update().clone();
        match &applied {
            Applied::Unknown => board.set_containers(0, reconciler.reconcile(None).await),
            Applied::Desired(state) => board.set_containers(state.generation, reconciler.reconcile(Some(&state.containers)).await),
            Applied::HandsOff => board.set_containers(0, Vec::new()),
        }
        let now = Instant::now();
        // The pass that just ran covers a follow-up that was due.
        follow_up = follow_up.filter(|at| *at > now);
        let due = [reconciler.next_wake(), follow_up].into_iter().flatten().min();
        let next = due.map_or(RECONCILE_INTERVAL, |at| at.saturating_duration_since(now)).min(RECONCILE_INTERVAL);
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = wake.notified() => {
                tokio::time::sleep(EVENT_DEBOUNCE).await;
                follow_up = Some(Instant::now() + EVENT_FOLLOW_UP);
            }
            _ = tokio::time::sleep(next) => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use crate::identity::{Identity, NodeInfo};
    use crate::local_store::StoredState;
    use crate::metrics::queue::MetricQueue;
    use crate::metrics::settings::SettingsFile;
    use fogmesh_common::private_files::open_entries;
    use fogmesh_common::wire::{DesiredState, MetricsSettings};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("exists").permissions().mode() & 0o7777
    }

    /// Every folder 0755 and file 0644, as older versions left a data folder.
    fn open_up(root: &Path) {
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            let dir = path.is_dir();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(if dir { 0o755 } else { 0o644 })).expect("chmod");
            if dir {
                stack.extend(std::fs::read_dir(&path).expect("list").map(|e| e.expect("entry").path()));
            }
        }
    }

    /// What join and a running agent write, each through its own code.
    async fn write_everything(root: &Path) {
        let info = NodeInfo { node_name: "n1".into(), master: "127.0.0.1:7401".into(), public_ip: "127.0.0.9".into(), labels: vec![] };
        let identity = Identity { info, key_pem: "KEY".into(), cert_pem: "CERT".into(), ca_pem: "CA".into() };
        IdentityFiles::new(root).save(&identity).expect("identity saved");
        let secret = DesiredState { generation: 1, ..Default::default() };
        LocalStore::new(root).save(&StoredState::Desired(secret)).expect("desired state saved");
        SettingsFile::new(root).save(&MetricsSettings { mqtt_url: "mqtts://127.0.0.1:8883".into(), interval_ms: 15_000, ack_key: vec![1] }).expect("settings saved");
        let mut queue = MetricQueue::open(&root.join("metric-queue"), QueueCap::default()).expect("queue opened");
        queue.append(queue.next_seq(), 0, b"batch").expect("batch queued");
        let (_applied_tx, applied) = watch::channel(Applied::Unknown);
        let (_link_tx, link) = watch::channel(Link::Up);
        let worker = Arc::new(RuleWorker::new(PathBuf::from("/bin/false"), vec![]));
        let me = NodeRef { id: "n1".into(), addr: "127.0.0.9".into() };
        let options = AutonomyOptions { after: Duration::from_secs(30), limits: RuleLimits::default(), worker };
        let (autonomy, _) = autonomy::start(root, me, applied, link, Arc::new(RecentSamples::default()), options);
        autonomy.report_taken(0);
    }

    #[tokio::test]
    async fn an_agent_data_dir_is_private_when_made_and_when_an_older_one_starts() {
        let root = std::env::temp_dir().join(format!("fogmesh-agent-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        write_everything(&root).await;
        // The reconciler's config maps: for containers to read.
        let config = root.join("configmaps/web/0123/0/app.conf");
        std::fs::create_dir_all(config.parent().expect("folder")).expect("config-map folder");
        std::fs::write(&config, "x").expect("config-map file");
        for name in ["node.key", "node.pem", "node.json", "desired.state", "metrics-settings.json", "metric-queue/state", "autonomy.json"] {
            assert!(root.join(name).exists(), "{name} was written");
        }
        assert_eq!(open_entries(&root, SHARED_WITH_CONTAINERS).expect("walk"), [], "as the agent made it");

        open_up(&root);
        let tightened = make_private(&root).expect("tightened at start");
        assert!(tightened.iter().any(|t| t.path == root.join("desired.state")), "{tightened:?}");
        assert_eq!(open_entries(&root, SHARED_WITH_CONTAINERS).expect("walk"), []);
        assert_eq!(mode(&config), 0o644, "config maps are left for the containers");
        // Files written whole are replaced as 0600, over a leftover .tmp too
        // (appended ones wait for the next start).
        open_up(&root);
        std::fs::write(root.join("desired.state.tmp"), "left over").expect("tmp");
        std::fs::set_permissions(root.join("desired.state.tmp"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        write_everything(&root).await;
        for name in ["node.key", "desired.state", "metrics-settings.json", "autonomy.json"] {
            assert_eq!(mode(&root.join(name)), 0o600, "{name}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
