//! Decides which containers each node runs, from the apps' plans and the
//! known nodes. Pure: the caller stores the result and notifies agents.
//!
//! - A workload whose host is an Edge node runs on the node registered (or
//!   declared) with that public IP, or stays pending with the reason.
//! - Hostless workloads are spread over ready nodes, least loaded first, and
//!   stay where they were placed: a node going offline never moves or drops
//!   its workloads (offline is normal at the edge).

use std::collections::{BTreeMap, BTreeSet};

use fogmesh_common::adt::plan::{self, NodeKind, VolumeSource, Workload};
use fogmesh_common::wire::{ContainerSpec, MountSource, MountSpec, PortSpec, Protocol};

use crate::model::{AppRecord, NodeRecord, NodeState};

#[derive(Debug, Default, PartialEq)]
pub struct Schedule {
    /// Every known node, with the containers it should run (maybe none).
    pub per_node: BTreeMap<String, Vec<ContainerSpec>>,
    /// Nodes of each replica of hostless workloads, keyed `APP_ID/WORKLOAD`.
    pub placements: BTreeMap<String, Vec<String>>,
    /// Why a workload (keyed `APP_ID/WORKLOAD`) is not (fully) placed.
    pub pending: BTreeMap<String, String>,
}

pub fn placement_key(app_id: &str, workload: &str) -> String {
    format!("{app_id}/{workload}")
}

pub fn schedule(
    apps: &[AppRecord],
    nodes: &[(NodeRecord, NodeState)],
    previous: &BTreeMap<String, Vec<String>>,
) -> Schedule {
    let mut out = Schedule::default();
    for (node, _) in nodes {
        out.per_node.insert(node.name.clone(), Vec::new());
    }
    let known: BTreeSet<&str> = nodes.iter().map(|(n, _)| n.name.as_str()).collect();

    // Node-bound workloads first, so hostless ones see the real load.
    let mut hostless = Vec::new();
    for app in apps {
        for w in &app.plan.workloads {
            let key = placement_key(&app.id, &w.name);
            let Some(host) = &w.host else {
                hostless.push((app, w));
                continue;
            };
            match bind_host(app, host, nodes) {
                Ok(node) => {
                    let specs = out.per_node.entry(node.to_string()).or_default();
                    for replica in 1..=w.replicas {
                        specs.push(container_spec(app, w, replica));
                    }
                }
                Err(reason) => {
                    out.pending.insert(key, reason);
                }
            }
        }
    }

    // Containers per node so far; each new replica goes to the least loaded.
    let mut load: BTreeMap<String, usize> = out.per_node.iter().map(|(n, specs)| (n.clone(), specs.len())).collect();
    for (app, w) in hostless {
        let key = placement_key(&app.id, &w.name);
        // Keep earlier choices on nodes that still exist, ready or not.
        let mut chosen: Vec<String> = previous
            .get(&key)
            .map(|p| p.iter().filter(|n| known.contains(n.as_str())).cloned().collect())
            .unwrap_or_default();
        chosen.truncate(w.replicas as usize);
        let kept = chosen.len();
        while chosen.len() < w.replicas as usize {
            let least_loaded = nodes
                .iter()
                .filter(|(_, state)| *state == NodeState::Ready)
                .min_by_key(|(n, _)| (load.get(&n.name).copied().unwrap_or(0), n.name.clone()));
            let Some((node, _)) = least_loaded else {
                out.pending.insert(
                    key.clone(),
                    format!("no ready node to run {} more replica(s) on", w.replicas as usize - chosen.len()),
                );
                break;
            };
            *load.entry(node.name.clone()).or_default() += 1;
            chosen.push(node.name.clone());
        }
        for node in &chosen[..kept] {
            *load.entry(node.clone()).or_default() += 1;
        }
        // Replica numbers follow the order of `chosen`, so they stay stable.
        for (i, node) in chosen.iter().enumerate() {
            out.per_node.entry(node.clone()).or_default().push(container_spec(app, w, i as u32 + 1));
        }
        out.placements.insert(key, chosen);
    }
    for specs in out.per_node.values_mut() {
        specs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

/// The node a workload's host means, or why there is none.
fn bind_host<'n>(app: &AppRecord, host: &str, nodes: &'n [(NodeRecord, NodeState)]) -> Result<&'n str, String> {
    let Some(plan_node) = app.plan.node(host) else {
        return Err(format!("host '{host}' is not a node of the app"));
    };
    match plan_node.kind {
        NodeKind::Cloud => Err(format!(
            "host '{host}' is a cloud node set ({}); fogmesh does not provision cloud nodes yet",
            plan_node.tosca_type
        )),
        NodeKind::Edge => {
            let ip = plan_node.public_ip.as_deref().unwrap_or_default();
            nodes
                .iter()
                .find(|(n, _)| n.public_ip == ip)
                .map(|(n, _)| n.name.as_str())
                .ok_or_else(|| {
                    format!(
                        "no fog node with public IP {ip} (Edge node '{host}') has joined; join one with `fogmesh-agent join --public-ip {ip}` or declare it with `fogmesh node add --public-ip {ip}`"
                    )
                })
        }
    }
}

