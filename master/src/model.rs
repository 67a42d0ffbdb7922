//! The master's records and the REST API's request/response bodies. The CLI
//! uses the same types, so client and server cannot drift apart.

use std::collections::BTreeMap;

use fogmesh_common::adt::Plan;
use fogmesh_common::wire::{Capacity, Condition, ContainerState};
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
    /// The node certificate: its key verifies the node's metric batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// The certificate the last renewal replaced: still the node's (its
    /// sessions and queued batches made with it stay good) until the next
    /// renewal; revoked with the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_cert: Option<PreviousCert>,
    /// Unix milliseconds of the last frame from the agent.
    pub last_seen_ms: Option<u64>,
    /// The labels the agent last reported about itself: logged when they
    /// change, never obeyed (`labels` come from the join and the operator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reported_labels: Vec<(String, String)>,
}

/// A node's certificate before its last renewal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreviousCert {
    pub fingerprint: String,
    pub pem: String,
}

impl NodeRecord {
    /// Whether a certificate (by fingerprint) is this node's: its current
    /// one, or the one its last renewal replaced.
    pub fn holds_cert(&self, fingerprint: &str) -> bool {
        self.cert_fingerprint.as_deref() == Some(fingerprint) || self.previous_cert.as_ref().is_some_and(|p| p.fingerprint == fingerprint)
    }

    /// A node known by name and IP only: declared, its agent not joined yet.
    pub fn declared(name: &str, public_ip: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            public_ip: public_ip.into(),
            labels: vec![],
            capacity: None,
            runtime_version: None,
            agent_version: None,
            cert_fingerprint: None,
            cert_pem: None,
            previous_cert: None,
            last_seen_ms: None,
            reported_labels: vec![],
        }
    }
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
    pub labels: BTreeMap<String, String>,
    pub capacity: Option<Capacity>,
    pub runtime_version: Option<String>,
    pub agent_version: Option<String>,
    /// Containers the node should run / reports running.
    pub containers_desired: usize,
    pub containers_running: usize,
    pub desired_generation: u64,
    pub acked_generation: u64,
    /// Problems the agent reports, e.g. a full disk.
    pub conditions: Vec<Condition>,
    /// When the node's certificate expires (unix ms); its agent renews it
    /// at two thirds of its life.
    #[serde(default)]
    pub cert_expires_ms: Option<u64>,
}

/// What `GET /v1/node-summary` returns: the fleet in counts, cheap to ask
/// of 10,000 nodes (`fogmesh node summary`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub nodes: usize,
    pub ready: usize,
    pub offline: usize,
    pub pending: usize,
    pub containers_desired: usize,
    pub containers_running: usize,
    /// Nodes whose desired state is not acked yet.
    pub not_acked: usize,
    /// Per condition kind the agents report, how many nodes have it.
    pub conditions: BTreeMap<String, usize>,
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
    /// Update only: forget the parameters of earlier revisions instead of
    /// keeping those not given again.
    #[serde(default)]
    pub reset_params: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppSummary {
    pub id: String,
    pub name: String,
    pub revision: u64,
    pub workloads: usize,
    /// Containers that run their current spec / that should run.
    pub current: usize,
    pub desired: usize,
    pub phase: RolloutPhase,
    pub updated_ms: u64,
}

/// `GET /v1/apps/{id}`: the rollout verdict, and per workload and node
/// what should run against what runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppDetail {
    pub id: String,
    pub name: String,
    pub revision: u64,
    /// Parameters in effect (values of `secret` inputs shown as `<secret>`).
    pub params: Vec<(String, String)>,
    pub rollout: Rollout,
    /// Per node the app runs on: the desired state it must ack.
    pub nodes: Vec<NodeRollout>,
    pub workloads: Vec<WorkloadView>,
    /// Per scaling policy: its target, bounds and last decision.
    #[serde(default)]
    pub scaling: Vec<PolicyView>,
    /// The master's change counter when this view was taken: pass it back as
    /// `wait_after` to wait for the next change.
    pub version: u64,
}

