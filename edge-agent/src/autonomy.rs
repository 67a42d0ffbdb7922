//! Scaling on the node while it is cut off from the master.
//!
//! With its desired state the master hands this node the scaling policies
//! whose target runs only here ([`LocalPolicy`]). Once the link to the
//! master has been down for `--autonomy-after`, the agent runs their rounds
//! itself, the same round the master runs ([`round`]), against its own
//! recent samples, within the policy's bounds and cooldown, and applies the
//! result as an *override* of the stored desired state: replicas are added
//! (copies of replica 1's spec, exactly what the master would send for
//! them) or the highest ones removed.
//!
//! Back online, the agent sends its decisions (oldest first) after Welcome;
//! the master records them as events and takes the last count per
//! workload as its own, so the desired state it sends next is what already
//! runs: nothing restarts. An override ends when a desired state from the
//! master has its count (adopted) or any count other than the one the
//! override started from (the master decided anew); until then a stale
//! desired state does not undo it. Overrides and unreported decisions are
//! kept in `autonomy.json`: they survive an agent restart while offline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fogmesh_common::adt::plan::Plan;
use fogmesh_common::scaling::round::{self, AlertClock, NodeRef, Situation};
use fogmesh_common::scaling::{RuleLimits, RuleWorker};
use fogmesh_common::wire::{container_key, DesiredState, LocalDecision, LocalPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::metrics::recent::RecentSamples;
use crate::persister::Applied;

const FILE_NAME: &str = "autonomy.json";
/// Decisions kept for the report at most (the oldest go first).
const MAX_DECISIONS: usize = 1000;
/// Period of a policy without its own `interval`, as on the master.
const DEFAULT_PERIOD: Duration = Duration::from_secs(15);

/// Whether the agent has a session with the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Up,
    Down { since: Instant },
}

/// A replica count decided here, over the master's `base`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Override {
    app_id: String,
    workload: String,
    base: u32,
    replicas: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Journal {
    overrides: Vec<Override>,
    decisions: Vec<LocalDecision>,
    /// `m_userdata` per app, as the local rounds left it (None at first).
    userdata: BTreeMap<String, Value>,
    clocks: BTreeMap<String, AlertClock>,
    last_run_ms: BTreeMap<String, i64>,
    last_change_ms: BTreeMap<String, i64>,
}

pub struct Autonomy {
    /// This node, as rules see it in `m_nodes`.
    me: NodeRef,
    path: PathBuf,
    journal: Mutex<Journal>,
    /// Bumped when the overrides change.
    overrides_changed: watch::Sender<u64>,
}

pub struct AutonomyOptions {
    /// How long the link must be down before the agent decides itself.
    pub after: Duration,
    pub limits: RuleLimits,
    /// Runs the rules (a child process).
    pub worker: Arc<RuleWorker>,
}

impl Autonomy {
    /// Decisions not yet taken by the master, oldest first.
    pub fn pending_report(&self) -> Vec<LocalDecision> {
        self.lock().decisions.clone()
    }

    /// The master recorded the decisions up to `up_to_ms`.
    pub fn report_taken(&self, up_to_ms: i64) {
        let mut j = self.lock();
        j.decisions.retain(|d| d.at_ms > up_to_ms);
        self.save(&j);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, journal: &Journal) {
        let write = || -> Result<()> {
            let tmp = self.path.with_extension("tmp");
            let text = serde_json::to_vec_pretty(journal)?;
            let mut f = fogmesh_common::private_files::create_private(&tmp)?;
            std::io::Write::write_all(&mut f, &text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(file = %self.path.display(), error = %format!("{e:#}"), "cannot store the local scaling journal (decisions are kept in memory)");
        }
    }
}

/// Starts deciding while offline; returns the handle the connector reports
/// through and the desired state the reconciler should run (the stored one
/// with the local overrides applied).
pub fn start(
    data_dir: &Path,
    me: NodeRef,
    applied: watch::Receiver<Applied>,
    link: watch::Receiver<Link>,
    recent: Arc<RecentSamples>,
    options: AutonomyOptions,
) -> (Arc<Autonomy>, watch::Receiver<Applied>) {
    let path = data_dir.join(FILE_NAME);
    let journal = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "the local scaling journal does not read: starting without it");
            Journal::default()
        }),
        Err(_) => Journal::default(),
    };
    if !journal.overrides.is_empty() {
        tracing::info!(overrides = journal.overrides.len(), "local scaling decisions still apply");
    }
    let autonomy = Arc::new(Autonomy {
        me,
        path,
        journal: Mutex::new(journal),
        overrides_changed: watch::channel(0).0,
    });
    let (effective_tx, effective_rx) = watch::channel(effective(&autonomy, &applied.borrow()));
    tokio::spawn(follow(autonomy.clone(), applied.clone(), effective_tx));
    tokio::spawn(decide_forever(autonomy.clone(), applied, link, recent, options));
    (autonomy, effective_rx)
}

