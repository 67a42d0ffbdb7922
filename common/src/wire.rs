//! Messages between master and agent on the QUIC control stream.
//!
//! An agent opens one bidirectional stream per connection and sends either
//! `Join` (first contact, with a join token) or `Hello` (a joined node, over
//! mutual TLS). After `Welcome` the stream carries heartbeats, desired-state
//! updates, acks and status for the life of the connection. Frames are
//! encoded by [`crate::codec`]. Types here avoid self-describing values
//! (no `serde_json::Value`): the codec is not self-describing.
//!
//! A desired state travels as one `DesiredApp` frame per app followed by
//! `DesiredDone`, so the frame limit bounds one app on one node, never the
//! sum of all apps a node runs.

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; an agent with another version is
/// refused with a message naming both versions.
pub const PROTOCOL_VERSION: u32 = 5;
/// TLS application protocol of the control plane.
pub const ALPN: &[u8] = b"fogmesh/2";
/// The node label that makes a node a member of an ADT's node set: an
/// agent joined with `--node-set NAME` carries it, the scheduler reads it.
pub const NODE_SET_LABEL: &str = "fogmesh.node-set";

/// Agent -> master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Join(JoinRequest),
    Hello(Hello),
    Heartbeat,
    /// The desired state of this generation is durably stored on the node.
    Ack { generation: u64 },
    Status(NodeStatus),
    /// Scaling decisions the agent made on its own while cut off, oldest
    /// first (sent after Welcome until the master takes them).
    ScalingReport(Vec<LocalDecision>),
    /// A new certificate for a new key: in a session when the current one is
    /// two thirds through its life, or as the first frame of a connection
    /// made with an expired one (the only thing such a connection may do).
    Renew { csr_pem: String },
}

/// Master -> agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MasterMessage {
    Joined(JoinResponse),
    Welcome { node_name: String, heartbeat_interval_ms: u64 },
    /// The master will not serve this agent; the reason is for its operator.
    Refused { reason: String, kind: Refusal },
    /// Where and how often the agent sends its metrics (also at every Welcome).
    Metrics(MetricsSettings),
    /// One app's part of the desired state `generation`.
    DesiredApp { generation: u64, app: AppDesired },
    /// The desired state `generation` is complete: `apps` parts were sent
    /// for it, and every app not among them must not run on the node.
    DesiredDone { generation: u64, apps: u32 },
    /// The master recorded the agent's decisions up to this time (unix ms):
    /// the agent may forget them.
    ScalingReportTaken { up_to_ms: i64 },
    /// The node's new certificate, for the key of its `Renew`.
    Renewed { cert_pem: String },
}

/// A scaling policy the agent may evaluate on its own while cut off from
/// the master: its target runs only on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPolicy {
    pub app_id: String,
    /// The target workload.
    pub workload: String,
    /// Identifies the policy and target (the master's runtime key).
    pub key: String,
    /// `KEY #INDEX`, for events.
    pub label: String,
    /// A plan holding the policy, its target workload and the ADT-wide
    /// constants and queries, as JSON (the wire codec is not self-describing).
    pub plan_json: String,
    /// Replicas the master last decided.
    pub replicas: u32,
}

/// A decision an agent made on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalDecision {
    pub app_id: String,
    pub workload: String,
    pub key: String,
    pub label: String,
    pub at_ms: i64,
    pub from: u32,
    pub to: u32,
    pub printed: Vec<String>,
    /// Query and alert values the rule read, as JSON.
    pub readings_json: String,
    pub message: String,
    pub failed: bool,
}

/// Why the master refused; agents act on some kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Something the operator must fix (versions, unknown node, ...).
    Other,
    /// The node was removed and its certificate revoked: its workloads must go.
    Revoked,
    /// Another agent joined as this node: this agent must leave the
    /// containers alone (they are the new agent's now).
    Replaced,
}

/// The containers of one app on one node, and what of it to measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppDesired {
    pub app_id: String,
    pub containers: Vec<ContainerSpec>,
    pub metrics: Option<AppMetrics>,
    /// Policies this node may evaluate on its own while cut off.
    pub policies: Vec<LocalPolicy>,
}

