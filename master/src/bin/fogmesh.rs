//! `fogmesh`: the command-line client of a fogmesh cluster.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fogmesh_master::cli::adt::{self, AdtCommand};
use fogmesh_master::cli::app::{self, AppCommand};
use fogmesh_master::cli::client::Connection;
use fogmesh_master::cli::metrics::{self, MetricsCommand};
use fogmesh_master::cli::node::{self, NodeCommand};
use fogmesh_master::cli::policy::{self, PolicyCommand};
use fogmesh_master::cli::token::{self, TokenCommand};

/// fogmesh: run container workloads on fleets of fog and edge devices.
///
/// Application Description Templates (ADTs, MiCADO's TOSCA dialect) describe
/// the nodes, containers and scaling policies of an application. `adt`
/// commands work offline; the others talk to a master (see --config).
#[derive(Debug, Parser)]
#[command(name = "fogmesh", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and compile ADTs locally, without a master.
    #[command(subcommand)]
    Adt(AdtCommand),
    /// Try scaling policies locally, without a master.
    #[command(subcommand)]
    Policy(PolicyCommand),
    #[command(flatten)]
    Remote(RemoteCommand),
}

/// Commands that talk to a master.
#[derive(Debug, Subcommand)]
enum RemoteCommand {
    /// Submit, update, inspect and delete applications.
    #[command(subcommand)]
    App(AppCommand),
    /// Declare, list and remove fog nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Create join tokens for agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Query the metrics agents report (PromQL).
    #[command(subcommand)]
    Metrics(MetricsCommand),
}

/// Rules run in a child process: this program with this argument.
const RULE_WORKER_ARG: &str = "__rule-worker";

// Lets the rule worker enforce its memory limit; unarmed it only counts.
#[global_allocator]
static ALLOCATOR: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(RULE_WORKER_ARG) {
        return fogmesh_common::scaling::worker::serve_worker();
    }
    fogmesh_master::logging::init("warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Adt(cmd) => return adt::run(cmd),
        Command::Policy(cmd) => {
            let program = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("fogmesh: error: cannot find this program to run rules: {e}");
                    return ExitCode::from(1);
                }
            };
            return policy::run(cmd, program, vec![RULE_WORKER_ARG.into()]);
        }
        Command::Remote(cmd) => run_remote(&cli.connection, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fogmesh: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_remote(connection: &Connection, command: RemoteCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = connection.client()?;
        match command {
            RemoteCommand::App(cmd) => app::run(&client, cmd).await,
            RemoteCommand::Node(cmd) => node::run(&client, cmd).await,
            RemoteCommand::Token(cmd) => token::run(&client, cmd).await,
            RemoteCommand::Metrics(cmd) => metrics::run(&client, cmd).await,
        }
    })
}