/// The container one replica of a workload runs as. Names are unique per
/// node: `APP-WORKLOAD`, with `-N` for replicas after the first.
pub fn container_spec(app: &AppRecord, w: &Workload, replica: u32) -> ContainerSpec {
    let name = if replica <= 1 {
        format!("{}-{}", app.name, w.name)
    } else {
        format!("{}-{}-{replica}", app.name, w.name)
    };
    ContainerSpec {
        name,
        app_id: app.id.clone(),
        app_name: app.name.clone(),
        workload: w.name.clone(),
        replica: replica.max(1),
        image: w.image.clone(),
        command: w.command.clone(),
        args: w.args.clone(),
        env: w.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ports: w
            .ports
            .iter()
            .map(|p| PortSpec {
                container_port: p.container_port,
                host_port: p.host_port,
                protocol: match p.protocol {
                    plan::Protocol::Tcp => Protocol::Tcp,
                    plan::Protocol::Udp => Protocol::Udp,
                },
            })
            .collect(),
        mounts: w
            .volumes
            .iter()
            .map(|m| MountSpec {
                target: m.mount_path.clone(),
                source: match &m.source {
                    VolumeSource::HostPath { path } => MountSource::HostPath(path.clone()),
                    VolumeSource::EmptyDir => MountSource::EmptyDir,
                    VolumeSource::Nfs { server, path } => MountSource::Nfs { server: server.clone(), path: path.clone() },
                    VolumeSource::ConfigMap { data } => {
                        MountSource::ConfigMap(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    }
                    // A plain Container.Volume: node-local storage kept across restarts.
                    VolumeSource::Generic => MountSource::HostPath(format!("/var/lib/fogmesh/volumes/{}/{}", app.name, m.volume)),
                },
            })
            .collect(),
        cpu_millis: w.resources.cpu_limit_millis.or(w.resources.cpu_request_millis),
        memory_bytes: w.resources.memory_limit_bytes.or(w.resources.memory_request_bytes),
        privileged: w.privileged,
        working_dir: w.working_dir.clone(),
        labels: w.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogmesh_common::adt::{compile, CompileOptions};

    fn app(id: &str, name: &str, adt: &str) -> AppRecord {
        let plan = compile(adt, &CompileOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        AppRecord {
            id: id.into(),
            name: name.into(),
            adt: adt.into(),
            params: vec![],
            plan,
            revision: 1,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn node(name: &str, ip: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            public_ip: ip.into(),
            labels: vec![],
            capacity: None,
            runtime_version: None,
            agent_version: None,
            cert_fingerprint: Some("x".into()),
            last_seen_ms: None,
        }
    }

    const EDGE_APP: &str = "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    fog: {type: tosca.nodes.MiCADO.Edge, properties: {public_ip: 127.0.0.3}}\n    det:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties: {image: d, env: [{name: A, value: '1'}], ports: [{containerPort: 80, hostPort: 8080, protocol: udp}]}\n      requirements: [{host: fog}]\n";
    const ANY_APP: &str = "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    web:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      occurrences: [3, 3]\n      properties: {image: w}\n";

    #[test]
    fn edge_workloads_bind_by_public_ip_or_wait_with_a_reason() {
        let a = app("a1", "face", EDGE_APP);
        let s = schedule(std::slice::from_ref(&a), &[(node("n2", "127.0.0.2"), NodeState::Ready)], &BTreeMap::new());
        assert!(s.per_node["n2"].is_empty());
        assert!(s.pending["a1/det"].contains("no fog node with public IP 127.0.0.3"), "{:?}", s.pending);

        let s = schedule(&[a], &[(node("n3", "127.0.0.3"), NodeState::Offline)], &BTreeMap::new());
        let spec = &s.per_node["n3"][0];
        assert_eq!(spec.name, "face-det");
        assert_eq!(spec.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(spec.ports[0], PortSpec { container_port: 80, host_port: Some(8080), protocol: Protocol::Udp });
        assert!(s.pending.is_empty());
    }

    #[test]
    fn hostless_replicas_spread_and_stay_put_when_a_node_goes_offline() {
        let a = app("a2", "web", ANY_APP);
        let nodes = vec![(node("n1", "10.0.0.1"), NodeState::Ready), (node("n2", "10.0.0.2"), NodeState::Ready)];
        let s = schedule(std::slice::from_ref(&a), &nodes, &BTreeMap::new());
        assert_eq!(s.per_node["n1"].len() + s.per_node["n2"].len(), 3);
        assert!(!s.per_node["n1"].is_empty() && !s.per_node["n2"].is_empty());
        let names: BTreeSet<String> = s.per_node.values().flatten().map(|c| c.name.clone()).collect();
        assert_eq!(names.len(), 3, "replica names are unique: {names:?}");

        let offline = vec![(node("n1", "10.0.0.1"), NodeState::Offline), (node("n2", "10.0.0.2"), NodeState::Ready)];
        let again = schedule(&[a], &offline, &s.placements);
        assert_eq!(again.per_node, s.per_node, "an offline node keeps its replicas");
    }

    #[test]
    fn no_ready_node_leaves_hostless_pending() {
        let a = app("a3", "web", ANY_APP);
        let s = schedule(&[a], &[], &BTreeMap::new());
        assert!(s.pending["a3/web"].contains("no ready node to run 3 more replica(s)"));
    }
}
