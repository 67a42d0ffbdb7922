//! `fogmesh-master`: the fogmesh control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fogmesh_common::tls::{https_server_config, quic_server_config};
use fogmesh_master::cli::duration_arg;
use fogmesh_master::cluster::{Cluster, ClusterConfig};
use fogmesh_master::datadir::DataDir;
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
    Serve {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7400")]
        api: SocketAddr,
        #[arg(long, default_value = "0.0.0.0:7401")]
        quic: SocketAddr,
        /// A node silent for this long is shown offline (its workloads stay).
        #[arg(long, default_value = "15s", value_parser = duration_arg)]
        offline_after: Duration,
        /// Heartbeat interval asked of agents.
        #[arg(long, default_value = "3s", value_parser = duration_arg)]
        heartbeat: Duration,
    },
}

fn main() -> ExitCode {
    fogmesh_master::logging::init("info");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { data_dir, advertise, api } => init(&data_dir, &advertise, &api),
        Command::Serve { data_dir, api, quic, offline_after, heartbeat } => tokio::runtime::Runtime::new()
            .context("start the async runtime")
            .and_then(|rt| rt.block_on(serve(data_dir, api, quic, offline_after, heartbeat))),
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

async fn serve(data_dir: PathBuf, api_addr: SocketAddr, quic_addr: SocketAddr, offline_after: Duration, heartbeat: Duration) -> Result<()> {
    let dir = DataDir::new(&data_dir);
    let files = dir.load()?;
    let store = Store::open(&dir.store_dir())?;
    let quic_config = quic_server_config(files.ca.cert_pem(), &files.cert_pem, &files.key_pem)?;
    let https_config = https_server_config(files.ca.cert_pem(), &files.cert_pem, &files.key_pem)?;
    let cluster = Cluster::new(store, files.ca, ClusterConfig { offline_after, heartbeat_interval: heartbeat });
    // Desired states reflect the apps and nodes in the store as of now.
    cluster.reschedule().await?;

    let endpoint = quinn::Endpoint::server(quic_config, quic_addr).with_context(|| format!("listen for agents on {quic_addr}/udp"))?;
    let tcp = tokio::net::TcpListener::bind(api_addr).await.with_context(|| format!("listen for the API on {api_addr}"))?;
    let listener = https::TlsListener::new(tcp, https_config)?;
    tracing::info!(api = %api_addr, quic = %endpoint.local_addr()?, "fogmesh-master serving");
    println!("fogmesh-master: API https://{api_addr}, agents quic://{}", endpoint.local_addr()?);

    let quic_task = tokio::spawn(quic::serve(cluster.clone(), endpoint));
    let app = api::router(Arc::clone(&cluster));
    tokio::select! {
        r = axum::serve(listener, app) => r.context("API server stopped")?,
        _ = quic_task => anyhow::bail!("QUIC endpoint stopped"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
    }
    Ok(())
}