/// Where the agent sends metrics: an MQTT broker, and the default interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSettings {
    /// `mqtts://HOST:PORT` (TLS under the cluster CA, node certificate) or `mqtt://HOST:PORT`.
    pub mqtt_url: String,
    pub interval_ms: u64,
    /// The master's public key that signs metric acks (SEC1 P-256 point).
    pub ack_key: Vec<u8>,
}

/// What one app asks a node to measure beyond node and container metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppMetrics {
    pub app_id: String,
    /// Exporters (`sources` of its policies) this node scrapes.
    pub scrapes: Vec<ScrapeTarget>,
    /// A shorter collection interval one of its policies asks for.
    pub interval_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrapeTarget {
    /// The source as the policy wrote it (`host:9100`): its `job` label.
    pub source: String,
    pub address: ScrapeAddress,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScrapeAddress {
    /// `HOST:PORT` as given.
    Host(String),
    /// A port on this node itself.
    Local { port: u16 },
    /// A port of one of this node's containers (by container key).
    Container { key: String, port: u16 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub protocol_version: u32,
    /// The whole join token as the operator pasted it.
    pub token: String,
    /// PEM certificate signing request for the node's own key.
    pub csr_pem: String,
    pub name: Option<String>,
    pub public_ip: String,
    pub labels: Vec<(String, String)>,
    /// Take over a node already registered with this public IP (its old
    /// certificate is revoked).
    pub replace: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_name: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub metrics: MetricsSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub node_name: String,
    pub public_ip: String,
    pub labels: Vec<(String, String)>,
    pub capacity: Capacity,
    /// e.g. "docker 20.10.24".
    pub runtime_version: String,
    pub agent_version: String,
    /// Newest generation the agent has stored; the master sends only newer.
    /// 0 when the agent holds none (new, or its store was lost).
    pub acked_generation: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub arch: String,
    pub os: String,
}

/// Everything one node should run and measure. Generations only grow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub generation: u64,
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub metrics: Vec<AppMetrics>,
    #[serde(default)]
    pub policies: Vec<LocalPolicy>,
}

impl DesiredState {
    /// The state split into one part per app, in the order apps first appear.
    pub fn per_app(&self) -> Vec<AppDesired> {
        let mut parts: Vec<AppDesired> = Vec::new();
        for c in &self.containers {
            match parts.iter_mut().find(|p| p.app_id == c.app_id) {
                Some(part) => part.containers.push(c.clone()),
                None => parts.push(AppDesired { app_id: c.app_id.clone(), containers: vec![c.clone()], metrics: None, policies: Vec::new() }),
            }
        }
        for m in &self.metrics {
            match parts.iter_mut().find(|p| p.app_id == m.app_id) {
                Some(part) => part.metrics = Some(m.clone()),
                None => parts.push(AppDesired { app_id: m.app_id.clone(), containers: Vec::new(), metrics: Some(m.clone()), policies: Vec::new() }),
            }
        }
        for p in &self.policies {
            match parts.iter_mut().find(|part| part.app_id == p.app_id) {
                Some(part) => part.policies.push(p.clone()),
                None => parts.push(AppDesired { app_id: p.app_id.clone(), containers: Vec::new(), metrics: None, policies: vec![p.clone()] }),
            }
        }
        parts
    }

    /// The parts put back together.
    pub fn from_parts(generation: u64, parts: Vec<AppDesired>) -> DesiredState {
        let mut state = DesiredState { generation, ..Default::default() };
        for p in parts {
            state.containers.extend(p.containers);
            state.metrics.extend(p.metrics);
            state.policies.extend(p.policies);
        }
        state
    }

    /// Every exporter to scrape, and the shortest interval any app asks for.
    pub fn scrapes(&self) -> Vec<ScrapeTarget> {
        self.metrics.iter().flat_map(|m| m.scrapes.iter().cloned()).collect()
    }

    pub fn interval_ms(&self) -> Option<u64> {
        self.metrics.iter().filter_map(|m| m.interval_ms).min()
    }
}

/// One container as the agent must run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Unique on the node and across apps: [`container_key`].
    pub name: String,
    pub app_id: String,
    pub app_name: String,
    pub workload: String,
    pub replica: u32,
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<PortSpec>,
    pub mounts: Vec<MountSpec>,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub privileged: bool,
    /// Share the node's network namespace (no port mapping).
    pub host_network: bool,
    pub working_dir: Option<String>,
    pub labels: Vec<(String, String)>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
    /// A pod member joins the network namespace of the container
    /// `KEY@SPEC_HASH` (the pod's first member) instead of having its own.
    pub pod_network: Option<String>,
}

