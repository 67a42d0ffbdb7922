//! A fleet in one process: N simulated nodes, each with its own identity
//! (joined with a multi-use token, its own certificate), its own durable
//! store and persister, and its own QUIC session to the master through the
//! real connector, and (with `metrics`) its own metrics pipeline: synthetic
//! node metrics, signed, queued on disk and published over its own MQTT
//! session. Only the container runtime and the node metrics are fake:
//! containers "run" after a configurable delay. For fleet-scale tests and
//! benchmarks; `received_log` records when each node stored each desired
//! state, for fan-out percentiles.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fogmesh_common::tls::QuicTiming;
use fogmesh_common::udp::bind_with_recv_buffer;
use fogmesh_common::wire::{Capacity, ContainerState, ContainerStatus};
use tokio::sync::Semaphore;

use crate::connector::{join, run_forever, JoinOptions, SessionContext};
use crate::identity::{CurrentIdentity, IdentityFiles};
use crate::local_store::LocalStore;
use crate::metrics::{self, queue::QueueCap, MetricsOptions};
use crate::persister::{self, Applied};
use crate::status::StatusBoard;

/// The receive buffer of the simulator's one socket.
const SIMULATOR_RECV_BUFFER: usize = 64 << 20;

pub struct SimulateOptions {
    pub master: String,
    pub token: Option<String>,
    pub count: usize,
    pub data_dir: PathBuf,
    /// Node names are `PREFIX-N`.
    pub prefix: String,
    /// Node N gets public IP `ip_base + N`.
    pub ip_base: Ipv4Addr,
    /// How long a fake container takes to "start".
    pub start_delay: Duration,
    pub join_concurrency: usize,
    pub master_timeout: Duration,
    /// First sessions opened per second (0: all at once).
    pub connect_rate: u32,
    /// Run each node's metrics pipeline on synthetic node metrics.
    pub metrics: bool,
    /// Append `UNIX_MS NODE GENERATION` here when a node stores a desired state.
    pub received_log: Option<PathBuf>,
}

pub async fn run(opts: SimulateOptions) -> Result<()> {
    let joined = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(Semaphore::new(opts.join_concurrency.max(1)));
    let mut joins = Vec::with_capacity(opts.count);
    for i in 0..opts.count {
        let dir = opts.data_dir.join(format!("node-{i:05}"));
        let name = format!("{}-{i}", opts.prefix);
        let ip = Ipv4Addr::from(u32::from(opts.ip_base).wrapping_add(i as u32));
        let (master, token, slots, joined, prefix) = (opts.master.clone(), opts.token.clone(), slots.clone(), joined.clone(), opts.prefix.clone());
        joins.push(tokio::spawn(async move {
            let _slot = slots.acquire().await;
            ensure_joined(&dir, &master, token, &name, &prefix, ip).await?;
            joined.fetch_add(1, Ordering::Relaxed);
            Ok::<PathBuf, anyhow::Error>(dir)
        }));
    }
    let progress = {
        let (joined, count) = (joined.clone(), opts.count);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!("simulate: {}/{count} nodes joined", joined.load(Ordering::Relaxed));
            }
        })
    };
    let mut dirs = Vec::with_capacity(opts.count);
    for j in joins {
        dirs.push(j.await.context("join task")??);
    }
    progress.abort();
    eprintln!("simulate: all {} nodes joined; running", opts.count);

    // One socket for every node's session: a big receive buffer, or bursts
    // are dropped. Bigger than the master's: in a reconnect storm the
    // handshake replies of thousands of nodes arrive at this one socket
    // (8 MiB dropped 46,000 of them; the nodes' handshakes then timed out).
    let udp = bind_with_recv_buffer("0.0.0.0:0".parse()?, SIMULATOR_RECV_BUFFER).context("open a UDP socket for QUIC")?;
    if let Some(why) = udp.shortfall(SIMULATOR_RECV_BUFFER) {
        eprintln!("simulate: {why}");
    }
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, udp.socket, std::sync::Arc::new(quinn::TokioRuntime))
        .context("open a UDP socket for QUIC")?;
    let received = match &opts.received_log {
        Some(path) => Some(received_writer(path)?),
        None => None,
    };
    let ramp_started = tokio::time::Instant::now();
    for (i, dir) in dirs.into_iter().enumerate() {
        if opts.connect_rate > 0 {
            tokio::time::sleep_until(ramp_started + Duration::from_secs_f64(i as f64 / f64::from(opts.connect_rate))).await;
        }
        let identity = CurrentIdentity::new(IdentityFiles::new(&dir).load()?, Some(IdentityFiles::new(&dir)));
        let board = StatusBoard::default();
        let node = identity.get().info.node_name.clone();
        let persist = persister::start(LocalStore::new(&dir), board.clone(), &node);
        let metrics_settings = match opts.metrics {
            true => Some(metrics::start(
                &dir,
                &identity,
                metrics::Collector::synthetic(&node),
                persist.applied.clone(),
                MetricsOptions { queue_cap: QueueCap::default(), recent: None },
            )?),
            false => None,
        };
        tokio::spawn(fake_runtime(node, persist.applied, board.clone(), opts.start_delay, received.clone()));
        let ctx = SessionContext {
            identity,
            commands: persist.commands,
            durable: persist.durable,
            status: board.subscribe(),
            capacity: Capacity { cpus: 1, memory_bytes: 1 << 30, disk_bytes: 8 << 30, arch: "simulated".into(), os: "linux".into() },
            runtime_version: "simulated".into(),
            timing: QuicTiming::with_idle_timeout(opts.master_timeout),
            endpoint: Some(endpoint.clone()),
            metrics_settings,
            link: None,
            autonomy: None,
        };
        tokio::spawn(run_forever(ctx));
    }
    std::future::pending::<()>().await;
    Ok(())
}