/// Keeps the effective desired state current: on every new stored state
/// (resolving overrides the master has answered) and every override change.
async fn follow(autonomy: Arc<Autonomy>, mut applied: watch::Receiver<Applied>, effective_tx: watch::Sender<Applied>) {
    let mut changed = autonomy.overrides_changed.subscribe();
    loop {
        tokio::select! {
            r = applied.changed() => {
                if r.is_err() {
                    return;
                }
                resolve(&autonomy, &applied.borrow_and_update());
            }
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
        let next = effective(&autonomy, &applied.borrow());
        effective_tx.send_if_modified(|current| {
            let differs = *current != next;
            *current = next;
            differs
        });
    }
}

/// Ends the overrides a desired state from the master answers.
fn resolve(autonomy: &Autonomy, applied: &Applied) {
    let Applied::Desired(state) = applied else { return };
    let mut j = autonomy.lock();
    let before = j.overrides.len();
    j.overrides.retain(|o| {
        let count = count_of(state, &o.app_id, &o.workload);
        let keep = count == o.base && count != o.replicas && state.policies.iter().any(|p| p.app_id == o.app_id && p.workload == o.workload);
        if !keep {
            tracing::info!(workload = %o.workload, local = o.replicas, master = count, "the master answered a local scaling decision: following the master");
        }
        keep
    });
    if j.overrides.len() != before {
        autonomy.save(&j);
    }
}

fn count_of(state: &DesiredState, app_id: &str, workload: &str) -> u32 {
    state.containers.iter().filter(|c| c.app_id == app_id && c.workload == workload).count() as u32
}

/// The stored desired state with the overrides applied.
fn effective(autonomy: &Autonomy, applied: &Applied) -> Applied {
    let Applied::Desired(state) = applied else { return applied.clone() };
    let j = autonomy.lock();
    if j.overrides.is_empty() {
        return applied.clone();
    }
    let mut state = state.clone();
    for o in &j.overrides {
        apply_override(&mut state, o);
    }
    Applied::Desired(state)
}

/// Sets a workload's replica count on this node: copies of its first
/// replica's spec for new ones, the highest numbers removed first.
fn apply_override(state: &mut DesiredState, o: &Override) {
    let Some(template) = state.containers.iter().filter(|c| c.app_id == o.app_id && c.workload == o.workload).min_by_key(|c| c.replica).cloned() else {
        return;
    };
    state.containers.retain(|c| !(c.app_id == o.app_id && c.workload == o.workload && c.replica > o.replicas));
    for replica in 1..=o.replicas {
        if !state.containers.iter().any(|c| c.app_id == o.app_id && c.workload == o.workload && c.replica == replica) {
            let mut spec = template.clone();
            spec.replica = replica;
            spec.name = container_key(&o.app_id, &o.workload, replica);
            state.containers.push(spec);
        }
    }
    state.containers.sort_by(|a, b| a.name.cmp(&b.name));
}

async fn decide_forever(autonomy: Arc<Autonomy>, applied: watch::Receiver<Applied>, link: watch::Receiver<Link>, recent: Arc<RecentSamples>, options: AutonomyOptions) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut announced = false;
    loop {
        tick.tick().await;
        let down_for = match *link.borrow() {
            Link::Up => None,
            Link::Down { since } => Some(since.elapsed()),
        };
        let Some(down_for) = down_for.filter(|d| *d >= options.after) else {
            announced = false;
            continue;
        };
        let policies = match &*applied.borrow() {
            Applied::Desired(state) => state.policies.clone(),
            _ => Vec::new(),
        };
        if policies.is_empty() {
            continue;
        }
        if !announced {
            tracing::warn!(offline_for = ?down_for, policies = policies.len(), "the master is unreachable: this node runs its scaling policies itself");
            announced = true;
        }
        for policy in &policies {
            if let Err(e) = decide(&autonomy, &applied, policy, &recent, &options.worker, options.limits).await {
                tracing::warn!(workload = %policy.workload, error = %format!("{e:#}"), "local scaling round failed");
            }
        }
    }
}

