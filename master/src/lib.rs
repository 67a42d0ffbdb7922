//! The fogmesh master (control plane) and the `fogmesh` CLI client.

pub mod api;
pub mod apps;
pub mod bench;
pub mod bench_store;
pub mod cli;
pub mod cluster;
pub mod datadir;
pub mod failure;
pub mod flusher;
pub mod https;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod nodes;
pub mod policy_keeper;
pub mod quic;
pub mod rollout;
pub mod scheduler;
pub mod store;
