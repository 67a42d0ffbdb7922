//! The typed deployment plan an ADT compiles to.
//!
//! Everything here is resolved: inputs substituted, templates expanded,
//! quantities parsed into numbers, hosts and policy targets checked. The
//! master schedules from it and agents run containers from its workloads.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub description: Option<String>,
    /// The ADT's inputs (what `--param` may set).
    #[serde(default)]
    pub inputs: Vec<PlanInput>,
    pub nodes: Vec<PlanNode>,
    pub workloads: Vec<Workload>,
    pub policies: Vec<Policy>,
    /// The constants of all scaling policies merged, later ones winning, as
    /// MiCADO does: what `{{NAME}}` and rules see beyond a policy's own.
    #[serde(default)]
    pub constants: IndexMap<String, serde_json::Value>,
    /// The queries of all scaling policies merged the same way: a rule may
    /// read a query another policy declares.
    #[serde(default)]
    pub queries: IndexMap<String, Query>,
    /// What the compiler warned about (the ADT compiled nonetheless).
    #[serde(default)]
    pub warnings: Vec<super::diagnostics::Diagnostic>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInput {
    pub name: String,
    /// Type `secret`: its value is never shown.
    pub secret: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A fog device, identified by its public IP.
    Edge,
    /// A scalable set of cloud worker nodes.
    Cloud,
}

/// A node template of the ADT: one fog device or one cloud node set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    pub name: String,
    pub kind: NodeKind,
    pub tosca_type: String,
    /// Edge only: the address the fog node registers with.
    pub public_ip: Option<String>,
    pub ssh_username: Option<String>,
    /// Cloud only: the cloud the type names (`ec2`, `nova`, ...), if any.
    pub cloud: Option<String>,
    /// Cloud only: the interface that provisions it (`occopus`, `terraform`).
    pub provisioner: Option<String>,
    pub min_instances: u32,
    /// `None` is unbounded.
    pub max_instances: Option<u32>,
    /// Cloud-specific properties, kept for the cloud tier.
    pub properties: serde_json::Value,
    /// A node set of registered fog nodes (`Edge.Group`): who may be a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fog_group: Option<FogGroup>,
    /// Node sets: how many members a scaling policy wants now (`None`:
    /// `min_instances`), and the nodes it asked to drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled_to: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
}

/// Which registered fog nodes belong to a fog node set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FogGroup {
    /// Nodes whose labels include all of these.
    pub selector: IndexMap<String, String>,
    /// Edge nodes of the plan listed as `members` (their plan names).
    pub members: Vec<String>,
}

impl PlanNode {
    /// Members a node set should have now.
    pub fn wanted(&self) -> u32 {
        self.scaled_to.unwrap_or(self.min_instances)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Container,
    Deployment,
    DaemonSet,
    StatefulSet,
    Job,
    Init,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    /// The node template it came from (differs for `instance_count` copies).
    pub template: String,
    pub kind: WorkloadKind,
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: IndexMap<String, String>,
    /// Names of `env` entries whose values come from `secret` inputs: never shown.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub secret_env: BTreeSet<String>,
    pub ports: Vec<Port>,
    pub resources: Resources,
    pub volumes: Vec<Mount>,
    pub privileged: bool,
    pub working_dir: Option<String>,
    /// `hostNetwork: true`: share the node's network (no port mapping).
    #[serde(default)]
    pub host_network: bool,
    pub labels: IndexMap<String, String>,
    pub liveness_probe: Option<serde_json::Value>,
    pub readiness_probe: Option<serde_json::Value>,
    /// The plan node it must run on (the first of `hosts`), or `None` for any node.
    pub host: Option<String>,
    /// Every plan node it may run on: a container may name several hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The `Container.Application.Pod` it belongs to: its members run on one
    /// node and share one network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub min_instances: u32,
    /// `None` is unbounded.
    pub max_instances: Option<u32>,
    /// How many copies to run now: `min_instances` until a policy says otherwise.
    pub replicas: u32,
    /// The Kubernetes interface inputs, kept for the cloud tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub container_port: u16,
    /// Published on the node's address when set.
    pub host_port: Option<u16>,
    pub protocol: Protocol,
    pub name: Option<String>,
    /// Kubernetes service fields, kept for the cloud tier.
    pub service_port: Option<u16>,
    pub node_port: Option<u16>,
    pub service_type: Option<String>,
}

/// CPU in millicores, memory in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_request_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub memory_request_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    /// The volume or config node template's name.
    pub volume: String,
    pub mount_path: String,
    pub source: VolumeSource,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum VolumeSource {
    HostPath { path: String },
    EmptyDir,
    Nfs { server: String, path: String },
    ConfigMap { data: IndexMap<String, String> },
    /// A generic `Container.Volume` with no backing given: node-local storage.
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Monitoring,
    Scaling,
    /// Network security proxies (`Security.MiCADO.Network.*`).
    Security,
    /// Secret distribution (`Security.MiCADO.Secret.*`).
    Secret,
    Alerting,
    /// Any other policy type: kept, not acted on.
    Other,
}

impl PolicyKind {
    /// Whether fogmesh acts on policies of this kind (the others are kept
    /// in the plan for tools that do).
    pub fn enforced(self) -> bool {
        matches!(self, PolicyKind::Monitoring | PolicyKind::Scaling)
    }
}

/// A policy query: a PromQL expression, or `[EXPR, LABEL]` whose result is
/// the list of that label's values (node policies use it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Query {
    Expr(String),
    LabelValues(String, String),
}

impl Query {
    pub fn expr(&self) -> &str {
        match self {
            Query::Expr(e) | Query::LabelValues(e, _) => e,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    None,
    Workloads,
    Nodes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The key it was given; several policies may share one.
    pub name: String,
    /// Its position among the ADT's policies, from 1: with `name`, what
    /// identifies it.
    pub index: u32,
    pub kind: PolicyKind,
    pub tosca_type: String,
    /// Workload names or node-set names, per `target_kind`; `instance_count`
    /// copies are listed one by one.
    pub targets: Vec<String>,
    pub target_kind: TargetKind,
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub sources: Vec<String>,
    pub constants: IndexMap<String, serde_json::Value>,
    /// Query name to PromQL, constants already substituted.
    pub queries: IndexMap<String, Query>,
    pub alerts: Vec<Alert>,
    pub scaling_rule: Option<String>,
    /// fogmesh: how often the policy's metrics are collected and its rule
    /// evaluated (`interval: 10s`); the default when `None`.
    #[serde(default)]
    pub interval_seconds: Option<u64>,
    /// Monitoring switches and any other property, as given.
    pub properties: IndexMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub name: String,
    pub expr: String,
    pub for_seconds: u64,
}

impl Plan {
    /// A copy safe to show: values of secret inputs replaced.
    pub fn redacted(&self) -> Plan {
        let mut plan = self.clone();
        for w in &mut plan.workloads {
            for name in &w.secret_env {
                if let Some(v) = w.env.get_mut(name) {
                    *v = "<secret>".to_string();
                }
            }
        }
        plan
    }

    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&PlanNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}
