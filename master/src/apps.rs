//! Applications: submit, update, delete, and their rollout views.
//!
//! Every write holds the cluster's write lock from reading the app to
//! flushing the new desired states, so revisions are unique and increase,
//! and an update that races a delete either lands first or finds no app.

use std::collections::BTreeMap;
use std::time::Duration;

use fogmesh_common::adt::{compile, declared_input_names, CompileOptions, Plan};
use fogmesh_common::codec::{self, MAX_FRAME_BYTES};
use fogmesh_common::pki::random_hex;
use fogmesh_common::wire::{AppDesired, MasterMessage};

use crate::cluster::Cluster;
use crate::failure::{check_name, Failure};
use crate::model::{now_ms, AppDetail, AppRecord, AppSummary, EventPage, SubmitApp};
use crate::policy_keeper::policy_views;
use crate::rollout::{app_view, NodeSnapshot};
use crate::scheduler::{container_spec, schedule};

/// Longest a rollout watcher may wait for one change.
pub const MAX_WATCH: Duration = Duration::from_secs(30);

impl Cluster {
    pub async fn submit_app(&self, req: &SubmitApp) -> Result<AppRecord, Failure> {
        let plan = compile_adt(&req.adt, &req.params)?;
        let id = random_hex(4);
        let name = req.name.clone().unwrap_or_else(|| format!("app-{id}"));
        check_name("app", &name)?;
        let _write = self.write_lock().await;
        if self.store.apps()?.iter().any(|a| a.name == name) {
            return Err(Failure::Conflict(format!("an app named '{name}' exists; choose another --name or update it")));
        }
        let now = now_ms();
        let app = AppRecord { id, name, adt: req.adt.clone(), params: req.params.clone(), plan, revision: 1, created_ms: now, updated_ms: now };
        self.check_wire_size(&app)?;
        self.store.put_app(&app)?;
        self.reschedule_locked().await?;
        tracing::info!(app = %app.name, id = %app.id, workloads = app.plan.workloads.len(), "app submitted");
        Ok(app)
    }

    /// Replaces an app's ADT. Containers whose spec did not change keep
    /// running. Parameters of earlier revisions are kept unless given again
    /// or `reset_params`. With `expected_revision`, the update applies only
    /// if the app is still at that revision.
    pub async fn update_app(&self, id: &str, req: &SubmitApp, expected_revision: Option<u64>) -> Result<AppRecord, Failure> {
        let _write = self.write_lock().await;
        let mut app = self.app_record(id)?;
        if let Some(expected) = expected_revision {
            if expected != app.revision {
                return Err(Failure::StaleRevision(format!(
                    "app {} is at revision {}, not {expected}: it changed since you read it; read it again and retry",
                    app.name, app.revision
                )));
            }
        }
        let params = merged_params(&app.params, req);
        let mut plan = compile_adt(&req.adt, &params)?;
        // What a policy scaled stays, within the new bounds.
        for w in &mut plan.workloads {
            if let Some(old) = app.plan.workload(&w.name) {
                w.replicas = old.replicas.max(w.min_instances).min(w.max_instances.unwrap_or(u32::MAX));
            }
        }
        for n in &mut plan.nodes {
            if let Some(old) = app.plan.node(&n.name) {
                n.scaled_to = old.scaled_to.map(|c| c.max(n.min_instances).min(n.max_instances.unwrap_or(u32::MAX)));
                n.dropped = old.dropped.clone();
            }
        }
        app.plan = plan;
        app.adt = req.adt.clone();
        app.params = params;
        app.revision += 1;
        app.updated_ms = now_ms();
        self.check_wire_size(&app)?;
        self.store.put_app(&app)?;
        self.reschedule_locked().await?;
        tracing::info!(app = %app.name, id = %app.id, revision = app.revision, "app updated");
        Ok(app)
    }

    /// Deletes an app; every node drops its containers, offline ones when they return.
    pub async fn delete_app(&self, id: &str) -> Result<(), Failure> {
        let _write = self.write_lock().await;
        let app = self.app_record(id)?;
        self.store.remove_app(&app.id)?;
        self.reschedule_locked().await?;
        tracing::info!(app = %app.name, id = %app.id, "app deleted");
        Ok(())
    }

    /// An app by id or by name.
    pub fn app_record(&self, id_or_name: &str) -> Result<AppRecord, Failure> {
        if let Some(app) = self.store.app(id_or_name)? {
            return Ok(app);
        }
        self.store
            .apps()?
            .into_iter()
            .find(|a| a.name == id_or_name)
            .ok_or_else(|| Failure::NotFound(format!("no app with id or name '{id_or_name}'")))
    }

