//! The fogmesh master (control plane) and the `fogmesh` CLI client.

pub mod cli;
pub mod logging;
