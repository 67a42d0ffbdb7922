//! Decides which containers each node runs, from the apps' plans and the
//! known nodes. Pure: the caller stores the result and notifies agents.
//!
//! - A workload whose host is an Edge node runs on the node registered (or
//!   declared) with that public IP, or stays pending with the reason.
//! - Hostless workloads are spread over ready nodes, least loaded first, and
//!   stay where they were placed: a node going offline never moves or drops
//!   its workloads (offline is normal at the edge).
//! - Two containers never publish the same host port on one node: apps are
//!   placed oldest first, and a replica whose port is taken stays pending
//!   with a reason naming who holds the port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fogmesh_common::adt::plan::{self, NodeKind, Plan, PlanNode, VolumeSource, Workload};
use fogmesh_common::adt::probes::parse_probe;
use fogmesh_common::wire::{container_key, AppMetrics, NODE_SET_LABEL, ContainerSpec, MountSource, MountSpec, PortSpec, Protocol, ScrapeAddress, ScrapeTarget};

use crate::model::{AppRecord, NodeRecord, NodeState, Pending, PendingKind};

#[derive(Debug, Default, PartialEq)]
pub struct Schedule {
    /// Every known node, with the containers it should run (maybe none).
    pub per_node: BTreeMap<String, Vec<ContainerSpec>>,
    /// Nodes of each replica of hostless workloads, keyed `APP_ID/WORKLOAD`.
    pub placements: BTreeMap<String, Vec<String>>,
    /// Why a workload (keyed `APP_ID/WORKLOAD`) is not (fully) placed.
    pub pending: BTreeMap<String, Pending>,
    /// What each node measures for each app (exporters, intervals).
    pub metrics: BTreeMap<String, Vec<AppMetrics>>,
}

pub fn placement_key(app_id: &str, workload: &str) -> String {
    format!("{app_id}/{workload}")
}

/// Host ports in use per node: `(port, protocol)` -> `APP/WORKLOAD` holding it.
#[derive(Default)]
struct PortBook {
    used: HashMap<String, HashMap<(u16, Protocol), String>>,
}

impl PortBook {
    /// The first of `ports` already taken on `node`, with its holder.
    fn clash(&self, node: &str, ports: &[(u16, Protocol)]) -> Option<String> {
        let used = self.used.get(node)?;
        ports.iter().find_map(|p| used.get(p).map(|holder| format!("host port {}/{} on node {node} is already used by {holder}", p.0, p.1.as_str())))
    }

    fn take(&mut self, node: &str, ports: &[(u16, Protocol)], holder: &str) {
        let used = self.used.entry(node.to_string()).or_default();
        for p in ports {
            used.insert(*p, holder.to_string());
        }
    }
}

/// Host ports a replica of `w` occupies on its node.
fn host_ports(w: &Workload) -> Vec<(u16, Protocol)> {
    let proto = |p: plan::Protocol| match p {
        plan::Protocol::Tcp => Protocol::Tcp,
        plan::Protocol::Udp => Protocol::Udp,
    };
    w.ports
        .iter()
        .filter_map(|p| if w.host_network { Some(p.container_port) } else { p.host_port }.map(|port| (port, proto(p.protocol))))
        .collect()
}

/// What is placed as one: a workload, or a pod's members (same node, one
/// network namespace).
struct Unit<'a> {
    app: &'a AppRecord,
    /// The workload's name, or the pod's.
    name: String,
    members: Vec<&'a Workload>,
}

impl<'a> Unit<'a> {
    fn of_app(app: &'a AppRecord) -> Vec<Unit<'a>> {
        let mut units: Vec<Unit> = Vec::new();
        for w in &app.plan.workloads {
            match &w.pod {
                Some(pod) => match units.iter_mut().find(|u| u.name == *pod && u.members.iter().all(|m| m.pod.is_some())) {
                    Some(unit) => unit.members.push(w),
                    None => units.push(Unit { app, name: pod.clone(), members: vec![w] }),
                },
                None => units.push(Unit { app, name: w.name.clone(), members: vec![w] }),
            }
        }
        units
    }

    fn lead(&self) -> &'a Workload {
        self.members[0]
    }