    pub fn app_summaries(&self) -> Result<Vec<AppSummary>, Failure> {
        let version = *self.watch_changes().borrow();
        // Node state is read once for all apps.
        let nodes = self.node_snapshots()?;
        let pending = self.pending_reasons()?;
        let mut apps = self.store.apps()?;
        apps.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(apps
            .iter()
            .map(|app| {
                let detail = app_view(app, &nodes, &pending, version);
                let placements = || detail.workloads.iter().flat_map(|w| &w.placements);
                AppSummary {
                    workloads: detail.workloads.len(),
                    desired: placements().map(|p| p.desired as usize).sum(),
                    current: placements().map(|p| p.current as usize).sum(),
                    phase: detail.rollout.phase,
                    id: app.id.clone(),
                    name: app.name.clone(),
                    revision: app.revision,
                    updated_ms: app.updated_ms,
                }
            })
            .collect())
    }

    /// The app's rollout view. With `wait_after`, first waits (at most
    /// `timeout`) until something changed after that version.
    /// The view of `app` as this write left it (not re-read: another
    /// writer may have moved the app on since, and the caller must see the
    /// revision it made).
    pub fn view_of(&self, app: &AppRecord) -> Result<AppDetail, Failure> {
        let version = *self.watch_changes().borrow();
        self.full_view(app, version)
    }

    /// The rollout view plus the scaling policies' state.
    fn full_view(&self, app: &AppRecord, version: u64) -> Result<AppDetail, Failure> {
        let mut view = app_view(app, &self.node_snapshots()?, &self.pending_reasons()?, version);
        view.scaling = policy_views(app, &self.store.scaling(&app.id)?, self.config.scaling_period);
        Ok(view)
    }

    /// A policy's decision: the workload's replica count (within its
    /// bounds; every member of its pod), as a change of the plan, not a new
    /// revision. Serialised with every other write.
    pub async fn scale_workload(&self, app_id: &str, workload: &str, replicas: u32) -> Result<(), Failure> {
        let _write = self.write_lock().await;
        let mut app = self.store.app(app_id)?.ok_or_else(|| Failure::NotFound(format!("app {app_id} is gone")))?;
        let Some(w) = app.plan.workload(workload) else {
            return Err(Failure::NotFound(format!("app {} has no workload {workload} any more", app.name)));
        };
        let replicas = replicas.max(w.min_instances).min(w.max_instances.unwrap_or(u32::MAX));
        let pod = w.pod.clone();
        let mut changed = false;
        for w in app.plan.workloads.iter_mut().filter(|x| x.name == workload || (pod.is_some() && x.pod == pod)) {
            changed |= w.replicas != replicas;
            w.replicas = replicas;
        }
        if !changed {
            return Ok(());
        }
        self.check_wire_size(&app)?;
        self.store.put_app(&app)?;
        self.reschedule_locked().await?;
        tracing::info!(app = %app.name, workload, replicas, "scaled");
        Ok(())
    }

    /// A policy's decision for a node set: how many members it wants and
    /// which it asked to drop (within its bounds), kept in the plan.
    pub async fn scale_node_set(&self, app_id: &str, set: &str, count: u32, drop: &[String]) -> Result<(), Failure> {
        let _write = self.write_lock().await;
        let mut app = self.store.app(app_id)?.ok_or_else(|| Failure::NotFound(format!("app {app_id} is gone")))?;
        let name = app.name.clone();
        let Some(node) = app.plan.nodes.iter_mut().find(|n| n.name == set) else {
            return Err(Failure::NotFound(format!("app {name} has no node set {set} any more")));
        };
        let count = count.max(node.min_instances).min(node.max_instances.unwrap_or(u32::MAX));
        node.scaled_to = Some(count);
        for d in drop {
            if !node.dropped.contains(d) {
                node.dropped.push(d.clone());
            }
        }
        self.store.put_app(&app)?;
        self.reschedule_locked().await?;
        tracing::info!(app = %name, set, count, "node set scaled");
        Ok(())
    }

    /// Scaling events of an app after `after`; with `wait`, first waits
    /// (at most `timeout`) until there is one.
    pub async fn app_events(&self, id_or_name: &str, after: u64, wait: bool, timeout: Duration) -> Result<EventPage, Failure> {
        let app = self.app_record(id_or_name)?;
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WATCH);
        loop {
            let version = *self.watch_changes().borrow();
            let events = self.store.events(&app.id, after, 500)?;
            if !events.is_empty() || !wait || tokio::time::Instant::now() >= deadline {
                let last_seq = events.last().map(|e| e.seq).unwrap_or(after);
                return Ok(EventPage { events, last_seq, version });
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.wait_for_change(version, remaining).await;
        }
    }