/// A scaling policy as `app show` presents it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyView {
    /// `KEY #INDEX` (keys repeat in real ADTs).
    pub policy: String,
    pub target: String,
    /// Replicas (container target) or nodes (node set) now.
    pub current: u32,
    pub min: u32,
    pub max: Option<u32>,
    /// Seconds between rounds.
    pub period_seconds: u64,
    pub last: Option<ScalingEvent>,
}

/// One round of a scaling policy (or an agent's decision made offline):
/// what it read, printed and decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingEvent {
    /// Increases per app.
    pub seq: u64,
    /// When the round ran (unix ms).
    pub at_ms: i64,
    pub policy: String,
    pub target: String,
    /// `master`, or `agent NODE (offline)` for a decision made on the node.
    pub by: String,
    pub outcome: EventOutcome,
    pub from: Option<u32>,
    pub to: Option<u32>,
    /// Query and alert values the rule read.
    pub readings: serde_json::Map<String, serde_json::Value>,
    pub printed: Vec<String>,
    /// Why: adjustments, query warnings, the rule's error with its line.
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventOutcome {
    /// The count changed.
    Scaled,
    /// The rule kept the count.
    Unchanged,
    /// The rule or its inputs failed: nothing changed.
    Failed,
}

/// `GET /v1/apps/ID/events`: events after `after`, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<ScalingEvent>,
    /// Pass back as `after` to get only newer ones.
    pub last_seq: u64,
    pub version: u64,
}

/// Whether the app runs what its current revision says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub phase: RolloutPhase,
    /// What is in the way, one line each (empty when running).
    pub reasons: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutPhase {
    /// Every node acked, every container runs its current spec (and is ready).
    Running,
    /// On its way: images pulling, containers starting, acks outstanding.
    Progressing,
    /// Waiting for something outside fogmesh: a node to join or come back.
    Waiting,
    /// Cannot complete without an operator: a container fails, a workload
    /// can never be placed, a host port is taken.
    Failed,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Running => "running",
            RolloutPhase::Progressing => "progressing",
            RolloutPhase::Waiting => "waiting",
            RolloutPhase::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRollout {
    pub node: String,
    pub node_state: NodeState,
    pub desired_generation: u64,
    pub acked_generation: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadView {
    pub name: String,
    pub image: String,
    pub desired_replicas: u32,
    /// Replicas that run their current spec.
    pub current_replicas: u32,
    pub placements: Vec<PlacementView>,
    /// Why some or all replicas have no node, e.g. no node with the public IP.
    pub pending: Option<Pending>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlacementView {
    pub node: String,
    pub node_state: NodeState,
    pub desired: u32,
    /// Containers that run the current spec.
    pub current: u32,
    pub containers: Vec<ContainerView>,
}

/// One replica on one node, as its agent last reported it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerView {
    /// The container key (`APP_ID.WORKLOAD.REPLICA`).
    pub name: String,
    pub replica: u32,
    /// `None`: the agent has not reported this container yet.
    pub state: Option<ContainerState>,
    /// Runs the spec of the current revision.
    pub current: bool,
    /// Readiness probe result, when the workload has one.
    pub ready: Option<bool>,
    pub restarts: u32,
    pub error: Option<String>,
}

/// Why a workload is not (fully) placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub kind: PendingKind,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingKind {
    /// A node has to join or come back; it resolves by itself.
    Waiting,
    /// Cannot be placed with this ADT (e.g. a cloud node set).
    Unplaceable,
    /// Collides with something already placed (a host port).
    Conflict,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateToken {
    pub ttl_seconds: u64,
    /// How many agents may join with it (default 1).
    #[serde(default = "one")]
    pub uses: u32,
    /// A token for an agent that takes the place of this joined node (`--replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
}

/// `POST /v1/nodes/{name}/labels`: labels to set and to remove.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LabelNode {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub expires_ms: u64,
    pub uses: u32,
}

/// A stored join token: only the hash of its secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub secret_hash: String,
    pub expires_ms: u64,
    /// Joins it still allows.
    pub uses_left: u32,
    /// Made for `--replace` of this node, and only for that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
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
