//! Whether an app runs what its current revision says, from what the
//! master wants and what the agents report. Pure.
//!
//! An app is running only when every node it runs on has acked the node's
//! current desired state, and every container reports the hash of the
//! spec the master gave it, running (and ready, when it has a readiness
//! probe). A container the agent reports as failed for the current spec,
//! or a workload that can never be placed, fails the rollout.

use std::collections::BTreeMap;

use fogmesh_common::wire::{ContainerState, DesiredState, NodeStatus};

use crate::model::{
    AppDetail, AppRecord, ContainerView, NodeRecord, NodeRollout, NodeState, Pending, PendingKind, PlacementView, Rollout,
    RolloutPhase, WorkloadView,
};
use crate::scheduler::placement_key;

/// One node as a rollout sees it.
pub struct NodeSnapshot {
    pub node: std::sync::Arc<NodeRecord>,
    pub state: NodeState,
    pub desired: std::sync::Arc<DesiredState>,
    pub acked: u64,
    pub observed: std::sync::Arc<NodeStatus>,
}

impl NodeSnapshot {
    /// Containers the node reports running, whatever their spec.
    pub fn running_containers(&self) -> usize {
        self.observed.containers.iter().filter(|c| c.state == ContainerState::Running).count()
    }
}

/// Reasons sorted by how much they matter.
#[derive(Default)]
struct Verdict {
    failed: Vec<String>,
    progressing: Vec<String>,
    waiting: Vec<String>,
}

impl Verdict {
    fn rollout(self) -> Rollout {
        let (phase, reasons) = if !self.failed.is_empty() {
            (RolloutPhase::Failed, self.failed)
        } else if !self.progressing.is_empty() {
            (RolloutPhase::Progressing, self.progressing.into_iter().chain(self.waiting).collect())
        } else if !self.waiting.is_empty() {
            (RolloutPhase::Waiting, self.waiting)
        } else {
            (RolloutPhase::Running, Vec::new())
        };
        Rollout { phase, reasons: at_most(reasons, MAX_REASONS) }
    }
}

/// Reasons a rollout view lists; a fleet-wide rollout would otherwise
/// carry one per node.
const MAX_REASONS: usize = 20;

/// The first `max` lines, then one saying how many more there are.
fn at_most(mut lines: Vec<String>, max: usize) -> Vec<String> {
    if lines.len() > max {
        let more = lines.len() - max;
        lines.truncate(max);
        lines.push(format!("… and {more} more"));
    }
    lines
}

pub fn app_view(app: &AppRecord, nodes: &[NodeSnapshot], pending: &BTreeMap<String, Pending>, version: u64) -> AppDetail {
    let mut verdict = Verdict::default();
    let mut node_rollouts = Vec::new();
    for n in nodes {
        if !n.desired.containers.iter().any(|c| c.app_id == app.id) {
            continue;
        }
        let name = &n.node.name;
        if n.acked < n.desired.generation {
            let line = format!("node {name}: desired state {} not acked yet (has {})", n.desired.generation, n.acked);
            match n.state {
                NodeState::Ready => verdict.progressing.push(line),
                _ => verdict.waiting.push(format!("node {name} is {}; it gets its containers when it returns", state_word(n.state))),
            }
        }
        node_rollouts.push(NodeRollout { node: name.clone(), node_state: n.state, desired_generation: n.desired.generation, acked_generation: n.acked });
    }

    let mut workloads = Vec::new();
    for w in &app.plan.workloads {
        let mut placements = Vec::new();
        for n in nodes {
            let wanted: Vec<_> = n.desired.containers.iter().filter(|c| c.app_id == app.id && c.workload == w.name).collect();
            if wanted.is_empty() {
                continue;
            }
            let mut containers = Vec::new();
            for spec in wanted {
                let hash = spec.spec_hash();
                let seen = n.observed.containers.iter().find(|s| s.name == spec.name && s.spec_hash == hash);
                let current = seen.is_some_and(|s| s.runs_desired());
                let what = format!("{} replica {} on {}", w.name, spec.replica, n.node.name);
                match seen {
                    _ if current => {}
                    Some(s) if s.state == ContainerState::Failed => {
                        verdict.failed.push(format!("{what}: {}", s.last_error.as_deref().unwrap_or("failed")));
                    }
                    Some(s) if n.state == NodeState::Ready => {
                        let detail = s.last_error.clone().unwrap_or_else(|| match (s.state, s.ready) {
                            (ContainerState::Running, Some(false)) => "not ready yet".into(),
                            (state, _) => state.as_str().into(),
                        });
                        verdict.progressing.push(format!("{what}: {detail}"));
                    }
                    None if n.state == NodeState::Ready => verdict.progressing.push(format!("{what}: not reported yet")),
                    _ => verdict.waiting.push(format!("{what}: node {} is {}", n.node.name, state_word(n.state))),
                }
                containers.push(ContainerView {
                    name: spec.name.clone(),
                    replica: spec.replica,
                    state: seen.map(|s| s.state),
                    current,
                    ready: seen.and_then(|s| s.ready),
                    restarts: seen.map_or(0, |s| s.restarts),
                    error: seen.and_then(|s| s.last_error.clone()),
                });
            }
            let current = containers.iter().filter(|c| c.current).count() as u32;
            placements.push(PlacementView { node: n.node.name.clone(), node_state: n.state, desired: containers.len() as u32, current, containers });
        }
        let pending = pending.get(&placement_key(&app.id, &w.name)).cloned();
        if let Some(p) = &pending {
            let line = format!("{}: {}", w.name, p.reason);
            match p.kind {
                PendingKind::Waiting => verdict.waiting.push(line),
                PendingKind::Unplaceable | PendingKind::Conflict => verdict.failed.push(line),
            }
        }
        workloads.push(WorkloadView {
            name: w.name.clone(),
            image: w.image.clone(),
            desired_replicas: w.replicas,
            current_replicas: placements.iter().map(|p| p.current).sum(),
            placements,
            pending,
        });
    }
    AppDetail {
        id: app.id.clone(),
        name: app.name.clone(),
        revision: app.revision,
        params: shown_params(app),
        rollout: verdict.rollout(),
        nodes: node_rollouts,
        workloads,
        scaling: Vec::new(),
        version,
    }
}

/// Parameters with the values of `secret` inputs hidden.
fn shown_params(app: &AppRecord) -> Vec<(String, String)> {
    app.params
        .iter()
        .map(|(k, v)| {
            let secret = app.plan.inputs.iter().any(|i| i.secret && &i.name == k);
            (k.clone(), if secret { "<secret>".into() } else { v.clone() })
        })
        .collect()
}

fn state_word(state: NodeState) -> &'static str {
    match state {
        NodeState::Ready => "ready",
        NodeState::Offline => "offline",
        NodeState::Pending => "not joined yet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_wide_rollout_lists_its_first_reasons_and_counts_the_rest() {
        let many: Vec<String> = (0..10_000).map(|i| format!("node n{i}: not acked yet")).collect();
        let rollout = Verdict { failed: vec![], progressing: many, waiting: vec![] }.rollout();
        assert_eq!(rollout.reasons.len(), MAX_REASONS + 1);
        assert_eq!(rollout.reasons[0], "node n0: not acked yet");
        assert_eq!(rollout.reasons[MAX_REASONS], "… and 9980 more");
        let few = Verdict { failed: vec!["x: failed".into()], progressing: vec![], waiting: vec![] }.rollout();
        assert_eq!(few.reasons, ["x: failed"]);
    }
}