    pub async fn app_detail(&self, id_or_name: &str, wait_after: Option<u64>, timeout: Duration) -> Result<AppDetail, Failure> {
        if let Some(after) = wait_after {
            self.app_record(id_or_name)?;
            self.wait_for_change(after, timeout.min(MAX_WATCH)).await;
        }
        let version = *self.watch_changes().borrow();
        let app = self.app_record(id_or_name)?;
        self.full_view(&app, version)
    }

    /// Every node with what it should run, what it acked and reports, and its state.
    pub(crate) fn node_snapshots(&self) -> Result<Vec<NodeSnapshot>, Failure> {
        let mut out = Vec::new();
        for node in self.store.nodes()? {
            out.push(NodeSnapshot {
                desired: self.store.desired(&node.name)?,
                acked: self.store.acked(&node.name)?,
                observed: self.store.observed(&node.name)?,
                state: self.node_state(&node),
                node,
            });
        }
        Ok(out)
    }

    /// Refuses an app whose part of some node's desired state would not fit
    /// in one wire frame. Hostless replicas may all land on one node, so
    /// they count fully against every node.
    fn check_wire_size(&self, app: &AppRecord) -> Result<(), Failure> {
        let nodes: Vec<_> = self.store.nodes()?.into_iter().map(|n| {
            let state = self.node_state(&n);
            (n, state)
        }).collect();
        let bound = schedule(std::slice::from_ref(app), &nodes, &BTreeMap::new(), &self.config.agent_endpoint);
        let hostless: Vec<_> = app
            .plan
            .workloads
            .iter()
            .filter(|w| w.host.is_none())
            .flat_map(|w| (1..=w.replicas).map(move |r| container_spec(app, w, r)))
            .collect();
        let mut worst: Option<(String, usize)> = None;
        let mut candidates: Vec<(String, Vec<_>)> = bound
            .per_node
            .into_iter()
            .map(|(node, specs)| (node, specs.into_iter().filter(|s| app.plan.workload(&s.workload).is_some_and(|w| w.host.is_some())).collect()))
            .collect();
        if candidates.is_empty() {
            candidates.push(("any node".to_string(), Vec::new()));
        }
        for (node, mut containers) in candidates {
            containers.extend(hostless.iter().cloned());
            let frame = MasterMessage::DesiredApp { generation: u64::MAX, app: AppDesired { app_id: app.id.clone(), containers, metrics: None, policies: Vec::new() } };
            let size = match codec::encode(&frame) {
                Ok(bytes) => bytes.len(),
                Err(codec::CodecError::TooLarge { len, .. }) => len,
                Err(e) => return Err(Failure::Internal(anyhow::anyhow!("encode the desired state: {e}"))),
            };
            if worst.as_ref().is_none_or(|(_, s)| size > *s) {
                worst = Some((node, size));
            }
        }
        match worst {
            Some((node, size)) if size > MAX_FRAME_BYTES => Err(Failure::TooLarge(format!(
                "app {} would need {size} bytes of desired state on node {node}, over the {MAX_FRAME_BYTES} byte limit per app and node; use fewer replicas per node or smaller config maps",
                app.name
            ))),
            _ => Ok(()),
        }
    }
}

/// Earlier parameters that the new ADT still declares, overridden by the new ones.
fn merged_params(old: &[(String, String)], req: &SubmitApp) -> Vec<(String, String)> {
    if req.reset_params {
        return req.params.clone();
    }
    let declared = declared_input_names(&req.adt);
    let mut merged: Vec<(String, String)> = old
        .iter()
        .filter(|(k, _)| declared.contains(k) && !req.params.iter().any(|(n, _)| n == k))
        .cloned()
        .collect();
    merged.extend(req.params.iter().cloned());
    merged
}

/// ADTs sent to the master compile without local imports: it reads no files
/// on a client's behalf.
fn compile_adt(adt: &str, params: &[(String, String)]) -> Result<Plan, Failure> {
    let options = CompileOptions { params: params.to_vec(), local_imports: None, for_deployment: true };
    compile(adt, &options).map_err(|e| Failure::Invalid {
        message: format!("the ADT has {} problem(s)", e.problems.len()),
        problems: e.problems.iter().map(|p| p.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_carry_over_unless_reset_or_undeclared() {
        let adt = "topology_template:\n  inputs:\n    a: {type: string}\n    b: {type: string}\n";
        let old = vec![("a".to_string(), "1".to_string()), ("gone".to_string(), "x".to_string()), ("b".to_string(), "2".to_string())];
        let req = SubmitApp { name: None, adt: adt.into(), params: vec![("b".into(), "3".into())], reset_params: false };
        assert_eq!(merged_params(&old, &req), vec![("a".to_string(), "1".to_string()), ("b".to_string(), "3".to_string())]);
        let reset = SubmitApp { reset_params: true, ..req };
        assert_eq!(merged_params(&old, &reset), vec![("b".to_string(), "3".to_string())]);
    }
}