    fn key(&self) -> String {
        placement_key(&self.app.id, &self.name)
    }

    fn holder(&self) -> String {
        format!("{}/{}", self.app.name, self.name)
    }

    fn hosts(&self) -> Vec<String> {
        let w = self.lead();
        if w.hosts.is_empty() { w.host.clone().into_iter().collect() } else { w.hosts.clone() }
    }

    fn host_ports(&self) -> Vec<(u16, Protocol)> {
        self.members.iter().flat_map(|w| host_ports(w)).collect()
    }

    fn replicas(&self) -> u32 {
        self.lead().replicas
    }

    /// The containers of one replica: for a pod, the first member holds
    /// the network (and every member's ports); the others join it.
    fn specs(&self, replica: u32) -> Vec<ContainerSpec> {
        let mut lead = container_spec(self.app, self.lead(), replica);
        if self.members.len() == 1 {
            return vec![lead];
        }
        let mut others: Vec<ContainerSpec> = self.members[1..].iter().map(|w| container_spec(self.app, w, replica)).collect();
        for o in &mut others {
            lead.ports.append(&mut o.ports);
        }
        let network = format!("{}@{}", lead.name, lead.spec_hash());
        for o in &mut others {
            o.pod_network = Some(network.clone());
        }
        let mut all = vec![lead];
        all.extend(others);
        all
    }

    fn pend(&self, out: &mut Schedule, pending: Pending) {
        for w in &self.members {
            out.pending.insert(placement_key(&self.app.id, &w.name), pending.clone());
        }
    }
}

