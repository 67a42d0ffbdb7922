//! The fogmesh edge agent: runs one fog node's containers, online or not.

pub mod agent;
pub mod autonomy;
pub mod bench;
pub mod capacity;
pub mod connector;
pub mod identity;
pub mod local_store;
pub mod metrics;
pub mod persister;
pub mod reconciler;
pub mod silence;
pub mod simulate;
pub mod status;
