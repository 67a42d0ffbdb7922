//! `fogmesh-master`: the fogmesh control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fogmesh_common::tls::{https_server_config, quic_server_config, QuicTiming};
use fogmesh_master::cli::duration_arg;
use fogmesh_master::cluster::{Cluster, ClusterConfig};
use fogmesh_master::datadir::{DataDir, ADVERTISE_HOST_KEY};
use fogmesh_master::https::ApiLimits;
use fogmesh_master::store::Store;
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
}

fn main() -> ExitCode {
    fogmesh_master::logging::init("info");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { data_dir, advertise, api } => init(&data_dir, &advertise, &api),
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

async fn serve(args: ServeArgs) -> Result<()> {
    let dir = DataDir::new(&args.data_dir);
    let files = dir.load()?;
    let store = Store::open(&dir.store_dir())?;
    let timing = QuicTiming::with_idle_timeout(args.agent_timeout);
    let quic_config = quic_server_config(files.ca.cert_pem(), &files.cert_pem, &files.key_pem, &timing)?;
    let https_config = https_server_config(files.ca.cert_pem(), &files.cert_pem, &files.key_pem)?;
    let host = store.meta(ADVERTISE_HOST_KEY)?.unwrap_or_else(|| args.quic.ip().to_string());
    let config = ClusterConfig {
        offline_after: args.offline_after,
        heartbeat_interval: args.heartbeat,
        agent_endpoint: format!("{host}:{}", args.quic.port()),
    };
    let cluster = Cluster::new(store, files.ca, config);
    // Desired states reflect the apps and nodes in the store as of now.
    cluster.reschedule().await?;

    let endpoint = quinn::Endpoint::server(quic_config, args.quic).with_context(|| format!("listen for agents on {}/udp", args.quic))?;
    let tcp = tokio::net::TcpListener::bind(args.api).await.with_context(|| format!("listen for the API on {}", args.api))?;
    tracing::info!(api = %args.api, quic = %endpoint.local_addr()?, "fogmesh-master serving");
    println!("fogmesh-master: API https://{}, agents quic://{}", args.api, endpoint.local_addr()?);

    tokio::spawn(cluster.clone().reschedule_forever());
    let quic_task = tokio::spawn(quic::serve(cluster.clone(), endpoint.clone()));
    let limits = ApiLimits { max_connections: args.max_api_connections.max(1), ..ApiLimits::default() };
    let api_task = tokio::spawn(https::serve(tcp, https_config, api::router(Arc::clone(&cluster)), limits));
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