pub fn schedule(
    apps: &[AppRecord],
    nodes: &[(Arc<NodeRecord>, NodeState)],
    previous: &BTreeMap<String, Vec<String>>,
    agent_endpoint: &str,
) -> Schedule {
    let mut out = Schedule::default();
    for (node, _) in nodes {
        out.per_node.insert(node.name.clone(), Vec::new());
    }
    let known: BTreeSet<&str> = nodes.iter().map(|(n, _)| n.name.as_str()).collect();
    // Older apps first: they keep what they hold when a newer one collides.
    let mut apps: Vec<&AppRecord> = apps.iter().collect();
    apps.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    let mut ports = PortBook::default();

    // Node-bound units first, so hostless ones see the real load. Units on
    // a node set spread like hostless ones, over the set's active members.
    let mut hostless: Vec<(Unit, Option<Vec<String>>)> = Vec::new();
    for app in &apps {
        for set in app.plan.nodes.iter().filter(|n| n.kind == NodeKind::Cloud) {
            let key = placement_key(&app.id, &format!("set:{}", set.name));
            out.placements.insert(key.clone(), active_members(set, &app.plan, nodes, previous.get(&key)));
        }
        for unit in Unit::of_app(app) {
            let hosts = unit.hosts();
            if hosts.is_empty() {
                hostless.push((unit, None));
                continue;
            }
            if let Some(set) = app.plan.node(&hosts[0]).filter(|n| n.kind == NodeKind::Cloud) {
                let active = out.placements.get(&placement_key(&app.id, &format!("set:{}", set.name))).cloned().unwrap_or_default();
                if active.is_empty() {
                    unit.pend(&mut out, Pending { kind: PendingKind::Waiting, reason: no_members_reason(set, agent_endpoint) });
                    continue;
                }
                hostless.push((unit, Some(active)));
                continue;
            }
            let sticky = previous.get(&unit.key()).and_then(|p| p.first()).map(String::as_str);
            match bind_host(app, &hosts, nodes, sticky, agent_endpoint) {
                Ok(node) => {
                    let (holder, wanted) = (unit.holder(), unit.host_ports());
                    for replica in 1..=unit.replicas() {
                        if let Some(clash) = ports.clash(node, &wanted) {
                            unit.pend(&mut out, Pending { kind: PendingKind::Conflict, reason: format!("replica {replica} of {}: {clash}", unit.name) });
                            break;
                        }
                        ports.take(node, &wanted, &holder);
                        out.per_node.entry(node.to_string()).or_default().extend(unit.specs(replica));
                    }
                    if hosts.len() > 1 {
                        out.placements.insert(unit.key(), vec![node.to_string()]);
                    }
                }
                Err(pending) => unit.pend(&mut out, pending),
            }
        }
    }

    // Containers per node so far; each new replica goes to the least loaded.
    let mut load: BTreeMap<String, usize> = out.per_node.iter().map(|(n, specs)| (n.clone(), specs.len())).collect();
    for (unit, allowed) in hostless {
        let key = unit.key();
        let (holder, wanted, replicas) = (unit.holder(), unit.host_ports(), unit.replicas() as usize);
        let may_run_on = |node: &str| allowed.as_ref().is_none_or(|a| a.iter().any(|n| n == node));
        // Keep earlier choices on nodes that still exist, ready or not.
        let mut chosen: Vec<String> = previous
            .get(&key)
            .map(|p| p.iter().filter(|n| known.contains(n.as_str()) && may_run_on(n)).cloned().collect())
            .unwrap_or_default();
        chosen.truncate(replicas);
        if unit.lead().kind == plan::WorkloadKind::DaemonSet {
            // One replica on every ready node it may run on (of its node
            // set, or all), and on offline ones that ran it, in a stable
            // order: it follows the set.
            let before = previous.get(&key);
            chosen = nodes
                .iter()
                .filter(|(n, state)| keeps_or_takes(*state, &n.name, before) && may_run_on(&n.name) && ports.clash(&n.name, &wanted).is_none())
                .map(|(n, _)| n.name.clone())
                .collect();
            for node in &chosen {
                ports.take(node, &wanted, &holder);
            }
            // Replica 1 on each: a node joining or leaving renames nothing elsewhere.
            for node in &chosen {
                out.per_node.entry(node.clone()).or_default().extend(unit.specs(1));
            }
            out.placements.insert(key, chosen);
            continue;
        }
        for node in &chosen {
            *load.entry(node.clone()).or_default() += unit.members.len();
            ports.take(node, &wanted, &holder);
        }
        while chosen.len() < replicas {
            let least_loaded = nodes
                .iter()
                .filter(|(n, state)| *state == NodeState::Ready && may_run_on(&n.name) && ports.clash(&n.name, &wanted).is_none())
                .min_by_key(|(n, _)| (load.get(&n.name).copied().unwrap_or(0), n.name.clone()));
            let Some((node, _)) = least_loaded else {
                let missing = replicas - chosen.len();
                let reason = if wanted.is_empty() {
                    format!("no ready node to run {missing} more replica(s) on")
                } else {
                    format!("no ready node with its host ports free to run {missing} more replica(s) on")
                };
                unit.pend(&mut out, Pending { kind: PendingKind::Waiting, reason });
                break;
            };
            *load.entry(node.name.clone()).or_default() += unit.members.len();
            ports.take(&node.name, &wanted, &holder);
            chosen.push(node.name.clone());
        }
        // Replica numbers follow the order of `chosen`, so they stay stable.
        for (i, node) in chosen.iter().enumerate() {
            out.per_node.entry(node.clone()).or_default().extend(unit.specs(i as u32 + 1));
        }
        out.placements.insert(key, chosen);
    }
    for specs in out.per_node.values_mut() {
        specs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    for app in &apps {
        plan_metrics(app, nodes, &mut out);
    }
    out
}

/// Which node scrapes each `source` of an app's scaling policies, and the
/// interval the policies ask for. A source's host may name an Edge node of
/// the ADT (its agent scrapes the port locally), a workload (each node
/// running a replica scrapes that container), or anything else (the first
/// node running the policy's targets scrapes it as written).
fn plan_metrics(app: &AppRecord, nodes: &[(Arc<NodeRecord>, NodeState)], out: &mut Schedule) {
    let runs = |workloads: &[String]| -> Vec<String> {
        out.per_node
            .iter()
            .filter(|(_, specs)| specs.iter().any(|c| c.app_id == app.id && workloads.contains(&c.workload)))
            .map(|(n, _)| n.clone())
            .collect()
    };
    let mut per_node: BTreeMap<String, AppMetrics> = BTreeMap::new();
    for policy in app.plan.policies.iter().filter(|p| p.kind == plan::PolicyKind::Scaling) {
        let target_nodes = runs(&policy.targets);
        if let Some(secs) = policy.interval_seconds {
            for n in &target_nodes {
                let m = per_node.entry(n.clone()).or_insert_with(|| AppMetrics { app_id: app.id.clone(), ..Default::default() });
                let ms = secs.max(1) * 1000;
                m.interval_ms = Some(m.interval_ms.map_or(ms, |old| old.min(ms)));
            }
        }
        for source in &policy.sources {
            let Some((host, port)) = source.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?))) else { continue };
            let wanted = host.replace(['_', '.'], "-");
            let mut add = |node: &str, address: ScrapeAddress| {
                let m = per_node.entry(node.to_string()).or_insert_with(|| AppMetrics { app_id: app.id.clone(), ..Default::default() });
                let target = ScrapeTarget { source: source.clone(), address, path: "/metrics".into() };
                if !m.scrapes.contains(&target) {
                    m.scrapes.push(target);
                }
            };
            if let Some(edge) = app.plan.node(&wanted).filter(|n| n.kind == NodeKind::Edge) {
                let ip = edge.public_ip.as_deref().unwrap_or_default();
                if let Some((n, _)) = nodes.iter().find(|(n, _)| n.public_ip == ip) {
                    add(&n.name, ScrapeAddress::Local { port });
                }
            } else if app.plan.workloads.iter().any(|w| w.name == wanted || w.template == host) {
                for (node, specs) in &out.per_node {
                    for c in specs.iter().filter(|c| c.app_id == app.id && (c.workload == wanted || app.plan.workload(&c.workload).is_some_and(|w| w.template == host))) {
                        add(node, ScrapeAddress::Container { key: c.name.clone(), port });
                    }
                }
            } else if let Some(first) = target_nodes.first() {
                add(first, ScrapeAddress::Host(source.clone()));
            }
        }
    }
    for (node, m) in per_node {
        out.metrics.entry(node).or_default().push(m);
    }
}

