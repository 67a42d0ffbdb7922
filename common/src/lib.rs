//! Code shared by the fogmesh master and edge agent.

pub mod adt;
pub mod codec;
pub mod connection_ids;
pub mod metrics;
pub mod pki;
pub mod private_files;
pub mod procstat;
pub mod promql;
pub mod scaling;
pub mod tls;
pub mod udp;
pub mod wire;
