//! Applications: submit, update, delete, and their rollout status per node.

use fogmesh_common::adt::{compile, CompileOptions, Plan};
use fogmesh_common::pki::random_hex;
use fogmesh_common::wire::ContainerState;

use crate::cluster::Cluster;
use crate::failure::{check_name, Failure};
use crate::model::{now_ms, AppDetail, AppRecord, AppSummary, PlacementView, SubmitApp, WorkloadView};
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
        let mut out = Vec::new();
        for app in self.store.apps()? {
            let detail = self.app_detail(&app.id)?;
            let count = |f: fn(&PlacementView) -> u32| detail.workloads.iter().flat_map(|w| &w.placements).map(f).sum::<u32>();
            out.push(AppSummary {
                id: app.id,
                name: app.name,
                revision: app.revision,
                workloads: detail.workloads.len(),
                desired: detail.workloads.iter().map(|w| w.desired_replicas as usize).sum(),
                running: count(|p| p.running) as usize,
                updated_ms: app.updated_ms,
            });
        }
        Ok(out)
    }

    /// Per workload and node: how many containers should run and how many do.
    pub fn app_detail(&self, id_or_name: &str) -> Result<AppDetail, Failure> {
        let app = self.app_record(id_or_name)?;
        let pending = self.pending_reasons()?;
        let nodes = self.store.nodes()?;
        let mut per_node = Vec::new();
        for node in &nodes {
            per_node.push((node, self.store.desired(&node.name)?, self.store.observed(&node.name)?, self.node_state(node)));
        }
        let workloads = app
            .plan
            .workloads
            .iter()
            .map(|w| {
                let placements = per_node
                    .iter()
                    .filter_map(|(node, desired, observed, state)| {
                        let mine = |app_id: &str, workload: &str| app_id == app.id && workload == w.name;
                        let want = desired.containers.iter().filter(|c| mine(&c.app_id, &c.workload)).count() as u32;
                        if want == 0 {
                            return None;
                        }
                        let containers: Vec<_> = observed
                            .containers
                            .iter()
                            .filter(|c| mine(&c.app_id, &c.workload))
                            .cloned()
                            .collect();
                        let running = containers.iter().filter(|c| c.state == ContainerState::Running).count() as u32;
                        let reasons = containers.iter().filter_map(|c| c.last_error.clone()).collect();
                        Some(PlacementView {
                            node: node.name.clone(),
                            node_state: *state,
                            desired: want,
                            running,
                            reasons,
                            containers,
                        })
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
        Ok(AppDetail { id: app.id, name: app.name, revision: app.revision, workloads })
    }
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