/// Every registered node that belongs to node set `set`: joined with
/// `--node-set NAME` (label `fogmesh.node-set`), or for a fog group,
/// matching its selector or registered for one of its member Edge nodes.
pub fn set_candidates<'n>(set: &PlanNode, plan: &Plan, nodes: &'n [(Arc<NodeRecord>, NodeState)]) -> Vec<&'n (Arc<NodeRecord>, NodeState)> {
    let label = |n: &NodeRecord, k: &str, v: &str| n.labels.iter().any(|(a, b)| a == k && b == v);
    let member_ips: Vec<&str> = set
        .fog_group
        .iter()
        .flat_map(|g| g.members.iter())
        .filter_map(|m| plan.node(m).and_then(|n| n.public_ip.as_deref()))
        .collect();
    nodes
        .iter()
        .filter(|(n, _)| {
            label(n, NODE_SET_LABEL, &set.name)
                || set.fog_group.as_ref().is_some_and(|g| {
                    (!g.selector.is_empty() && g.selector.iter().all(|(k, v)| label(n, k, v))) || member_ips.contains(&n.public_ip.as_str())
                })
        })
        .collect()
}

/// Whether a node runs a placement: a ready node may take it; an offline
/// one keeps it if it had it. Offline is normal, and a restarted master
/// sees every node offline until it reconnects: neither may take a running
/// workload away.
fn keeps_or_takes(state: NodeState, node: &str, before: Option<&Vec<String>>) -> bool {
    match state {
        NodeState::Ready => true,
        NodeState::Offline => before.is_some_and(|had| had.iter().any(|n| n == node)),
        NodeState::Pending => false,
    }
}