async fn ensure_joined(dir: &Path, master: &str, token: Option<String>, name: &str, prefix: &str, ip: Ipv4Addr) -> Result<()> {
    let files = IdentityFiles::new(dir);
    if files.exists() {
        return Ok(());
    }
    let token = token.context("a node has not joined yet: pass --token")?;
    let opts = JoinOptions {
        master: master.to_string(),
        token,
        public_ip: Some(ip.to_string()),
        name: Some(name.to_string()),
        // Members of the node set named PREFIX (as `run --node-set` makes
        // them), so one ADT can reach the whole fleet.
        labels: vec![("simulated".into(), "true".into()), (fogmesh_common::wire::NODE_SET_LABEL.into(), prefix.into())],
        replace: false,
    };
    let (identity, _metrics) = join(&opts).await.with_context(|| format!("join {name}"))?;
    files.save(&identity)
}

type Received = tokio::sync::mpsc::UnboundedSender<(String, u64)>;

/// One task appends every node's receipts to the log file.
fn received_writer(path: &Path) -> Result<Received> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("open {}", path.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
    tokio::spawn(async move {
        let mut out = std::io::BufWriter::new(file);
        while let Some((node, generation)) = rx.recv().await {
            let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
            let _ = writeln!(out, "{ms} {node} {generation}");
            if rx.is_empty() {
                let _ = out.flush();
            }
        }
    });
    Ok(tx)
}

/// Every desired container "runs" `delay` after it was stored.
async fn fake_runtime(node: String, mut applied: tokio::sync::watch::Receiver<Applied>, board: StatusBoard, delay: Duration, received: Option<Received>) {
    loop {
        let state = applied.borrow_and_update().clone();
        if let Applied::Desired(state) = state {
            if let Some(tx) = &received {
                let _ = tx.send((node.clone(), state.generation));
            }
            tokio::time::sleep(delay).await;
            let containers = state
                .containers
                .iter()
                .map(|spec| {
                    let hash = spec.spec_hash();
                    ContainerStatus {
                        name: spec.name.clone(),
                        app_id: spec.app_id.clone(),
                        workload: spec.workload.clone(),
                        state: ContainerState::Running,
                        running_spec: Some(hash.clone()),
                        spec_hash: hash,
                        ready: spec.readiness.as_ref().map(|_| true),
                        restarts: 0,
                        last_error: None,
                    }
                })
                .collect();
            board.set_containers(state.generation, containers);
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}