/// The key of one replica of a workload of an app: `APP_ID.WORKLOAD.REPLICA`.
/// Workload names never contain `.` and app ids are fixed-length hex, so two
/// apps can never produce the same key.
pub fn container_key(app_id: &str, workload: &str, replica: u32) -> String {
    format!("{app_id}.{workload}.{replica}")
}

impl ContainerSpec {
    /// Hex SHA-256 of the spec's canonical JSON: master and agent compute it
    /// the same way, so "runs the spec it was given" is one comparison.
    pub fn spec_hash(&self) -> String {
        // Plain data: serialising cannot fail; Debug is a stable fallback.
        let bytes = serde_json::to_vec(self).unwrap_or_else(|_| format!("{self:?}").into_bytes());
        crate::pki::sha256_hex(&bytes)
    }

    /// `(port, protocol)` pairs this spec publishes on the node.
    pub fn host_ports(&self) -> Vec<(u16, Protocol)> {
        self.ports.iter().filter_map(|p| p.host_port.map(|h| (h, p.protocol))).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub container_port: u16,
    /// Published on the node when set.
    pub host_port: Option<u16>,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: MountSource,
    /// Absolute path inside the container.
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// A directory on the node, created if missing.
    HostPath(String),
    /// Scratch space that lives as long as the container.
    EmptyDir,
    /// Files written by the agent and mounted read-only.
    ConfigMap(Vec<(String, String)>),
    Nfs { server: String, path: String },
}

/// A liveness or readiness check the agent runs against a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_ms: u64,
    pub period_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that count as failed.
    pub failure_threshold: u32,
    /// Consecutive successes that count as passing again.
    pub success_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeAction {
    /// Runs inside the container; exit code 0 passes.
    Exec(Vec<String>),
    /// GET on the container's address; 200-399 passes.
    Http { port: u16, path: String },
    /// A TCP connection to the container's address that opens passes.
    Tcp { port: u16 },
}

/// What the agent observes, sent on change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Generation the agent is reconciling towards (0: none yet).
    pub generation: u64,
    pub containers: Vec<ContainerStatus>,
    /// Node-level problems the operator should see, e.g. a full disk.
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Short stable name, e.g. `StoreWriteFailed`, `StoreLost`.
    pub kind: String,
    pub message: String,
    /// Unix milliseconds when it was first seen.
    pub since_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// `ContainerSpec::name`.
    pub name: String,
    pub app_id: String,
    pub workload: String,
    /// State of the container that runs now (the desired spec's, or during a
    /// failed update the previous spec's; see `running_spec`).
    pub state: ContainerState,
    /// Hash of the spec this status is for (the desired one).
    pub spec_hash: String,
    /// Hash of the spec of the container that is running, if one is.
    pub running_spec: Option<String>,
    /// Readiness probe result; `None` when the spec has no readiness probe.
    pub ready: Option<bool>,
    /// Restarts by the agent after the container exited.
    pub restarts: u32,
    /// Why it is not (yet) running the desired spec, e.g. "image x:1 is missing".
    pub last_error: Option<String>,
}

impl ContainerStatus {
    /// Runs the spec it was given, and is ready if it has a readiness probe.
    pub fn runs_desired(&self) -> bool {
        self.state == ContainerState::Running
            && self.running_spec.as_deref() == Some(self.spec_hash.as_str())
            && self.ready != Some(false)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Running,
    /// Created or being (re)started, or its image is being pulled.
    Starting,
    /// Exited and waiting for its restart back-off.
    Exited,
    /// The desired spec cannot run (see `last_error`); a previous version
    /// may still be running (`running_spec`).
    Failed,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Running => "running",
            ContainerState::Starting => "starting",
            ContainerState::Exited => "exited",
            ContainerState::Failed => "failed",
        }
    }
}
