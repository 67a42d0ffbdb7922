//! The policy keeper: runs every scaling policy of every app once per
//! period (the policy's `interval`, else `--scaling-period`), each round
//! through the shared [`round`] (queries against the master's store, the
//! rule in the sandboxed worker process), and applies what it decides.
//!
//! - A container target's replica count is written into the app's plan
//!   (not a new revision) under the cluster's write lock, then rescheduled:
//!   the rollout is make-before-break as for any change.
//! - A node-set target's count is kept in the app's scaling state, shown in
//!   `app show`, on `/metrics`, and handed to `--node-set-hook`. The nodes a
//!   rule names in `m_nodes_todrop` must be members of the set as the rule
//!   saw it (`m_nodes`), else nothing changes. The hook runs beside the
//!   rounds (one run per set at a time, killed after [`HOOK_TIMEOUT`]); its
//!   outcome is an event of its own.
//! - Changes of one target are at least the policy's `cooldown` apart
//!   (default: two periods); rules that want their own pacing read
//!   `m_time_since_node_count_changed` or keep time in `m_userdata`.
//! - Every round is an event (`app events`): what the rule read and
//!   printed, old → new, and why. A failing rule changes nothing.
//! - `m_userdata` is one value per app, shared by its rules, kept in the
//!   store: it survives a master restart.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use fogmesh_common::adt::plan::{Plan, Policy, PolicyKind, TargetKind};
use fogmesh_common::metrics::SeriesSource;
use fogmesh_common::scaling::round::{self, cooldown, period, AlertClock, Decision, NodeRef, Situation};
use fogmesh_common::scaling::{RuleLimits, RuleWorker};
use fogmesh_common::wire::{LocalDecision, LocalPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::cluster::Cluster;
use crate::failure::Failure;
use crate::model::{AppRecord, EventOutcome, NodeState, PolicyView, ScalingEvent};
use crate::scheduler::placement_key;

/// Events kept per app.
const EVENTS_KEPT: usize = 1000;
/// How long a `--node-set-hook` run may take before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a hook's stderr kept for its event.
const HOOK_STDERR_BYTES: u64 = 4096;
/// Refused `m_nodes_todrop` values named in an event; the rest are counted.
const REFUSALS_NAMED: usize = 8;

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
    /// Run with `--node-set-hook`: `CMD APP NODE_SET COUNT [-- NODE_TO_DROP...]`
    /// after a node-set change.
    pub node_set_hook: Option<String>,
    pub limits: RuleLimits,
}

pub struct PolicyKeeper {
    cluster: Arc<Cluster>,
    source: Arc<dyn SeriesSource + Send + Sync>,
    worker: Arc<RuleWorker>,
    options: KeeperOptions,
    hook_timeout: Duration,
    /// Per `APP_ID/SET`: held by that set's running hook, so the hook sees
    /// one set's changes one at a time and in order.
    hook_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A value of `m_nodes_todrop` that is not acted on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedDrop {
    pub value: String,
    pub reason: String,
}

/// The values of `todrop` that are not members of the node set as the
/// rule was shown it (`m_nodes`: ID is the node name), each with why. Only
/// names of members may reach the scheduler and the hook's command line.
pub fn refused_drops(members: &[NodeRef], todrop: &[String]) -> Vec<RefusedDrop> {
    let mut refused = Vec::new();
    for (i, value) in todrop.iter().enumerate() {
        let reason = if members.iter().any(|m| &m.id == value) {
            if todrop[..i].contains(value) {
                "is named twice".to_string()
            } else {
                continue;
            }
        } else if let Some(m) = members.iter().find(|m| &m.addr == value) {
            format!("is the address of member {}; name it by its ID (m_nodes[i]['ID'])", m.id)
        } else {
            "is not a member".to_string()
        };
        refused.push(RefusedDrop { value: value.clone(), reason });
    }
    refused
}

/// An event's words for refused values: each quoted (cut short), with why.
fn describe_refusals(set: &str, members: &[NodeRef], refused: &[RefusedDrop]) -> String {
    let mut parts: Vec<String> = refused
        .iter()
        .take(REFUSALS_NAMED)
        .map(|r| format!("{:?} {}", r.value.chars().take(64).collect::<String>(), r.reason))
        .collect();
    if refused.len() > REFUSALS_NAMED {
        parts.push(format!("and {} more", refused.len() - REFUSALS_NAMED));
    }
    let names: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let members = if names.is_empty() { "it has no members".to_string() } else { format!("its members: {}", names.join(", ")) };
    format!("m_nodes_todrop refused for node set {set}, nothing changed: {} ({members})", parts.join("; "))
}

/// The hook's arguments: `APP NODE_SET COUNT`, then `--` and the nodes to
/// drop, so that no node name can read as an option.
pub fn hook_args(app: &str, set: &str, count: u32, todrop: &[String]) -> Vec<String> {
    let mut args = vec![app.to_string(), set.to_string(), count.to_string()];
    if !todrop.is_empty() {
        args.push("--".into());
        args.extend(todrop.iter().cloned());
    }
    args
}

/// How one hook run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    Ran,
    Failed { status: String, stderr: String },
    NotStarted(String),
    /// It ran past the limit: it and its process group were killed.
    TimedOut(Duration),
}