/// One local round of one policy, if it is due.
async fn decide(autonomy: &Autonomy, applied: &watch::Receiver<Applied>, local: &LocalPolicy, recent: &Arc<RecentSamples>, worker: &RuleWorker, limits: RuleLimits) -> Result<()> {
    let plan: Plan = serde_json::from_str(&local.plan_json).context("the policy the master sent does not read")?;
    let policy = plan.policies.first().context("no policy in the plan the master sent")?.clone();
    let now = unix_ms();
    let (situation, mut clock) = {
        let j = autonomy.lock();
        let last = j.last_run_ms.get(&local.key).copied().unwrap_or(0);
        if now - last < round::period(&policy, DEFAULT_PERIOD).as_millis() as i64 {
            return Ok(());
        }
        let current = j
            .overrides
            .iter()
            .find(|o| o.app_id == local.app_id && o.workload == local.workload)
            .map(|o| o.replicas)
            .unwrap_or_else(|| match &*applied.borrow() {
                Applied::Desired(state) => count_of(state, &local.app_id, &local.workload),
                _ => local.replicas,
            });
        let situation = Situation {
            now_ms: now,
            container_count: current,
            node_count: 1,
            nodes: vec![autonomy.me.clone()],
            time_since_node_count_changed: 0.0,
            userdata: j.userdata.get(&local.app_id).cloned().unwrap_or(Value::Null),
        };
        (situation, j.clocks.get(&local.key).cloned().unwrap_or_default())
    };
    let prepared = {
        let (policy, plan, recent, situation) = (policy.clone(), plan.clone(), recent.clone(), situation.clone());
        let (p, c) = tokio::task::spawn_blocking(move || {
            let p = round::prepare(&policy, &plan, recent.as_ref(), &situation, &mut clock, limits);
            (p, clock)
        })
        .await?;
        clock = c;
        p
    };
    let Some(prepared) = prepared else { return Ok(()) };
    let readings_json = serde_json::to_string(&prepared.readings).unwrap_or_default();
    let mut notes = prepared.warnings.clone();
    let result = worker.evaluate(prepared.request).await;
    let mut j = autonomy.lock();
    j.last_run_ms.insert(local.key.clone(), now);
    j.clocks.insert(local.key.clone(), clock);
    let from = situation.container_count;
    let decision = match result {
        Err(e) => {
            notes.push(format!("the rule failed, nothing changed: {e}"));
            // One report per streak of the same failure is enough.
            let message = notes.join("; ");
            let repeat = j.decisions.iter().rev().find(|d| d.key == local.key).is_some_and(|d| d.failed && d.message == message);
            (!repeat).then(|| LocalDecision {
                app_id: local.app_id.clone(),
                workload: local.workload.clone(),
                key: local.key.clone(),
                label: local.label.clone(),
                at_ms: now,
                from,
                to: from,
                printed: e.printed.clone(),
                readings_json,
                message,
                failed: true,
            })
        }
        Ok(outcome) => {
            let d = round::decide(&policy, &plan, &situation, &outcome);
            j.userdata.insert(local.app_id.clone(), d.userdata.clone());
            let (_, mut to) = d.containers.unwrap_or((from, from));
            if let Some(why) = &d.adjusted {
                notes.push(why.clone());
            }
            let last_change = j.last_change_ms.get(&local.key).copied().unwrap_or(0);
            let wait = round::cooldown(&policy, DEFAULT_PERIOD).as_millis() as i64;
            if to != from && last_change > 0 && now - last_change < wait {
                notes.push(format!("cooldown: the last change was {} s ago (at least {} s apart)", (now - last_change) / 1000, wait / 1000));
                to = from;
            }
            (to != from).then(|| {
                j.last_change_ms.insert(local.key.clone(), now);
                let base = j
                    .overrides
                    .iter()
                    .find(|o| o.app_id == local.app_id && o.workload == local.workload)
                    .map(|o| o.base)
                    .unwrap_or(local.replicas);
                j.overrides.retain(|o| !(o.app_id == local.app_id && o.workload == local.workload));
                j.overrides.push(Override { app_id: local.app_id.clone(), workload: local.workload.clone(), base, replicas: to });
                tracing::warn!(workload = %local.workload, from, to, "scaled on this node while the master is unreachable");
                LocalDecision {
                    app_id: local.app_id.clone(),
                    workload: local.workload.clone(),
                    key: local.key.clone(),
                    label: local.label.clone(),
                    at_ms: now,
                    from,
                    to,
                    printed: d.printed.clone(),
                    readings_json,
                    message: notes.join("; "),
                    failed: false,
                }
            })
        }
    };
    if let Some(d) = decision {
        let changed = !d.failed;
        j.decisions.push(d);
        let over = j.decisions.len().saturating_sub(MAX_DECISIONS);
        j.decisions.drain(..over);
        autonomy.save(&j);
        drop(j);
        if changed {
            autonomy.overrides_changed.send_modify(|n| *n += 1);
        }
    }
    Ok(())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogmesh_common::wire::ContainerSpec;

    fn spec(replica: u32) -> ContainerSpec {
        ContainerSpec {
            name: container_key("a1", "web", replica),
            app_id: "a1".into(),
            app_name: "app".into(),
            workload: "web".into(),
            replica,
            image: "img".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            ports: vec![],
            mounts: vec![],
            cpu_millis: None,
            memory_bytes: None,
            privileged: false,
            host_network: false,
            working_dir: None,
            labels: vec![],
            liveness: None,
            readiness: None,
            pod_network: None,
        }
    }

    #[test]
    fn overrides_add_exact_copies_and_remove_the_highest_replicas() {
        let mut state = DesiredState { generation: 1, containers: vec![spec(1)], ..Default::default() };
        apply_override(&mut state, &Override { app_id: "a1".into(), workload: "web".into(), base: 1, replicas: 3 });
        assert_eq!(state.containers, vec![spec(1), spec(2), spec(3)], "what the master would send for 3 replicas");
        apply_override(&mut state, &Override { app_id: "a1".into(), workload: "web".into(), base: 1, replicas: 2 });
        assert_eq!(state.containers, vec![spec(1), spec(2)]);
    }
}
