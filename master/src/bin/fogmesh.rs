//! `fogmesh`: the command-line client of a fogmesh cluster.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fogmesh_master::cli::adt::{self, AdtCommand};

/// fogmesh: run container workloads on fleets of fog and edge devices.
///
/// Application Description Templates (ADTs, MiCADO's TOSCA dialect) describe
/// the nodes, containers and scaling policies of an application.
#[derive(Debug, Parser)]
#[command(name = "fogmesh", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and compile ADTs locally, without a master.
    #[command(subcommand)]
    Adt(AdtCommand),
}

fn main() -> ExitCode {
    fogmesh_master::logging::init("warn");
    let cli = Cli::parse();
    match cli.command {
        Command::Adt(cmd) => adt::run(cmd),
    }
}
