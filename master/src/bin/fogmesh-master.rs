//! `fogmesh-master`: the fogmesh control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fogmesh_common::tls::{https_server_config, quic_endpoint_config, quic_server_config, QuicTiming};
use fogmesh_common::udp::{bind_with_recv_buffer, FLEET_RECV_BUFFER};
use fogmesh_master::cli::duration_arg;
use fogmesh_master::cluster::{Cluster, ClusterConfig};
use fogmesh_master::datadir::{DataDir, ADVERTISE_HOST_KEY};
use fogmesh_master::https::ApiLimits;
use fogmesh_master::metrics::{self, Credentials, Metrics, MetricsOptions};
use fogmesh_master::policy_keeper::{KeeperOptions, PolicyKeeper};
use fogmesh_master::store::Store;
use fogmesh_common::scaling::{RuleLimits, RuleWorker};
use fogmesh_master::bench::{self, BenchOptions};
use fogmesh_master::{api, https, quic};

/// fogmesh-master: the control plane of a fogmesh cluster.
///
/// It compiles ADTs into deployment plans, keeps the desired state of every
/// fog node, and pushes it to the nodes' agents over QUIC (mutual TLS under
/// a cluster CA). Operators use the `fogmesh` CLI against its REST API.
#[derive(Debug, Parser)]
#[command(name = "fogmesh-master", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory: cluster CA, master certificate, admin token,
    /// and DIR/client.conf with the credentials the CLI needs.
    Init {
        /// Folder for the CA, certificates, store and client.conf (must not be initialised yet).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Address or DNS name agents use to reach this master; it goes into
        /// the master certificate (repeatable). Loopback is always included.
        #[arg(long, value_name = "ADDR")]
        advertise: Vec<String>,
        /// API address written into client.conf (must match `serve --api`).
        #[arg(long, default_value = "127.0.0.1:7400")]
        api: String,
    },
    /// Run the control plane: REST API (HTTPS) and agent endpoint (QUIC).
    Serve(ServeArgs),
    /// Measure the metrics store on generated data, side by side with
    /// VictoriaMetrics on the same data, or the master store under load
    /// (build with --release for figures).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Issue a server certificate under the cluster CA, e.g. for an external
    /// MQTT broker (mosquitto) that agents and the master reach with
    /// `--mqtt-url mqtts://HOST:PORT`. Writes OUT/server.pem, OUT/server.key
    /// and OUT/ca.pem (for the broker to verify client certificates), and a
    /// mosquitto setup with fogmesh's access rules: OUT/mosquitto.conf,
    /// OUT/acl and OUT/crl.pem (kept current by `serve --mqtt-crl OUT/crl.pem`).
    IssueCert {
        /// The folder `init` created.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// A DNS name or IP address clients use to reach the server (repeatable).
        #[arg(long = "name", value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Folder to write the certificate, key and CA into.
        #[arg(long, value_name = "OUT")]
        out_dir: PathBuf,
        /// Where the broker listens, for OUT/mosquitto.conf.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8883")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Ingest rate, query latency and bytes per sample of the metrics store.
    Metrics {
        /// Series (one per container).
        #[arg(long, default_value_t = 1000)]
        series: usize,
        /// Samples per series.
        #[arg(long, default_value_t = 720)]
        samples: usize,
        /// Time between two samples of a series.
        #[arg(long, default_value = "15s", value_parser = duration_arg)]
        interval: Duration,
        /// Series per node batch (what one agent sends per interval).
        #[arg(long, default_value_t = 100)]
        series_per_node: usize,
        /// Timed runs per query.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// VictoriaMetrics binary to compare with (`apt-get install victoria-metrics`).
        #[arg(long, default_value = "victoria-metrics", value_name = "PATH")]
        victoria_metrics: PathBuf,
        /// Measure fogmesh alone.
        #[arg(long)]
        no_peer: bool,
        /// Scratch folder (emptied first).
        #[arg(long, default_value = "/tmp/fogmesh-bench", value_name = "DIR")]
        work_dir: PathBuf,
        /// Also write the report (markdown) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// The master store under load: joins, reschedule passes, acks and
    /// hellos of N nodes, and a reopen.
    Store {
        /// Nodes.
        #[arg(long, default_value_t = 10000)]
        nodes: usize,
        /// Reschedule passes (the median is reported).
        #[arg(long, default_value_t = 5)]
        passes: usize,
        /// Scratch folder (emptied first).
        #[arg(long, default_value = "/tmp/fogmesh-bench-store", value_name = "DIR")]
        work_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The folder `init` created.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Address of the REST API (HTTPS).
    #[arg(long, default_value = "127.0.0.1:7400")]
    api: SocketAddr,
    /// Address agents connect to (QUIC over UDP).
    #[arg(long, default_value = "0.0.0.0:7401")]
    quic: SocketAddr,
    /// A node silent for this long is shown offline (its workloads stay).
    #[arg(long, default_value = "15s", value_parser = duration_arg)]
    offline_after: Duration,
    /// Heartbeat interval asked of agents.
    #[arg(long, default_value = "3s", value_parser = duration_arg)]
    heartbeat: Duration,
    /// An agent connection silent for this long is dropped (QUIC idle
    /// timeout; agents may ask for less).
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    agent_timeout: Duration,
    /// Most REST API connections open at once; more are closed at accept.
    #[arg(long, default_value_t = 128)]
    max_api_connections: usize,
    /// Where the embedded MQTT broker listens for agents' metrics (TLS,
    /// client certificates under the cluster CA).
    #[arg(long, default_value = "0.0.0.0:8883")]
    mqtt_listen: SocketAddr,
    /// Use this external broker instead of the embedded one, for agents and
    /// the master (mqtts://HOST:PORT with certificates under the cluster CA,
    /// see `issue-cert`; or mqtt://HOST:PORT on a trusted network).
    #[arg(long, value_name = "URL")]
    mqtt_url: Option<String>,
    /// With --mqtt-url: keep this certificate revocation list current (at
    /// start, after every `node remove` or `--replace`, daily) for the
    /// external broker to read (`issue-cert` writes a mosquitto setup that
    /// reads OUT/crl.pem; mosquitto rereads it on SIGHUP).
    #[arg(long, value_name = "FILE", requires = "mqtt_url")]
    mqtt_crl: Option<PathBuf>,
    /// How often agents collect metrics (a policy may ask for less).
    #[arg(long, default_value = "15s", value_parser = duration_arg)]
    metrics_interval: Duration,
    /// How long the master keeps samples.
    #[arg(long, default_value = "6h", value_parser = duration_arg)]
    metrics_retention: Duration,
    /// Most metric series one node may have in the store: samples that
    /// would start more are refused (counted, and shown in `fogmesh node list`).
    #[arg(long, default_value_t = fogmesh_master::metrics::tsdb::DEFAULT_MAX_SERIES_PER_NODE)]
    max_series_per_node: usize,
    /// How much metrics log a restart may have to replay: older log is
    /// written out as a checkpoint of the store (which a restart reads in
    /// a fraction of the time), and then deleted.
    #[arg(long, default_value = "10m", value_parser = duration_arg)]
    metrics_checkpoint_every: Duration,
    /// Seconds between two rounds of a scaling policy that has no `interval`.
    #[arg(long, default_value = "15s", value_parser = duration_arg)]
    scaling_period: Duration,
    /// How long node certificates live (at least 30s). Agents renew theirs
    /// over their session at two thirds of it, with a new key; a node that
    /// was offline past expiry renews when it returns.
    #[arg(long, default_value = "30d", value_parser = duration_arg)]
    node_cert_lifetime: Duration,
    /// Program run after a scaling policy changes a node set's count:
    /// `CMD APP NODE_SET COUNT [-- NODE_TO_DROP...]` (e.g. a script that
    /// calls Terraform or a cloud CLI), at most 60 s, beside the scaling
    /// rounds; its outcome is an app event. Without it the count is only shown.
    #[arg(long, value_name = "CMD")]
    node_set_hook: Option<String>,
    /// Also forward every stored sample to this Prometheus remote-write
    /// endpoint (VictoriaMetrics, Prometheus, Mimir), e.g.
    /// http://vm:8428/api/v1/write.
    #[arg(long, value_name = "URL")]
    remote_write: Option<String>,
}

/// Rules run in a child process (this program with this argument), where a
/// memory limit can be armed and a crash cannot take the master down.
const RULE_WORKER_ARG: &str = "__rule-worker";

// The allocator that lets the rule worker enforce a memory limit; without
// a limit armed it only counts.
#[global_allocator]
static ALLOCATOR: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(RULE_WORKER_ARG) {
        return fogmesh_common::scaling::worker::serve_worker();
    }
    fogmesh_master::logging::init("info");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { data_dir, advertise, api } => init(&data_dir, &advertise, &api),
        Command::IssueCert { data_dir, names, out_dir, listen } => issue_cert(&data_dir, &names, &out_dir, listen),
        Command::Bench(BenchCommand::Metrics { series, samples, interval, series_per_node, runs, victoria_metrics, no_peer, work_dir, out }) => {
            let options = BenchOptions {
                series: series.max(1),
                samples_per_series: samples.max(2),
                interval,
                series_per_node: series_per_node.max(1),
                victoria_metrics: (!no_peer).then_some(victoria_metrics),
                runs: runs.max(1),
                work_dir,
            };
            tokio::runtime::Runtime::new().context("start the async runtime").and_then(|rt| rt.block_on(bench::run(options))).and_then(|report| {
                print!("{report}");
                match out {
                    Some(path) => std::fs::write(&path, &report).with_context(|| format!("write {}", path.display())),
                    None => Ok(()),
                }
            })
        }
        Command::Bench(BenchCommand::Store { nodes, passes, work_dir }) => {
            let options = fogmesh_master::bench_store::StoreBenchOptions { nodes, passes, work_dir };
            tokio::runtime::Runtime::new()
                .context("start the async runtime")
                .and_then(|rt| rt.block_on(fogmesh_master::bench_store::run(options)))
                .map(|report| print!("{report}"))
        }
        Command::Serve(args) => tokio::runtime::Runtime::new().context("start the async runtime").and_then(|rt| rt.block_on(serve(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fogmesh-master: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init(data_dir: &std::path::Path, advertise: &[String], api: &str) -> Result<()> {
    let path = DataDir::new(data_dir).init(advertise, api)?;
    println!("initialised {}", data_dir.display());
    println!("client credentials: {} (mode 0600)", path.display());
    println!("use them with: export FOGMESH_CONFIG={}", path.display());
    Ok(())
}

fn issue_cert(data_dir: &std::path::Path, names: &[String], out_dir: &std::path::Path, listen: SocketAddr) -> Result<()> {
    let files = DataDir::new(data_dir).load()?;
    let (cert, key) = files.ca.issue_server_cert(names).context("issue the certificate")?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let write = |name: &str, text: &str, mode: u32| -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = out_dir.join(name);
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&path).with_context(|| format!("write {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    };
    write("server.pem", &cert, 0o644)?;
    write("server.key", &key, 0o600)?;
    write("ca.pem", files.ca.cert_pem(), 0o644)?;
    write("mosquitto.conf", &metrics::mosquitto::config(out_dir, listen), 0o644)?;
    write("acl", &metrics::mosquitto::acl(), 0o644)?;
    let crl = out_dir.join("crl.pem");
    if !crl.exists() {
        // Empty until `serve --mqtt-crl` writes the real one (a broker needs a CRL file to start).
        metrics::crl::write_public_atomic(&crl, files.ca.crl_pem(&[], 1)?.as_bytes())?;
    }
    println!("wrote {0}/server.pem, {0}/server.key (mode 0600) and {0}/ca.pem for {1}", out_dir.display(), names.join(", "));
    println!("wrote a mosquitto setup: {0}/mosquitto.conf, {0}/acl, {0}/crl.pem; run the master with --mqtt-url mqtts://HOST:{1} --mqtt-crl {0}/crl.pem and send mosquitto SIGHUP after removing a node", out_dir.display(), listen.port());
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    // One late heartbeat must not make a node offline.
    if args.offline_after < args.heartbeat * 2 {
        bail!(
            "--offline-after ({:?}) must be at least twice --heartbeat ({:?}): one late heartbeat would drop a node's session",
            args.offline_after,
            args.heartbeat
        );
    }
    let dir = DataDir::new(&args.data_dir);
    dir.make_private()?;
    let files = dir.load()?;
    let store = Store::open(&dir.store_dir())?;
    let timing = QuicTiming::with_idle_timeout(args.agent_timeout);
    let quic_config = quic_server_config(files.ca.cert_pem(), &files.cert_pem, &files.key_pem, &timing)?;
    let https_config = https_server_config(files.ca.cert_pem(), &files.cert_pem, &files.key_pem)?;
    let host = store.meta(ADVERTISE_HOST_KEY)?.unwrap_or_else(|| args.quic.ip().to_string());
    let metrics_options = metrics_options(&args, &host, &dir);
    let credentials = Credentials { ca_pem: files.ca.cert_pem().to_string(), cert_pem: files.cert_pem.clone(), key_pem: files.key_pem.clone() };
    let config = ClusterConfig {
        offline_after: args.offline_after,
        heartbeat_interval: args.heartbeat,
        agent_endpoint: format!("{host}:{}", args.quic.port()),
        metrics: fogmesh_master::metrics::agent_settings(&credentials, &metrics_options)?,
        scaling_period: args.scaling_period,
        node_cert_lifetime: args.node_cert_lifetime,
    };
    let cluster = Cluster::new(store, files.ca, config);
    let metrics = Metrics::start(cluster.clone(), &credentials, metrics_options).await?;
    // Whatever the start made with the umask's mode, inside the 0700 data
    // folder (the metrics modules' own folders).
    let made = fogmesh_common::private_files::tighten_tree(&dir.root, &[])?;
    tracing::debug!(count = made.len(), "tightened what the start made");
    // Desired states reflect the apps and nodes in the store as of now.
    cluster.reschedule().await?;

    let endpoint_config = quic_endpoint_config(&dir.quic_reset_key()?)?;
    let udp = bind_with_recv_buffer(args.quic, FLEET_RECV_BUFFER).with_context(|| format!("listen for agents on {}/udp", args.quic))?;
    if let Some(why) = udp.shortfall(FLEET_RECV_BUFFER) {
        tracing::warn!("{why}");
    }
    let endpoint = quinn::Endpoint::new(endpoint_config, Some(quic_config), udp.socket, Arc::new(quinn::TokioRuntime))
        .with_context(|| format!("listen for agents on {}/udp", args.quic))?;
    let tcp = tokio::net::TcpListener::bind(args.api).await.with_context(|| format!("listen for the API on {}", args.api))?;
    tracing::info!(api = %args.api, quic = %endpoint.local_addr()?, "fogmesh-master serving");
    println!("fogmesh-master: API https://{}, agents quic://{}", args.api, endpoint.local_addr()?);

    tokio::spawn(cluster.clone().reschedule_forever());
    let keeper = PolicyKeeper::new(
        cluster.clone(),
        metrics.tsdb.clone(),
        Arc::new(RuleWorker::new(std::env::current_exe().context("find this program for the rule worker")?, vec![RULE_WORKER_ARG.into()])),
        KeeperOptions { default_period: args.scaling_period, node_set_hook: args.node_set_hook.clone(), limits: RuleLimits::default() },
    );
    tokio::spawn(keeper.run_forever());
    let quic_task = tokio::spawn(quic::serve(cluster.clone(), endpoint.clone()));
    let limits = ApiLimits { max_connections: args.max_api_connections.max(1), ..ApiLimits::default() };
    let router = api::router(Arc::clone(&cluster)).merge(api::protect(&cluster, fogmesh_master::metrics::http::router(metrics)));
    let api_task = tokio::spawn(https::serve(tcp, https_config, router, limits));
    tokio::select! {
        _ = api_task => anyhow::bail!("API server stopped"),
        _ = quic_task => anyhow::bail!("QUIC endpoint stopped"),
        _ = shutdown_signal() => {}
    }
    // Tell agents now, so they reconnect to the next master at once instead
    // of waiting out their idle timeout.
    tracing::info!(agents = cluster.connected_count(), "shutting down: closing agent sessions");
    endpoint.close(0u32.into(), b"master shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    cluster.store.flush().await?;
    Ok(())
}

/// The embedded broker on `--mqtt-listen` (agents dial the advertised host),
/// or the `--mqtt-url` broker for everyone.
fn metrics_options(args: &ServeArgs, advertise_host: &str, dir: &DataDir) -> MetricsOptions {
    let (embedded_broker, agent_url) = match &args.mqtt_url {
        Some(url) => (None, url.clone()),
        None => {
            let port = args.mqtt_listen.port();
            let host = if advertise_host.contains(':') { format!("[{advertise_host}]") } else { advertise_host.to_string() };
            (Some(args.mqtt_listen), format!("mqtts://{host}:{port}"))
        }
    };
    MetricsOptions {
        embedded_broker,
        agent_url,
        interval: args.metrics_interval,
        retention: args.metrics_retention,
        max_series_per_node: args.max_series_per_node,
        checkpoint_every: args.metrics_checkpoint_every,
        remote_write: args.remote_write.clone(),
        crl: args.mqtt_crl.clone(),
        dir: dir.root.join("metrics"),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
}
