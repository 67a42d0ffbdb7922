//! Applications: submit, update, delete, and their rollout status per node.

use std::collections::BTreeMap;

use fogmesh_common::adt::{compile, CompileOptions, Plan};
use fogmesh_common::pki::random_hex;
use fogmesh_common::wire::{ContainerState, DesiredState, NodeStatus};

use crate::cluster::Cluster;
use crate::failure::{check_name, Failure};
use crate::model::{now_ms, AppDetail, AppRecord, AppSummary, NodeRecord, NodeState, PlacementView, SubmitApp, WorkloadView};
use crate::scheduler::placement_key;

impl Cluster {
    pub async fn submit_app(&self, req: &SubmitApp) -> Result<AppRecord, Failure> {
        let plan = compile_adt(req)?;
        let id = random_hex(4);
        let name = req.name.clone().unwrap_or_else(|| format!("app-{id}"));
        check_name("app", &name)?;
        if self.store.apps()?.iter().any(|a| a.name == name) {
            return Err(Failure::Conflict(format!("an app named '{name}' exists; choose another --name or update it")));
        }
        let now = now_ms();
        let app = AppRecord {
            id,
            name,
            adt: req.adt.clone(),
            params: req.params.clone(),
            plan,
            revision: 1,
            created_ms: now,
            updated_ms: now,
        };
        self.store.put_app(&app)?;
        self.reschedule().await?;
        tracing::info!(app = %app.name, id = %app.id, workloads = app.plan.workloads.len(), "app submitted");
        Ok(app)
    }

    /// Replaces an app's ADT. Containers whose spec did not change keep running.
    pub async fn update_app(&self, id: &str, req: &SubmitApp) -> Result<AppRecord, Failure> {
        let mut app = self.app_record(id)?;
        app.plan = compile_adt(req)?;
        app.adt = req.adt.clone();
        app.params = req.params.clone();
        app.revision += 1;
        app.updated_ms = now_ms();
        self.store.put_app(&app)?;
        self.reschedule().await?;
        tracing::info!(app = %app.name, id = %app.id, revision = app.revision, "app updated");
        Ok(app)
    }

    /// Deletes an app; every node drops its containers, offline ones when they return.
    pub async fn delete_app(&self, id: &str) -> Result<(), Failure> {
        let app = self.app_record(id)?;
        self.store.remove_app(&app.id)?;
        self.reschedule().await?;
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
        // Node state is read once for all apps.
        let nodes = self.node_snapshots()?;
        let pending = self.pending_reasons()?;
        let mut out = Vec::new();
        for app in self.store.apps()? {
            let detail = detail_of(&app, &nodes, &pending);
            out.push(AppSummary {
                workloads: detail.workloads.len(),
                desired: detail.workloads.iter().map(|w| w.desired_replicas as usize).sum(),
                running: detail.workloads.iter().flat_map(|w| &w.placements).map(|p| p.running as usize).sum(),
                id: app.id,
                name: app.name,
                revision: app.revision,
                updated_ms: app.updated_ms,
            });
        }
        Ok(out)
    }

    /// Per workload and node: how many containers should run and how many do.
    pub fn app_detail(&self, id_or_name: &str) -> Result<AppDetail, Failure> {
        let app = self.app_record(id_or_name)?;
        Ok(detail_of(&app, &self.node_snapshots()?, &self.pending_reasons()?))
    }

    /// Every node with what it should run, what it reports, and its state.
    fn node_snapshots(&self) -> Result<Vec<NodeSnapshot>, Failure> {
        let mut out = Vec::new();
        for node in self.store.nodes()? {
            out.push(NodeSnapshot {
                desired: self.store.desired(&node.name)?,
                observed: self.store.observed(&node.name)?,
                state: self.node_state(&node),
                node,
            });
        }
        Ok(out)
    }
}

struct NodeSnapshot {
    node: NodeRecord,
    desired: DesiredState,
    observed: NodeStatus,
    state: NodeState,
}

fn detail_of(app: &AppRecord, nodes: &[NodeSnapshot], pending: &BTreeMap<String, String>) -> AppDetail {
    let workloads = app
        .plan
        .workloads
        .iter()
        .map(|w| {
            let mine = |app_id: &str, workload: &str| app_id == app.id && workload == w.name;
            let placements = nodes
                .iter()
                .filter_map(|n| {
                    let want = n.desired.containers.iter().filter(|c| mine(&c.app_id, &c.workload)).count() as u32;
                    if want == 0 {
                        return None;
                    }
                    let containers: Vec<_> = n.observed.containers.iter().filter(|c| mine(&c.app_id, &c.workload)).cloned().collect();
                    let running = containers.iter().filter(|c| c.state == ContainerState::Running).count() as u32;
                    let reasons = containers.iter().filter_map(|c| c.last_error.clone()).collect();
                    Some(PlacementView { node: n.node.name.clone(), node_state: n.state, desired: want, running, reasons, containers })
                })
                .collect();
            WorkloadView {
                name: w.name.clone(),
                image: w.image.clone(),
                desired_replicas: w.replicas,
                placements,
                pending_reason: pending.get(&placement_key(&app.id, &w.name)).cloned(),
            }
        })
        .collect();
    AppDetail { id: app.id.clone(), name: app.name.clone(), revision: app.revision, workloads }
}

/// ADTs sent to the master compile without local imports: it reads no files
/// on a client's behalf.
fn compile_adt(req: &SubmitApp) -> Result<Plan, Failure> {
    let options = CompileOptions { params: req.params.clone(), local_imports: None };
    compile(&req.adt, &options).map_err(|e| Failure::Invalid {
        message: format!("the ADT has {} problem(s)", e.problems.len()),
        problems: e.problems.iter().map(|p| p.to_string()).collect(),
    })
}
