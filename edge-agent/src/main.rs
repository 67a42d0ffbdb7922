//! `fogmesh-agent`: runs one fog node's workloads.

use std::process::ExitCode;

use clap::Parser;

/// fogmesh-agent: the agent on a fog or edge device.
///
/// It dials out to the fogmesh master over QUIC, stores the node's desired
/// state locally, and runs its containers on the local Docker engine, also
/// while the master is unreachable.
#[derive(Debug, Parser)]
#[command(name = "fogmesh-agent", version)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("fogmesh-agent: the agent is not built yet; see `fogmesh-agent --help`");
    ExitCode::from(2)
}