/// The members a node set's workloads run on. A cloud set: every ready
/// member (its count is for the provisioner). A fog group: as many ready
/// candidates as its policy wants, those active before first, never one it
/// asked to drop. Members that went offline stay members.
fn active_members(set: &PlanNode, plan: &Plan, nodes: &[(Arc<NodeRecord>, NodeState)], before: Option<&Vec<String>>) -> Vec<String> {
    let candidates: Vec<&(Arc<NodeRecord>, NodeState)> = set_candidates(set, plan, nodes)
        .into_iter()
        .filter(|(n, state)| keeps_or_takes(*state, &n.name, before) && !set.dropped.contains(&n.name))
        .collect();
    if set.fog_group.is_none() {
        return candidates.iter().map(|(n, _)| n.name.clone()).collect();
    }
    let mut ordered: Vec<String> = Vec::new();
    for name in before.into_iter().flatten() {
        if candidates.iter().any(|(n, _)| &n.name == name) {
            ordered.push(name.clone());
        }
    }
    for (n, _) in &candidates {
        if !ordered.contains(&n.name) {
            ordered.push(n.name.clone());
        }
    }
    ordered.truncate(set.wanted() as usize);
    ordered
}

fn no_members_reason(set: &PlanNode, agent_endpoint: &str) -> String {
    match &set.fog_group {
        Some(_) if set.wanted() == 0 => format!("node set '{}' is scaled to 0 nodes", set.name),
        Some(_) => format!("no ready fog node belongs to node set '{}' (its selector or members)", set.name),
        None => format!(
            "node set '{0}' ({1}) has no ready member: provision machines (see `--node-set-hook`) and join them with `fogmesh-agent run --master {agent_endpoint} --node-set {0} ...`",
            set.name, set.tosca_type
        ),
    }
}

/// The node a unit's hosts mean: one registered for an Edge host's public
/// IP (the one it ran on before if it still may, else a ready one, else
/// any), or why there is none.
fn bind_host<'n>(
    app: &AppRecord,
    hosts: &[String],
    nodes: &'n [(Arc<NodeRecord>, NodeState)],
    sticky: Option<&str>,
    agent_endpoint: &str,
) -> Result<&'n str, Pending> {
    let mut candidates: Vec<&'n (Arc<NodeRecord>, NodeState)> = Vec::new();
    let mut first_missing: Option<Pending> = None;
    let mut cloud: Option<Pending> = None;
    for host in hosts {
        let Some(plan_node) = app.plan.node(host) else {
            return Err(Pending { kind: PendingKind::Unplaceable, reason: format!("host '{host}' is not a node of the app") });
        };
        match plan_node.kind {
            NodeKind::Cloud => {
                cloud.get_or_insert(Pending {
                    kind: PendingKind::Unplaceable,
                    reason: format!(
                        "host '{host}' is a cloud node set ({}); a workload with several hosts binds only to its Edge hosts, so list the set first or alone",
                        plan_node.tosca_type
                    ),
                });
            }
            NodeKind::Edge => {
                let ip = plan_node.public_ip.as_deref().unwrap_or_default();
                match nodes.iter().find(|(n, _)| n.public_ip == ip) {
                    Some(found) => candidates.push(found),
                    None => {
                        first_missing.get_or_insert(Pending {
                            kind: PendingKind::Waiting,
                            reason: format!(
                                "no fog node with public IP {ip} (Edge node '{host}') has joined; create a token with `fogmesh token create`, then on that node run `FOGMESH_JOIN_TOKEN=<token> fogmesh-agent run --master {agent_endpoint} --public-ip {ip} --data-dir /var/lib/fogmesh-agent` (or declare it first with `fogmesh node add --public-ip {ip}`)"
                            ),
                        });
                    }
                }
            }
        }
    }
    let pick = candidates
        .iter()
        .find(|(n, _)| Some(n.name.as_str()) == sticky)
        .or_else(|| candidates.iter().find(|(_, s)| *s == NodeState::Ready))
        .or_else(|| candidates.first());
    match pick {
        Some((n, _)) => Ok(n.name.as_str()),
        None => Err(first_missing.or(cloud).unwrap_or(Pending { kind: PendingKind::Unplaceable, reason: "it names no host".into() })),
    }
}

