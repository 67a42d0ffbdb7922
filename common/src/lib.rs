//! Code shared by the fogmesh master and edge agent.

pub mod adt;
