//! Messages between master and agent on the QUIC control stream.
//!
//! An agent opens one bidirectional stream per connection and sends either
//! `Join` (first contact, with a join token) or `Hello` (a joined node, over
//! mutual TLS). After `Welcome` the stream carries heartbeats, desired-state
//! updates, acks and status for the life of the connection. Frames are
//! encoded by [`crate::codec`]. Types here avoid self-describing values
//! (no `serde_json::Value`): the codec is not self-describing.

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; an agent with another version is
/// refused with a message naming both versions.
pub const PROTOCOL_VERSION: u32 = 1;
/// TLS application protocol of the control plane.
pub const ALPN: &[u8] = b"fogmesh/1";

/// Agent -> master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Join(JoinRequest),
    Hello(Hello),
    Heartbeat,
    /// The desired state of this generation is durably stored on the node.
    Ack { generation: u64 },
    Status(NodeStatus),
}

/// Master -> agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MasterMessage {
    Joined(JoinResponse),
    Welcome { node_name: String, heartbeat_interval_ms: u64 },
    /// The master will not serve this agent; the reason is for its operator.
    Refused { reason: String },
    Desired(DesiredState),
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_name: String,
    pub cert_pem: String,
    pub ca_pem: String,
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

/// Everything one node should run. Generations only grow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub generation: u64,
    pub containers: Vec<ContainerSpec>,
}

/// One container as the agent must run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Unique on the node: `APP-WORKLOAD` or `APP-WORKLOAD-N` for replicas.
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
    pub working_dir: Option<String>,
    pub labels: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
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

/// What the agent observes, sent on change and periodically.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Generation the agent is reconciling towards.
    pub generation: u64,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// `ContainerSpec::name`.
    pub name: String,
    pub app_id: String,
    pub workload: String,
    pub state: ContainerState,
    /// Restarts by the agent after the container exited.
    pub restarts: u32,
    /// Why it is not running, e.g. "image fogmesh/x:1 is not on this node".
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Running,
    /// Created or being (re)started.
    Starting,
    /// Exited and waiting for its restart back-off.
    Exited,
    /// Could not be created or started (see `last_error`).
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