/// Runs `hook ARGS` in a process group of its own; past `limit` the whole
/// group (a script's children too) is killed.
pub async fn run_hook(hook: &str, args: &[String], limit: Duration) -> HookOutcome {
    let mut command = tokio::process::Command::new(hook);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return HookOutcome::NotStarted(e.to_string()),
    };
    let pid = child.id();
    let stderr = child.stderr.take();
    let mut tail = tokio::spawn(async move {
        let mut kept = Vec::new();
        if let Some(mut stderr) = stderr {
            let _ = (&mut stderr).take(HOOK_STDERR_BYTES).read_to_end(&mut kept).await;
            // Keep draining: a full pipe would stall the hook.
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        }
        kept
    });
    let waited = tokio::time::timeout(limit, child.wait()).await;
    let outcome = match waited {
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: a plain system call; the group is the hook's own
                // (process_group(0)), and its leader is not reaped yet.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            HookOutcome::TimedOut(limit)
        }
        Ok(Err(e)) => HookOutcome::NotStarted(format!("waiting for it failed: {e}")),
        Ok(Ok(status)) if status.success() => HookOutcome::Ran,
        Ok(Ok(status)) => {
            // A child it left running may hold the pipe open: do not wait for it.
            let stderr = match tokio::time::timeout(Duration::from_secs(1), &mut tail).await {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).trim().to_string(),
                _ => String::new(),
            };
            HookOutcome::Failed { status: status.to_string(), stderr }
        }
    };
    tail.abort();
    outcome
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
        PolicyKeeper { cluster, source, worker, options, hook_timeout: HOOK_TIMEOUT, hook_turns: Mutex::default() }
    }

    /// How long a hook run may take (default [`HOOK_TIMEOUT`]).
    pub fn with_hook_timeout(mut self, limit: Duration) -> PolicyKeeper {
        self.hook_timeout = limit;
        self
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
                // One bad value refuses the whole list (and the count, which
                // comes from its length): a rule that names a node outside
                // the set is wrong about the set, and dropping the rest would
                // act on half of a mistaken decision.
                let refused = match policy.target_kind {
                    TargetKind::Nodes => refused_drops(&situation.nodes, &decision.nodes_todrop),
                    _ => Vec::new(),
                };
                if !refused.is_empty() {
                    let why = describe_refusals(target, &situation.nodes, &refused);
                    tracing::warn!(app = %app.name, set = target, refused = %why, "m_nodes_todrop refused");
                    notes.push(why);
                    event.outcome = EventOutcome::Failed;
                    (event.from, event.to) = (Some(situation.node_count), Some(situation.node_count));
                } else if decision.changes() && runtime.last_change_ms > 0 && now - runtime.last_change_ms < wait {
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
                    self.start_hook(app, policy, target, to, &decision.nodes_todrop, notes);
                }
            }
        }
        Ok(())
    }

    /// `--node-set-hook CMD APP NODE_SET COUNT [-- NODE_TO_DROP...]`: how
    /// an operator's tooling (Terraform, a cloud CLI) acts on a node-set
    /// count. Started beside the rounds (a slow hook must not hold up every
    /// app's scaling); its outcome is an event of its own.
    fn start_hook(&self, app: &AppRecord, policy: &Policy, set: &str, count: u32, todrop: &[String], notes: &mut Vec<String>) {
        let Some(hook) = self.options.node_set_hook.clone() else {
            notes.push(format!("node set {set} should have {count} node(s); no --node-set-hook to act on it"));
            return;
        };
        // The ADT names the set: it must not read as an option either.
        if set.starts_with('-') {
            notes.push(format!("--node-set-hook not run: the node set's name {set:?} starts with '-'"));
            return;
        }
        notes.push(format!("--node-set-hook started for {set} = {count}"));
        let args = hook_args(&app.name, set, count, todrop);
        let turn = {
            let mut turns = self.hook_turns.lock().unwrap_or_else(|e| e.into_inner());
            turns.entry(format!("{}/{set}", app.id)).or_default().clone()
        };
        let (cluster, limit) = (self.cluster.clone(), self.hook_timeout);
        let (app_id, app_name, label, set) = (app.id.clone(), app.name.clone(), policy_label(policy), set.to_string());
        tokio::spawn(async move {
            let _turn = turn.lock().await;
            let outcome = run_hook(&hook, &args, limit).await;
            let (failed, message) = match &outcome {
                HookOutcome::Ran => (false, format!("--node-set-hook ran for {set} = {count}")),
                HookOutcome::Failed { status, stderr } => {
                    (true, format!("--node-set-hook failed for {set} = {count} ({status}): {}", stderr.chars().take(300).collect::<String>()))
                }
                HookOutcome::NotStarted(e) => (true, format!("--node-set-hook {hook} could not run for {set} = {count}: {e}")),
                HookOutcome::TimedOut(limit) => (true, format!("--node-set-hook {hook} took longer than {} s for {set} = {count}: killed", limit.as_secs_f64())),
            };
            if failed {
                tracing::warn!(app = %app_name, set, hook, "{message}");
            } else {
                tracing::info!(app = %app_name, set, "{message}");
            }
            let event = ScalingEvent {
                seq: 0,
                at_ms: now_ms(),
                policy: label,
                target: set,
                by: "--node-set-hook".into(),
                outcome: if failed { EventOutcome::Failed } else { EventOutcome::Unchanged },
                from: None,
                to: Some(count),
                readings: Default::default(),
                printed: Vec::new(),
                message,
            };
            // An app deleted meanwhile gets no event.
            if !matches!(cluster.store.app(&app_id), Ok(Some(_))) {
                return;
            }
            match cluster.store.append_event(&app_id, event, EVENTS_KEPT) {
                Ok(_) => {
                    cluster.store.flush_soon();
                    cluster.note_change();
                }
                Err(e) => tracing::warn!(app = %app_name, error = %format!("{e:#}"), "cannot record the --node-set-hook's outcome"),
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use fogmesh_common::metrics::{Matcher, Series};
    use fogmesh_common::pki::ClusterCa;
    use fogmesh_common::wire::MetricsSettings;

    use crate::cluster::ClusterConfig;
    use crate::model::SubmitApp;
    use crate::store::Store;

    const T: Duration = Duration::from_secs(60);

    fn node(id: &str, addr: &str) -> NodeRef {
        NodeRef { id: id.into(), addr: addr.into() }
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn only_members_of_the_set_may_be_dropped() {
        let members = [node("vm-1", "10.0.0.1"), node("vm-2", "10.0.0.2")];
        assert_eq!(refused_drops(&members, &strings(&["vm-2"])), []);
        assert_eq!(refused_drops(&members, &[]), []);
        let refused = refused_drops(&members, &strings(&["vm-1", "--evil", "ghost", "10.0.0.2", "vm-1", ""]));
        let got: Vec<(&str, &str)> = refused.iter().map(|r| (r.value.as_str(), r.reason.as_str())).collect();
        assert_eq!(
            got,
            [
                ("--evil", "is not a member"),
                ("ghost", "is not a member"),
                ("10.0.0.2", "is the address of member vm-2; name it by its ID (m_nodes[i]['ID'])"),
                ("vm-1", "is named twice"),
                ("", "is not a member"),
            ]
        );
        let said = describe_refusals("workers", &members, &refused[..2]);
        assert_eq!(said, r#"m_nodes_todrop refused for node set workers, nothing changed: "--evil" is not a member; "ghost" is not a member (its members: vm-1, vm-2)"#);
    }

    #[test]
    fn the_nodes_to_drop_come_after_a_double_dash() {
        assert_eq!(hook_args("app", "workers", 2, &[]), strings(&["app", "workers", "2"]));
        assert_eq!(hook_args("app", "workers", 1, &strings(&["vm-1", "vm-2"])), strings(&["app", "workers", "1", "--", "vm-1", "vm-2"]));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fogmesh-keeper-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    }

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        path.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn a_hook_gets_its_arguments_and_its_failures_are_told() {
        let dir = scratch("hook");
        let seen = dir.join("args");
        let hook = script(&dir, "hook.sh", &format!("for a in \"$@\"; do printf '%s\\n' \"$a\"; done > {}\n", seen.display()));
        let args = hook_args("app", "workers", 1, &strings(&["vm-1"]));
        assert_eq!(run_hook(&hook, &args, T).await, HookOutcome::Ran);
        assert_eq!(std::fs::read_to_string(&seen).expect("the hook ran"), "app\nworkers\n1\n--\nvm-1\n");

        let failing = script(&dir, "failing.sh", "echo boom >&2\nexit 3\n");
        match run_hook(&failing, &args, T).await {
            HookOutcome::Failed { status, stderr } => assert!(status.contains('3') && stderr == "boom", "{status}: {stderr}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(run_hook("/nonexistent/hook", &args, T).await, HookOutcome::NotStarted(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// No series: rules here read only their `m_*` inputs.
    struct NoSeries;

    impl SeriesSource for NoSeries {
        fn select(&self, _: &[Matcher], _: i64, _: i64) -> Vec<Series> {
            Vec::new()
        }
    }

    /// A rule worker that answers by a word in the rule: EVIL asks to drop
    /// a non-member and an option, GROW asks for 2 nodes, any other 1.
    fn fake_worker(dir: &Path) -> Arc<RuleWorker> {
        let body = r#"while read -r line; do
  case "$line" in
    *EVIL*) echo '{"Ok":{"outputs":{"m_nodes_todrop":["--evil","ghost"]},"printed":[]}}' ;;
    *GROW*) echo '{"Ok":{"outputs":{"m_node_count":2},"printed":[]}}' ;;
    *) echo '{"Ok":{"outputs":{"m_node_count":1},"printed":[]}}' ;;
  esac
done
"#;
        let path = script(dir, "worker.sh", body);
        Arc::new(RuleWorker::new(PathBuf::from("/bin/sh"), vec![path]))
    }

    /// A cloud node set of 1 to 4 nodes, whose policy runs every second.
    fn cloud_set_adt(word: &str) -> String {
        format!(
            r#"tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  node_templates:
    workers:
      type: tosca.nodes.MiCADO.EC2.Compute
      properties: {{region_name: eu-west-1, image_id: ami-0123456789, instance_type: t3.small}}
    job:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties:
        image: busybox
      requirements:
        - host: workers
  policies:
    - workers-size:
        type: tosca.policies.Scaling.MiCADO
        targets: [workers]
        properties:
          min_instances: 1
          max_instances: 4
          interval: 1s
          cooldown: 1s
          scaling_rule: |
            # {word}
            m_node_count = m_node_count
"#
        )
    }

    async fn cluster_with(dir: &Path, apps: &[(&str, &str)]) -> (Arc<Cluster>, Vec<AppRecord>) {
        let store = Store::open(&dir.join("store")).expect("store");
        let ca = ClusterCa::generate("keeper test CA").expect("CA");
        let config = ClusterConfig {
            offline_after: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(3),
            agent_endpoint: "127.0.0.1:7401".into(),
            metrics: MetricsSettings { mqtt_url: "mqtts://127.0.0.1:8883".into(), interval_ms: 15_000, ack_key: vec![] },
            scaling_period: Duration::from_secs(1),
            node_cert_lifetime: Duration::from_secs(30 * 24 * 3600),
        };
        let cluster = Cluster::new(store, ca, config);
        let mut records = Vec::new();
        for (name, word) in apps {
            let req = SubmitApp { name: Some(name.to_string()), adt: cloud_set_adt(word), params: vec![], reset_params: false };
            records.push(cluster.submit_app(&req).await.expect("submitted"));
        }
        (cluster, records)
    }

    async fn wait_for_events(cluster: &Cluster, app: &AppRecord, what: &str, done: impl Fn(&[ScalingEvent]) -> bool) -> Vec<ScalingEvent> {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let events = cluster.store.events(&app.id, 0, 1000).expect("events");
            if done(&events) {
                return events;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {events:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn nodes_to_drop_outside_the_set_are_refused_and_never_reach_the_hook() {
        let dir = scratch("refuse");
        let calls = dir.join("calls");
        let hook = script(&dir, "hook.sh", &format!("echo \"$@\" >> {}\n", calls.display()));
        let (cluster, apps) = cluster_with(&dir, &[("evil", "EVIL")]).await;
        let options = KeeperOptions { default_period: Duration::from_secs(1), node_set_hook: Some(hook), limits: RuleLimits::default() };
        let keeper = PolicyKeeper::new(cluster.clone(), Arc::new(NoSeries), fake_worker(&dir), options);
        let running = tokio::spawn(keeper.run_forever());
        // Two rounds: a hook the first had started would have run by then.
        let events = wait_for_events(&cluster, &apps[0], "two rounds", |e| e.len() >= 2).await;
        running.abort();

        for event in &events {
            assert_eq!(event.outcome, EventOutcome::Failed, "{event:?}");
            assert_eq!((event.from, event.to), (Some(1), Some(1)));
            assert!(
                event.message.contains(r#"m_nodes_todrop refused for node set workers, nothing changed: "--evil" is not a member; "ghost" is not a member (it has no members)"#),
                "{}",
                event.message
            );
        }
        let app = cluster.store.app(&apps[0].id).expect("read").expect("the app");
        let set = app.plan.node("workers").expect("the set");
        assert_eq!((set.scaled_to, set.dropped.as_slice()), (None, &[] as &[String]), "nothing changed");
        assert!(!calls.exists(), "the hook ran: {:?}", std::fs::read_to_string(&calls));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_hook_past_its_time_is_killed_while_other_apps_go_on_scaling() {
        let dir = scratch("slow-hook");
        let pid_file = dir.join("sleeper.pid");
        // The hook's own child outlives it unless its whole group is killed.
        let hook = script(&dir, "hook.sh", &format!("sleep 30 &\necho $! > {}\nwait\n", pid_file.display()));
        let (cluster, apps) = cluster_with(&dir, &[("grow", "GROW"), ("steady", "STEADY")]).await;
        let options = KeeperOptions { default_period: Duration::from_secs(1), node_set_hook: Some(hook), limits: RuleLimits::default() };
        let keeper = PolicyKeeper::new(cluster.clone(), Arc::new(NoSeries), fake_worker(&dir), options).with_hook_timeout(Duration::from_secs(3));
        let running = tokio::spawn(keeper.run_forever());
        let hooked = |e: &ScalingEvent| e.by == "--node-set-hook";
        let grow = wait_for_events(&cluster, &apps[0], "the hook's outcome", |events| events.iter().any(hooked)).await;
        let steady = cluster.store.events(&apps[1].id, 0, 1000).expect("events");
        running.abort();

        let scaled = grow.iter().find(|e| e.outcome == EventOutcome::Scaled).expect("the set was scaled");
        assert_eq!((scaled.from, scaled.to), (Some(1), Some(2)));
        assert!(scaled.message.contains("--node-set-hook started for workers = 2"), "{}", scaled.message);
        let outcome = grow.iter().find(|e| hooked(e)).expect("the hook's event");
        assert_eq!(outcome.outcome, EventOutcome::Failed);
        assert!(outcome.message.contains("took longer than 3 s for workers = 2: killed"), "{}", outcome.message);
        // While the hook ran, the other app's rounds did too.
        let meanwhile = steady.iter().filter(|e| e.at_ms > scaled.at_ms && e.at_ms < outcome.at_ms).count();
        assert!(meanwhile >= 1, "no round of the other app while the hook ran: {steady:#?}\nhook: {outcome:?}");
        // The hook's child went with it (a zombie at most, until reaped).
        let sleeper = std::fs::read_to_string(&pid_file).expect("the hook started its child").trim().to_string();
        let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "the hook's child still runs: {stat}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