/// The container one replica of a workload runs as. Its name is the key
/// `APP_ID.WORKLOAD.REPLICA`, unique on a node and across apps.
pub fn container_spec(app: &AppRecord, w: &Workload, replica: u32) -> ContainerSpec {
    let replica = replica.max(1);
    ContainerSpec {
        name: container_key(&app.id, &w.name, replica),
        app_id: app.id.clone(),
        app_name: app.name.clone(),
        workload: w.name.clone(),
        replica,
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
        host_network: w.host_network,
        working_dir: w.working_dir.clone(),
        labels: w.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        // The compiler checked them; a plan stored by an older master may not parse.
        liveness: w.liveness_probe.as_ref().and_then(|p| parse_probe(p).ok()),
        readiness: w.readiness_probe.as_ref().and_then(|p| parse_probe(p).ok()),
        pod_network: None,
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

    fn node(name: &str, ip: &str) -> Arc<NodeRecord> {
        Arc::new(NodeRecord { cert_fingerprint: Some("x".into()), ..NodeRecord::declared(name, ip) })
    }

    const EP: &str = "192.0.2.1:7401";
    const EDGE_APP: &str = "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    fog: {type: tosca.nodes.MiCADO.Edge, properties: {public_ip: 127.0.0.3}}\n    det:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties: {image: d, env: [{name: A, value: '1'}], ports: [{containerPort: 80, hostPort: 8080, protocol: udp}]}\n      requirements: [{host: fog}]\n";
    const ANY_APP: &str = "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    web:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      occurrences: [3, 3]\n      properties: {image: w}\n";

    #[test]
    fn edge_workloads_bind_by_public_ip_or_wait_with_a_reason() {
        let a = app("a1", "face", EDGE_APP);
        let s = schedule(std::slice::from_ref(&a), &[(node("n2", "127.0.0.2"), NodeState::Ready)], &BTreeMap::new(), EP);
        assert!(s.per_node["n2"].is_empty());
        assert_eq!(s.pending["a1/det"].kind, PendingKind::Waiting);
        assert!(s.pending["a1/det"].reason.contains("no fog node with public IP 127.0.0.3"), "{:?}", s.pending);
        assert!(s.pending["a1/det"].reason.contains("fogmesh-agent run --master 192.0.2.1:7401 --public-ip 127.0.0.3"), "{:?}", s.pending);

        let s = schedule(&[a], &[(node("n3", "127.0.0.3"), NodeState::Offline)], &BTreeMap::new(), EP);
        let spec = &s.per_node["n3"][0];
        assert_eq!(spec.name, "a1.det.1");
        assert_eq!(spec.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(spec.ports[0], PortSpec { container_port: 80, host_port: Some(8080), protocol: Protocol::Udp });
        assert!(s.pending.is_empty());
    }

    #[test]
    fn hostless_replicas_spread_and_stay_put_when_a_node_goes_offline() {
        let a = app("a2", "web", ANY_APP);
        let nodes = vec![(node("n1", "10.0.0.1"), NodeState::Ready), (node("n2", "10.0.0.2"), NodeState::Ready)];
        let s = schedule(std::slice::from_ref(&a), &nodes, &BTreeMap::new(), EP);
        assert_eq!(s.per_node["n1"].len() + s.per_node["n2"].len(), 3);
        assert!(!s.per_node["n1"].is_empty() && !s.per_node["n2"].is_empty());
        let names: BTreeSet<String> = s.per_node.values().flatten().map(|c| c.name.clone()).collect();
        assert_eq!(names.len(), 3, "replica names are unique: {names:?}");

        let offline = vec![(node("n1", "10.0.0.1"), NodeState::Offline), (node("n2", "10.0.0.2"), NodeState::Ready)];
        let again = schedule(&[a], &offline, &s.placements, EP);
        assert_eq!(again.per_node, s.per_node, "an offline node keeps its replicas");
    }

    /// Offline is normal, and a restarted master sees every node offline
    /// until it reconnects: neither takes a DaemonSet replica or a node
    /// set's workload away from a member that ran it.
    #[test]
    fn daemon_sets_and_node_sets_keep_their_offline_members() {
        let member = |name: &str, ip: &str| {
            let mut n = NodeRecord::clone(&node(name, ip));
            n.labels.push((NODE_SET_LABEL.into(), "sim".into()));
            Arc::new(n)
        };
        let on_set = "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    sim: {type: tosca.nodes.MiCADO.EC2.Compute, properties: {region_name: r, image_id: i, instance_type: t}}\n    probe:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.DaemonSet\n      properties: {image: p}\n      requirements: [{host: sim}]\n";
        let everywhere = "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    agent:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.DaemonSet\n      properties: {image: a}\n";
        let apps = [app("a5", "probe", on_set), app("a6", "agent", everywhere)];
        let ready = vec![(member("m1", "10.0.1.1"), NodeState::Ready), (member("m2", "10.0.1.2"), NodeState::Ready)];
        let first = schedule(&apps, &ready, &BTreeMap::new(), EP);
        assert_eq!(first.per_node["m1"].len(), 2, "{:?}", first.per_node);
        assert_eq!(first.per_node["m2"].len(), 2, "{:?}", first.per_node);

        // The master restarted: nobody has reconnected yet; a stranger joined.
        let silent = vec![
            (member("m1", "10.0.1.1"), NodeState::Offline),
            (member("m2", "10.0.1.2"), NodeState::Offline),
            (member("m3", "10.0.1.3"), NodeState::Offline),
        ];
        let after = schedule(&apps, &silent, &first.placements, EP);
        assert_eq!(after.per_node["m1"], first.per_node["m1"]);
        assert_eq!(after.per_node["m2"], first.per_node["m2"]);
        assert!(after.per_node["m3"].is_empty(), "a node that never ran them gets them when ready");
        assert_eq!(after.placements, first.placements);
    }

    #[test]
    fn no_ready_node_leaves_hostless_pending() {
        let a = app("a3", "web", ANY_APP);
        let s = schedule(&[a], &[], &BTreeMap::new(), EP);
        assert!(s.pending["a3/web"].reason.contains("no ready node to run 3 more replica(s)"));
    }

    #[test]
    fn apps_never_collide_on_names_or_host_ports() {
        // App `cx` workload `y-z` and app `cx-y` workload `z`: distinct keys.
        let one = app("a0000001", "cx", &EDGE_APP.replace("det:", "y-z:"));
        let mut two = app("a0000002", "cx-y", &EDGE_APP.replace("det:", "z:").replace("8080", "8081"));
        two.created_ms = 1;
        let nodes = [(node("n3", "127.0.0.3"), NodeState::Ready)];
        let s = schedule(&[one.clone(), two], &nodes, &BTreeMap::new(), EP);
        let names: Vec<&str> = s.per_node["n3"].iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a0000001.y-z.1", "a0000002.z.1"]);

        // Same host port: the older app keeps it, the newer one is pending with who holds it.
        let mut three = app("a0000003", "later", EDGE_APP);
        three.created_ms = 2;
        let s = schedule(&[three, one], &nodes, &BTreeMap::new(), EP);
        assert_eq!(s.per_node["n3"].len(), 1);
        assert_eq!(s.per_node["n3"][0].app_id, "a0000001");
        let p = &s.pending["a0000003/det"];
        assert_eq!(p.kind, PendingKind::Conflict);
        assert!(p.reason.contains("host port 8080/udp on node n3 is already used by cx/y-z"), "{p:?}");
    }

    #[test]
    fn cloud_hosts_without_members_wait_and_say_how_to_join() {
        let adt = "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    vm: {type: tosca.nodes.MiCADO.EC2.Compute, properties: {region_name: r, image_id: i, instance_type: t}}\n    web:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties: {image: w}\n      requirements: [{host: vm}]\n";
        let s = schedule(&[app("a4", "c", adt)], &[], &BTreeMap::new(), EP);
        let p = &s.pending["a4/web"];
        assert_eq!(p.kind, PendingKind::Waiting);
        assert!(p.reason.contains("--node-set-hook") && p.reason.contains("--node-set vm"), "{p:?}");
        // A node that joined for another set is not a member.
        let mut other = NodeRecord::clone(&node("n9", "127.0.0.9"));
        other.labels.push((NODE_SET_LABEL.into(), "db".into()));
        let s = schedule(&[app("a4", "c", adt)], &[(Arc::new(other), NodeState::Ready)], &BTreeMap::new(), EP);
        assert_eq!(s.pending["a4/web"].kind, PendingKind::Waiting);
    }
}
