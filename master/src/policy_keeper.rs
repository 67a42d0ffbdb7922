//! The policy keeper: runs every scaling policy of every app once per
//! period (the policy's `interval`, else `--scaling-period`), each round
//! through the shared [`round`] (queries against the master's store, the
//! rule in the sandboxed worker process), and applies what it decides.
//!
//! - A container target's replica count is written into the app's plan
//!   (not a new revision) under the cluster's write lock, then rescheduled:
//!   the rollout is make-before-break as for any change.
//! - A node-set target's count is kept in the app's scaling state, shown in
//!   `app show`, on `/metrics`, and handed to `--node-set-hook`.
//! - Changes of one target are at least the policy's `cooldown` apart
//!   (default: two periods); rules that want their own pacing read
//!   `m_time_since_node_count_changed` or keep time in `m_userdata`.
//! - Every round is an event (`app events`): what the rule read and
//!   printed, old → new, and why. A failing rule changes nothing.
//! - `m_userdata` is one value per app, shared by its rules, kept in the
//!   store: it survives a master restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use fogmesh_common::adt::plan::{Plan, Policy, PolicyKind, TargetKind};
use fogmesh_common::metrics::SeriesSource;
use fogmesh_common::scaling::round::{self, cooldown, period, AlertClock, Decision, NodeRef, Situation};
use fogmesh_common::scaling::{RuleLimits, RuleWorker};
use fogmesh_common::wire::{LocalDecision, LocalPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::failure::Failure;
use crate::model::{AppRecord, EventOutcome, NodeState, PolicyView, ScalingEvent};
use crate::scheduler::placement_key;

/// Events kept per app.
const EVENTS_KEPT: usize = 1000;

/// Scaling state of one app, kept in the store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppScaling {
    /// `m_userdata`: shared by the app's rules.
    pub userdata: Value,
    /// Per policy and target (see [`runtime_key`]).
    pub policies: BTreeMap<String, PolicyRuntime>,
    /// Node-set targets: the count their policy decided.
    pub node_sets: BTreeMap<String, NodeSetCount>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyRuntime {
    pub clock: AlertClock,
    pub last_run_ms: i64,
    pub last_change_ms: i64,
    /// `m_node_count` last round, and when it last changed.
    pub node_count: u32,
    pub node_count_changed_ms: i64,
    pub last: Option<ScalingEvent>,
    /// Set while the target's only node is offline and its agent decides.
    #[serde(default)]
    pub paused_for: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSetCount {
    pub count: u32,
    pub changed_ms: i64,
    pub dropped: Vec<String>,
}

pub struct KeeperOptions {
    pub default_period: Duration,
    /// Run with `--node-set-hook`: `CMD APP NODE_SET COUNT` after a node-set change.
    pub node_set_hook: Option<String>,
    pub limits: RuleLimits,
}

pub struct PolicyKeeper {
    cluster: Arc<Cluster>,
    source: Arc<dyn SeriesSource + Send + Sync>,
    worker: Arc<RuleWorker>,
    options: KeeperOptions,
}

/// Identifies a policy's runtime state for one of its targets.
pub fn runtime_key(policy: &Policy, target: &str) -> String {
    format!("{}#{}/{target}", policy.name, policy.index)
}

/// How a policy is named in events and views.
pub fn policy_label(policy: &Policy) -> String {
    format!("{} #{}", policy.name, policy.index)
}

/// Scaling policies that have a rule and targets to act on.
pub fn active_policies(plan: &Plan) -> impl Iterator<Item = &Policy> {
    plan.policies.iter().filter(|p| p.kind == PolicyKind::Scaling && p.scaling_rule.is_some() && p.target_kind != TargetKind::None)
}

impl PolicyKeeper {
    pub fn new(cluster: Arc<Cluster>, source: Arc<dyn SeriesSource + Send + Sync>, worker: Arc<RuleWorker>, options: KeeperOptions) -> PolicyKeeper {
        PolicyKeeper { cluster, source, worker, options }
    }

    pub async fn run_forever(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paused = false;
        loop {
            tick.tick().await;
            // A rule must not act on part of the data (e.g. scale down for
            // want of samples that are still being replayed).
            match self.source.unavailable() {
                Some(why) => {
                    if !paused {
                        tracing::info!(reason = %why, "scaling paused until the metrics store can answer");
                        paused = true;
                    }
                    continue;
                }
                None if paused => {
                    tracing::info!("scaling resumed");
                    paused = false;
                }
                None => {}
            }
            let apps = match self.cluster.store.apps() {
                Ok(apps) => apps,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "policy keeper cannot read the apps");
                    continue;
                }
            };
            for app in apps {
                if let Err(e) = self.run_due(&app).await {
                    tracing::warn!(app = %app.name, error = %format!("{e:#}"), "scaling round failed");
                }
            }
        }
    }

    /// Runs the rounds of `app` that are due.
    async fn run_due(&self, app: &AppRecord) -> Result<()> {
        let now = now_ms();
        let mut state = self.cluster.store.scaling(&app.id)?;
        let mut ran = false;
        for policy in active_policies(&app.plan) {
            for target in &policy.targets {
                let key = runtime_key(policy, target);
                let runtime = state.policies.entry(key.clone()).or_default();
                if now - runtime.last_run_ms < period(policy, self.options.default_period).as_millis() as i64 {
                    continue;
                }
                // A target that runs only on a node that is cut off: its
                // agent decides (and reports when it is back).
                if let Some(node) = self.delegated_to_offline_node(app, target)? {
                    runtime.last_run_ms = now;
                    if runtime.paused_for.as_deref() != Some(node.as_str()) {
                        runtime.paused_for = Some(node.clone());
                        ran = true;
                        let event = ScalingEvent {
                            seq: 0,
                            at_ms: now,
                            policy: policy_label(policy),
                            target: target.clone(),
                            by: "master".into(),
                            outcome: EventOutcome::Unchanged,
                            from: None,
                            to: None,
                            readings: Default::default(),
                            printed: Vec::new(),
                            message: format!("paused: {target} runs only on node {node}, which is offline; its agent decides until it is back"),
                        };
                        self.cluster.store.append_event(&app.id, event, EVENTS_KEPT)?;
                    }
                    continue;
                }
                runtime.paused_for = None;
                ran = true;
                self.round(app, policy, target, &mut state, now).await?;
            }
        }
        // An app deleted meanwhile leaves no state behind.
        if ran && self.cluster.store.app(&app.id)?.is_some() {
            self.cluster.store.put_scaling(&app.id, &state)?;
            self.cluster.store.flush_soon();
            self.cluster.note_change();
        }
        Ok(())
    }

    async fn round(&self, app: &AppRecord, policy: &Policy, target: &str, state: &mut AppScaling, now: i64) -> Result<()> {
        let key = runtime_key(policy, target);
        let situation = self.situation(app, policy, target, state, now)?;
        let mut runtime = state.policies.remove(&key).unwrap_or_default();
        runtime.last_run_ms = now;
        if situation.node_count != runtime.node_count {
            runtime.node_count = situation.node_count;
            runtime.node_count_changed_ms = now;
        }
        let mut event = ScalingEvent {
            seq: 0,
            at_ms: now,
            policy: policy_label(policy),
            target: target.to_string(),
            by: "master".into(),
            outcome: EventOutcome::Unchanged,
            from: None,
            to: None,
            readings: Default::default(),
            printed: Vec::new(),
            message: String::new(),
        };
        // Queries read the store: off the async threads.
        let prepared = {
            let (policy, plan, source, situation, mut clock, limits) =
                (policy.clone(), app.plan.clone(), self.source.clone(), situation.clone(), runtime.clock.clone(), self.options.limits);
            let out = tokio::task::spawn_blocking(move || {
                let p = round::prepare(&policy, &plan, source.as_ref(), &situation, &mut clock, limits);
                (p, clock)
            })
            .await?;
            runtime.clock = out.1;
            out.0
        };
        let Some(prepared) = prepared else {
            state.policies.insert(key, runtime);
            return Ok(());
        };
        event.readings = prepared.readings.clone();
        let mut notes = prepared.warnings.clone();
        match self.worker.evaluate(prepared.request).await {
            Err(e) => {
                event.outcome = EventOutcome::Failed;
                event.printed = e.printed.clone();
                notes.push(format!("the rule failed, nothing changed: {e}"));
            }
            Ok(outcome) => {
                let decision = round::decide(policy, &app.plan, &situation, &outcome);
                event.printed = decision.printed.clone();
                state.userdata = decision.userdata.clone();
                if let Some(why) = &decision.adjusted {
                    notes.push(why.clone());
                }
                let wait = cooldown(policy, self.options.default_period).as_millis() as i64;
                if decision.changes() && runtime.last_change_ms > 0 && now - runtime.last_change_ms < wait {
                    notes.push(format!("cooldown: the last change was {} s ago (at least {} s apart)", (now - runtime.last_change_ms) / 1000, wait / 1000));
                    let (from, _) = decision.containers.or(decision.nodes).unwrap_or((0, 0));
                    (event.from, event.to) = (Some(from), Some(from));
                } else {
                    self.apply(app, policy, target, &decision, state, now, &mut event, &mut notes).await?;
                    if event.outcome == EventOutcome::Scaled {
                        runtime.last_change_ms = now;
                    }
                }
            }
        }
        event.message = notes.join("; ");
        let seq = self.cluster.store.append_event(&app.id, event.clone(), EVENTS_KEPT)?;
        event.seq = seq;
        // Every round is an event; the log gets changes and new failures only.
        let repeated = runtime.last.as_ref().is_some_and(|l| l.outcome == event.outcome && l.message == event.message);
        match event.outcome {
            EventOutcome::Scaled => tracing::info!(app = %app.name, policy = %event.policy, target, from = ?event.from, to = ?event.to, "scaled"),
            EventOutcome::Failed if !repeated => tracing::warn!(app = %app.name, policy = %event.policy, target, message = %event.message, "scaling round failed"),
            _ => {}
        }
        runtime.last = Some(event);
        state.policies.insert(key, runtime);
        Ok(())
    }

    /// The node `target` runs on alone, if that node is not ready (the
    /// policy was handed to its agent with its desired state).
    fn delegated_to_offline_node(&self, app: &AppRecord, target: &str) -> Result<Option<String>> {
        let hosting: Vec<_> = self
            .cluster
            .node_snapshots()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .filter(|n| n.desired.policies.iter().any(|p| p.app_id == app.id && p.workload == target))
            .collect();
        Ok(hosting.into_iter().find(|n| n.state != NodeState::Ready).map(|n| n.node.name.clone()))
    }

    /// What the rule is told about `target` now.
    fn situation(&self, app: &AppRecord, policy: &Policy, target: &str, state: &AppScaling, now: i64) -> Result<Situation> {
        let key = runtime_key(policy, target);
        let runtime = state.policies.get(&key).cloned().unwrap_or_default();
        let nodes = self.cluster.node_snapshots().map_err(|e| anyhow::anyhow!("{e}"))?;
        let node_ref = |name: &str, ip: &str| NodeRef { id: name.to_string(), addr: ip.to_string() };
        let (container_count, node_list) = match policy.target_kind {
            TargetKind::Workloads => {
                let w = app.plan.workload(target);
                let replicas = w.map(|w| w.replicas).unwrap_or(0);
                // The nodes it may run on: where it runs, and for a
                // hostless workload every ready node.
                let hostless = w.is_some_and(|w| w.host.is_none() && w.hosts.is_empty());
                let list: Vec<NodeRef> = nodes
                    .iter()
                    .filter(|n| (hostless && n.state == NodeState::Ready) || n.desired.containers.iter().any(|c| c.app_id == app.id && c.workload == target))
                    .map(|n| node_ref(&n.node.name, &n.node.public_ip))
                    .collect();
                (replicas, list)
            }
            _ => {
                // The set's members as the scheduler activated them.
                let active = self.cluster.store.placements()?.remove(&placement_key(&app.id, &format!("set:{target}"))).unwrap_or_default();
                let list = nodes.iter().filter(|n| active.contains(&n.node.name)).map(|n| node_ref(&n.node.name, &n.node.public_ip)).collect();
                (0, list)
            }
        };
        let node_count = match policy.target_kind {
            TargetKind::Nodes => app.plan.node(target).map(|n| n.wanted()).unwrap_or(0),
            _ => node_list.len() as u32,
        };
        let changed = if runtime.node_count == node_count && runtime.node_count_changed_ms > 0 { runtime.node_count_changed_ms } else { now };
        Ok(Situation {
            now_ms: now,
            container_count,
            node_count,
            nodes: node_list,
            time_since_node_count_changed: ((now - changed) / 1000) as f64,
            userdata: state.userdata.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(&self, app: &AppRecord, policy: &Policy, target: &str, decision: &Decision, state: &mut AppScaling, now: i64, event: &mut ScalingEvent, notes: &mut Vec<String>) -> Result<()> {
        if let Some((from, to)) = decision.containers {
            (event.from, event.to) = (Some(from), Some(to));
            if from != to {
                match self.cluster.scale_workload(&app.id, target, to).await {
                    Ok(()) => event.outcome = EventOutcome::Scaled,
                    Err(Failure::NotFound(m)) => notes.push(format!("not applied: {m}")),
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                }
            }
        }
        if let Some((from, to)) = decision.nodes {
            (event.from, event.to) = (Some(from), Some(to));
            if from != to || !decision.nodes_todrop.is_empty() {
                match self.cluster.scale_node_set(&app.id, target, to, &decision.nodes_todrop).await {
                    Ok(()) => event.outcome = EventOutcome::Scaled,
                    Err(Failure::NotFound(m)) => notes.push(format!("not applied: {m}")),
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                }
                state.node_sets.insert(target.to_string(), NodeSetCount { count: to, changed_ms: now, dropped: decision.nodes_todrop.clone() });
                if !decision.nodes_todrop.is_empty() {
                    notes.push(format!("nodes to drop: {}", decision.nodes_todrop.join(", ")));
                }
                let is_fog_group = app.plan.node(target).is_some_and(|n| n.fog_group.is_some());
                if !is_fog_group {
                    self.run_hook(&app.name, target, to, &decision.nodes_todrop, notes).await;
                }
            }
        }
        let _ = policy;
        Ok(())
    }

    /// `--node-set-hook CMD APP NODE_SET COUNT [NODE_TO_DROP...]`: how an
    /// operator's tooling (Terraform, a cloud CLI) acts on a node-set count.
    async fn run_hook(&self, app: &str, set: &str, count: u32, todrop: &[String], notes: &mut Vec<String>) {
        let Some(hook) = &self.options.node_set_hook else {
            notes.push(format!("node set {set} should have {count} node(s); no --node-set-hook to act on it"));
            return;
        };
        let mut cmd = tokio::process::Command::new(hook);
        cmd.arg(app).arg(set).arg(count.to_string()).args(todrop).kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => notes.push(format!("--node-set-hook ran for {set} = {count}")),
            Ok(Ok(out)) => notes.push(format!(
                "--node-set-hook failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).chars().take(300).collect::<String>()
            )),
            Ok(Err(e)) => notes.push(format!("--node-set-hook {hook} could not run: {e}")),
            Err(_) => notes.push(format!("--node-set-hook {hook} took longer than 60 s: killed")),
        }
    }
}

/// The policies each node may evaluate on its own while cut off: those
/// whose target workload runs only on that node (no host ports, not a pod
/// member, so the agent can add replicas without clashes).
pub fn local_policies(apps: &[AppRecord], per_node: &BTreeMap<String, Vec<fogmesh_common::wire::ContainerSpec>>) -> BTreeMap<String, Vec<LocalPolicy>> {
    let mut out: BTreeMap<String, Vec<LocalPolicy>> = BTreeMap::new();
    for app in apps {
        for policy in active_policies(&app.plan).filter(|p| p.target_kind == TargetKind::Workloads) {
            for target in &policy.targets {
                let Some(w) = app.plan.workload(target) else { continue };
                if w.pod.is_some() || w.ports.iter().any(|p| p.host_port.is_some()) || w.host_network {
                    continue;
                }
                let hosting: Vec<&String> =
                    per_node.iter().filter(|(_, specs)| specs.iter().any(|c| c.app_id == app.id && c.workload == *target)).map(|(n, _)| n).collect();
                let [node] = hosting.as_slice() else { continue };
                let plan = Plan {
                    workloads: vec![w.clone()],
                    policies: vec![policy.clone()],
                    constants: app.plan.constants.clone(),
                    queries: app.plan.queries.clone(),
                    ..Default::default()
                };
                let Ok(plan_json) = serde_json::to_string(&plan) else { continue };
                out.entry((*node).clone()).or_default().push(LocalPolicy {
                    app_id: app.id.clone(),
                    workload: target.clone(),
                    key: runtime_key(policy, target),
                    label: policy_label(policy),
                    plan_json,
                    replicas: w.replicas,
                });
            }
        }
    }
    out
}

/// Records what an agent decided while cut off, and takes its last count
/// per workload as the current one (its containers run that already: no
/// restart). Returns the time of the newest decision taken.
pub async fn take_report(cluster: &Cluster, node: &str, decisions: Vec<LocalDecision>) -> Result<i64> {
    let mut up_to = 0;
    let mut last: BTreeMap<(String, String), &LocalDecision> = BTreeMap::new();
    for d in &decisions {
        up_to = up_to.max(d.at_ms);
        if cluster.store.app(&d.app_id)?.is_none() {
            continue;
        }
        let readings = serde_json::from_str(&d.readings_json).unwrap_or_default();
        let event = ScalingEvent {
            seq: 0,
            at_ms: d.at_ms,
            policy: d.label.clone(),
            target: d.workload.clone(),
            by: format!("agent {node} (offline)"),
            outcome: if d.failed {
                EventOutcome::Failed
            } else if d.from != d.to {
                EventOutcome::Scaled
            } else {
                EventOutcome::Unchanged
            },
            from: Some(d.from),
            to: Some(d.to),
            readings,
            printed: d.printed.clone(),
            message: d.message.clone(),
        };
        cluster.store.append_event(&d.app_id, event.clone(), EVENTS_KEPT)?;
        let mut state = cluster.store.scaling(&d.app_id)?;
        let runtime = state.policies.entry(d.key.clone()).or_default();
        if d.from != d.to {
            runtime.last_change_ms = runtime.last_change_ms.max(d.at_ms);
        }
        runtime.last = Some(event);
        cluster.store.put_scaling(&d.app_id, &state)?;
        if !d.failed {
            last.insert((d.app_id.clone(), d.workload.clone()), d);
        }
    }
    for ((app, workload), d) in last {
        match cluster.scale_workload(&app, &workload, d.to).await {
            Ok(()) | Err(Failure::NotFound(_)) => {}
            Err(e) => anyhow::bail!("adopt {node}'s decision for {workload}: {e}"),
        }
    }
    cluster.store.flush().await?;
    cluster.note_change();
    tracing::info!(%node, decisions = decisions.len(), "took the scaling decisions the agent made offline");
    Ok(up_to)
}

/// `app show`'s per-policy lines.
pub fn policy_views(app: &AppRecord, state: &AppScaling, default_period: Duration) -> Vec<PolicyView> {
    let mut out = Vec::new();
    for policy in active_policies(&app.plan) {
        let (min, max) = round::bounds(policy, &app.plan);
        for target in &policy.targets {
            let current = match policy.target_kind {
                TargetKind::Workloads => app.plan.workload(target).map(|w| w.replicas).unwrap_or(0),
                _ => app.plan.node(target).map(|n| n.wanted()).unwrap_or(min),
            };
            out.push(PolicyView {
                policy: policy_label(policy),
                target: target.clone(),
                current,
                min,
                max,
                period_seconds: period(policy, default_period).as_secs(),
                last: state.policies.get(&runtime_key(policy, target)).and_then(|r| r.last.clone()),
            });
        }
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
