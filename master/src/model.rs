//! The master's records and the REST API's request/response bodies. The CLI
//! uses the same types, so client and server cannot drift apart.

use fogmesh_common::adt::Plan;
use fogmesh_common::wire::{Capacity, ContainerStatus};
use serde::{Deserialize, Serialize};

/// A fog node known to the master: pre-declared, joined, or both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub public_ip: String,
    pub labels: Vec<(String, String)>,
    pub capacity: Option<Capacity>,
    pub runtime_version: Option<String>,
    pub agent_version: Option<String>,
    /// SHA-256 of the node certificate; `None` until the agent joins.
    pub cert_fingerprint: Option<String>,
    /// Unix milliseconds of the last frame from the agent.
    pub last_seen_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Connected and heard from recently.
    Ready,
    /// Joined, but silent for longer than the offline threshold.
    Offline,
    /// Declared with `node add`, no agent has joined yet.
    Pending,
}

/// What `GET /v1/nodes` returns per node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub public_ip: String,
    pub state: NodeState,
    pub last_seen_ms: Option<u64>,
    pub labels: Vec<(String, String)>,
    pub capacity: Option<Capacity>,
    pub runtime_version: Option<String>,
    /// Containers the node should run / reports running.
    pub containers_desired: usize,
    pub containers_running: usize,
    pub desired_generation: u64,
    pub acked_generation: u64,
}

/// A submitted application: its ADT, parameters and compiled plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub id: String,
    pub name: String,
    pub adt: String,
    pub params: Vec<(String, String)>,
    pub plan: Plan,
    pub revision: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitApp {
    pub name: Option<String>,
    pub adt: String,
    #[serde(default)]
    pub params: Vec<(String, String)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppSummary {
    pub id: String,
    pub name: String,
    pub revision: u64,
    pub workloads: usize,
    pub running: usize,
    pub desired: usize,
    pub updated_ms: u64,
}

/// `GET /v1/apps/{id}`: per workload, per node, desired against running.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppDetail {
    pub id: String,
    pub name: String,
    pub revision: u64,
    pub workloads: Vec<WorkloadView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadView {
    pub name: String,
    pub image: String,
    pub desired_replicas: u32,
    pub placements: Vec<PlacementView>,
    /// Why some or all replicas have no node, e.g. no node with the public IP.
    pub pending_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlacementView {
    pub node: String,
    pub node_state: NodeState,
    pub desired: u32,
    pub running: u32,
    /// Reported problems of this workload's containers on the node.
    pub reasons: Vec<String>,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateToken {
    pub ttl_seconds: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub expires_ms: u64,
}

/// A stored join token: only the hash of its secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub secret_hash: String,
    pub expires_ms: u64,
    pub used: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeclareNode {
    pub public_ip: String,
    pub name: Option<String>,
}

/// The body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// ADT problems, one line each (`LINE:COL: subject: message`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
