//! `fogmesh-master`: the fogmesh control plane.

use std::process::ExitCode;

use clap::Parser;

/// fogmesh-master: the control plane of a fogmesh cluster.
///
/// It compiles ADTs into deployment plans, keeps the desired state of every
/// fog node, and pushes it to the nodes' agents over QUIC. Use the `fogmesh`
/// CLI to talk to it; `fogmesh adt validate` checks ADTs without a master.
#[derive(Debug, Parser)]
#[command(name = "fogmesh-master", version)]
struct Cli {}

fn main() -> ExitCode {
    fogmesh_master::logging::init("info");
    let _cli = Cli::parse();
    eprintln!("fogmesh-master: the control plane is not built yet; see `fogmesh-master --help`");
    ExitCode::from(2)
}
