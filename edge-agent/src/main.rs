//! `fogmesh-agent`: runs one fog node's workloads.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fogmesh_agent::connector::{join, JoinOptions};
use fogmesh_agent::identity::IdentityFiles;

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
    /// Join a cluster with a single-use token: gets this node its certificate.
    Join {
        #[command(flatten)]
        join: JoinArgs,
        #[arg(long, value_name = "HOST:PORT")]
        master: String,
        #[arg(long, env = "FOGMESH_JOIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Run the node: its stored workloads start at once, then it connects.
    /// With --token and --master it joins first if it has not yet.
    Run {
        #[command(flatten)]
        join: JoinArgs,
        #[arg(long, value_name = "HOST:PORT", requires = "token")]
        master: Option<String>,
        #[arg(long, env = "FOGMESH_JOIN_TOKEN", hide_env_values = true, requires = "master")]
        token: Option<String>,
        /// Address to publish container ports on (default: the public IP if
        /// this machine has it, else all addresses).
        #[arg(long, value_name = "IP")]
        bind_ip: Option<IpAddr>,
    },
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// Where the node keeps its identity and desired state.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The node's public IP, its identity in ADTs (default: the local address towards the master).
    #[arg(long, value_name = "IP")]
    public_ip: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// Label k=v (repeatable).
    #[arg(long = "label", value_name = "K=V", value_parser = label)]
    labels: Vec<(String, String)>,
}

fn label(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got '{arg}'")),
    }
}

fn main() -> ExitCode {
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
        Command::Run { join: args, master, token, bind_ip } => {
            let files = IdentityFiles::new(&args.data_dir);
            if let (Some(master), Some(token), false) = (master, token, files.exists()) {
                do_join(&files, JoinArgs { data_dir: args.data_dir.clone(), ..args }, master, token).await?;
            }
            let data_dir = args.data_dir;
            fogmesh_agent::agent::run(&data_dir, bind_ip).await
        }
    }
}

async fn do_join(files: &IdentityFiles, args: JoinArgs, master: String, token: String) -> Result<()> {
    let identity = join(&JoinOptions { master, token, public_ip: args.public_ip, name: args.name, labels: args.labels }).await?;
    files.save(&identity)?;
    println!("joined as node {} (public IP {})", identity.info.node_name, identity.info.public_ip);
    Ok(())
}
