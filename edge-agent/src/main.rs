//! `fogmesh-agent`: runs one fog node's workloads.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fogmesh_agent::agent::RunOptions;
use fogmesh_agent::connector::{join, JoinOptions};
use fogmesh_agent::simulate::SimulateOptions;
use fogmesh_agent::identity::IdentityFiles;
use fogmesh_agent::metrics::queue::QueueCap;

/// fogmesh-agent: the agent on a fog or edge device.
///
/// It dials out to the fogmesh master over QUIC (mutual TLS), stores the
/// node's desired state locally before acknowledging it, and runs the
/// containers on the local Docker engine, also while the master is
/// unreachable and after a reboot without the master.
#[derive(Debug, Parser)]
#[command(name = "fogmesh-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a cluster with a join token: gets this node its certificate.
    Join {
        #[command(flatten)]
        join: JoinArgs,
        /// The master's agent endpoint (QUIC), e.g. 203.0.113.5:7401.
        #[arg(long, value_name = "HOST:PORT")]
        master: String,
        /// Join token from `fogmesh token create`; prefer the environment
        /// variable, so the token does not show in the process list.
        #[arg(long, env = "FOGMESH_JOIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Run the node: its stored workloads start at once, then it connects.
    /// With --token and --master it joins first if it has not yet.
    Run {
        #[command(flatten)]
        join: JoinArgs,
        /// The master's agent endpoint (QUIC), e.g. 203.0.113.5:7401; needed only to join.
        #[arg(long, value_name = "HOST:PORT", requires = "token")]
        master: Option<String>,
        /// Join token, needed only to join (see `join --token`).
        #[arg(long, env = "FOGMESH_JOIN_TOKEN", hide_env_values = true, requires = "master")]
        token: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Simulate a fleet: COUNT nodes in this process, each joined with its
    /// own certificate and its own QUIC session, with a fake container
    /// runtime. For fleet-scale tests and benchmarks.
    Simulate(SimulateArgs),
    /// Measure what the agent costs the node it runs on.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// CPU and memory of collecting metrics (node and containers, signed,
    /// queued with fsync) every interval; beside a node-exporter scraped as often.
    Collect {
        /// Time between two collections.
        #[arg(long, default_value = "15s", value_parser = duration_arg)]
        interval: std::time::Duration,
        /// How long to measure.
        #[arg(long, default_value = "5m", value_parser = duration_arg)]
        duration: std::time::Duration,
        /// Prometheus node-exporter to compare with (`apt-get install prometheus-node-exporter`).
        #[arg(long, default_value = "prometheus-node-exporter", value_name = "PATH")]
        node_exporter: PathBuf,
        /// Measure fogmesh alone.
        #[arg(long)]
        no_peer: bool,
        /// Scratch folder (emptied first).
        #[arg(long, default_value = "/tmp/fogmesh-bench-collect", value_name = "DIR")]
        work_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// The master's agent endpoint (QUIC), e.g. 127.0.0.1:7401.
    #[arg(long, value_name = "HOST:PORT")]
    master: String,
    /// Join token good for --count joins (`fogmesh token create --uses N`);
    /// needed only for nodes that have not joined yet.
    #[arg(long, env = "FOGMESH_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Number of simulated nodes.
    #[arg(long)]
    count: usize,
    /// Folder with one sub-folder (identity, store) per simulated node.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Node names are PREFIX-N.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Node N gets the public IP IP_BASE + N.
    #[arg(long, default_value = "10.200.0.0")]
    ip_base: std::net::Ipv4Addr,
    /// How long a simulated container takes to start.
    #[arg(long, default_value = "0s", value_parser = duration_arg_zero)]
    start_delay: std::time::Duration,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 32)]
    join_concurrency: usize,
    /// A master silent for this long counts as unreachable.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    master_timeout: std::time::Duration,
    /// Nodes that open their first session per second, as a fleet that
    /// boots over time (0: all at once). Reconnects after a master restart
    /// are the agents' own back-off, whatever this is.
    #[arg(long, default_value_t = 0)]
    connect_rate: u32,
    /// Publish synthetic node metrics from every node (signed, queued on
    /// disk, over its own MQTT session), as real agents do.
    #[arg(long)]
    metrics: bool,
    /// Append "UNIX_MS NODE GENERATION" to FILE whenever a node stores a
    /// desired state (for fan-out percentiles).
    #[arg(long, value_name = "FILE")]
    received_log: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Address to publish container ports on (default: the public IP if
    /// this machine has it, else all addresses).
    #[arg(long, value_name = "IP")]
    bind_ip: Option<IpAddr>,
    /// Label K=V put on every container this agent creates (repeatable),
    /// e.g. to find them later.
    #[arg(long = "container-label", value_name = "K=V", value_parser = label)]
    container_labels: Vec<(String, String)>,
    /// A master silent for this long counts as unreachable (QUIC idle
    /// timeout; the agent pings four times as often).
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    master_timeout: std::time::Duration,
    /// Most disk the metrics queue may use while the broker or master is
    /// unreachable (e.g. 256Mi, 2Gi); beyond it the oldest batches are
    /// dropped and counted.
    #[arg(long, default_value = "256Mi", value_parser = bytes_arg)]
    metrics_queue_max_bytes: u64,
    /// Oldest batch the metrics queue keeps (e.g. 7d, 12h).
    #[arg(long, default_value = "7d", value_parser = duration_arg)]
    metrics_queue_max_age: std::time::Duration,
    /// After the master has been unreachable this long, the node runs the
    /// scaling policies of workloads that run only on it by itself.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    autonomy_after: std::time::Duration,
}

fn bytes_arg(text: &str) -> Result<u64, String> {
    fogmesh_common::adt::quantity::parse_memory_bytes(text).filter(|b| *b > 0).ok_or_else(|| format!("'{text}' is not a size like 256Mi or 2Gi"))
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// Where the node keeps its identity and desired state.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The node's public IP, its identity in ADTs (default: the local address towards the master).
    #[arg(long, value_name = "IP")]
    public_ip: Option<String>,
    /// Node name (default: the name of a node declared with this public IP,
    /// else node-IP).
    #[arg(long)]
    name: Option<String>,
    /// Node label K=V (repeatable).
    #[arg(long = "label", value_name = "K=V", value_parser = label)]
    labels: Vec<(String, String)>,
    /// Join as a member of this node set of an ADT (e.g. machines a
    /// `--node-set-hook` created for a Compute node set); same as
    /// `--label fogmesh.node-set=NAME`.
    #[arg(long, value_name = "NAME")]
    node_set: Option<String>,
    /// Take over the node already registered with this public IP: its old
    /// certificate is revoked and its old agent is refused from then on.
    #[arg(long)]
    replace: bool,
}

fn duration_arg_zero(text: &str) -> Result<std::time::Duration, String> {
    if let Some(ms) = text.strip_suffix("ms").and_then(|n| n.parse::<u64>().ok()) {
        return Ok(std::time::Duration::from_millis(ms));
    }
    fogmesh_common::adt::quantity::parse_duration_seconds(text)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is not a duration like 200ms, 0s or 2s"))
}

fn duration_arg(text: &str) -> Result<std::time::Duration, String> {
    fogmesh_common::adt::quantity::parse_duration_seconds(text)
        .filter(|s| *s > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is not a duration like 10s or 1m"))
}

fn label(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got '{arg}'")),
    }
}

/// Scaling rules run in a child process: this program with this argument.
const RULE_WORKER_ARG: &str = "__rule-worker";

// Lets the rule worker enforce its memory limit; unarmed it only counts.
#[global_allocator]
static ALLOCATOR: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(RULE_WORKER_ARG) {
        return fogmesh_common::scaling::worker::serve_worker();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new().context("start the async runtime").and_then(|rt| rt.block_on(dispatch(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fogmesh-agent: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Join { join: args, master, token } => {
            let files = IdentityFiles::new(&args.data_dir);
            if files.exists() {
                bail!("{} already holds a joined node; use another --data-dir to join again", args.data_dir.display());
            }
            do_join(&files, args, master, token).await
        }
        Command::Run { join: args, master, token, run } => {
            let files = IdentityFiles::new(&args.data_dir);
            let data_dir = args.data_dir.clone();
            if let (Some(master), Some(token), false) = (master, token, files.exists()) {
                do_join(&files, args, master, token).await?;
            }
            let options = RunOptions {
                bind_ip: run.bind_ip,
                container_labels: run.container_labels,
                master_timeout: run.master_timeout,
                metrics_queue: QueueCap { max_bytes: run.metrics_queue_max_bytes, max_age: run.metrics_queue_max_age },
                autonomy_after: run.autonomy_after,
                rule_worker: (std::env::current_exe().context("find this program to run scaling rules")?, vec![RULE_WORKER_ARG.into()]),
            };
            fogmesh_agent::agent::run(&data_dir, options).await
        }
        Command::Bench(BenchCommand::Collect { interval, duration, node_exporter, no_peer, work_dir }) => {
            let options = fogmesh_agent::bench::CollectBenchOptions { interval, duration, node_exporter: (!no_peer).then_some(node_exporter), work_dir };
            let report = fogmesh_agent::bench::run(options).await?;
            print!("{report}");
            Ok(())
        }
        Command::Simulate(a) => {
            fogmesh_agent::simulate::run(SimulateOptions {
                master: a.master,
                token: a.token,
                count: a.count,
                data_dir: a.data_dir,
                prefix: a.prefix,
                ip_base: a.ip_base,
                start_delay: a.start_delay,
                join_concurrency: a.join_concurrency,
                master_timeout: a.master_timeout,
                connect_rate: a.connect_rate,
                metrics: a.metrics,
                received_log: a.received_log,
            })
            .await
        }
    }
}

async fn do_join(files: &IdentityFiles, args: JoinArgs, master: String, token: String) -> Result<()> {
    let data_dir = args.data_dir.clone();
    let mut labels = args.labels;
    if let Some(set) = args.node_set {
        labels.push((fogmesh_common::wire::NODE_SET_LABEL.into(), set));
    }
    let (identity, metrics) = join(&JoinOptions { master, token, public_ip: args.public_ip, name: args.name, labels, replace: args.replace }).await?;
    files.save(&identity)?;
    fogmesh_agent::metrics::settings::SettingsFile::new(&data_dir).save(&metrics)?;
    println!("joined as node {} (public IP {})", identity.info.node_name, identity.info.public_ip);
    Ok(())
}
