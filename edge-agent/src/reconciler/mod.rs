//! Reconciler: makes the local Docker engine run exactly the containers the
//! node should run. Only containers labelled with this node's name are ever
//! touched, so several agents (and the operator's own containers) can share
//! one engine. Restarts are done by the agent, not by Docker, so they can be
//! counted, backed off, and happen with no master around.
//!
//! Updates are make-before-break: each version of a spec is its own
//! container (the spec hash is in its name and labels). A new version must
//! have its image and be created and started before the old one goes; when
//! both cannot run at once (same host port), the old one is stopped first
//! and started again if the new one fails. The old version is kept for a
//! [`track::ROLLBACK_WINDOW`] and brought back if the new one dies in it.
//!
//! Without a desired state (the store was lost and the master has not
//! answered) the reconciler adopts what it finds: it keeps every container
//! of this node running and removes nothing.

mod config;
mod engine;
pub mod events;
mod probes;
mod track;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use fogmesh_common::wire::{ContainerSpec, ContainerState, ContainerStatus};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

pub use config::{
    container_name, Owner, LABEL_APP, LABEL_APP_NAME, LABEL_HOST_PORTS, LABEL_NAME, LABEL_NODE, LABEL_REPLICA, LABEL_SPEC,
    LABEL_WORKLOAD,
};
pub use engine::RuntimeError;
use engine::{handle, is_running, label, pull_image, short, Engine};
use futures_util::StreamExt;
use track::{Pull, Track};

/// Containers created and started at once in a pass. Docker handles a few
/// in parallel well; many more only queue inside dockerd.
const PARALLEL_LAUNCHES: usize = 8;
/// A failed pull is retried no more often than this.
const PULL_RETRY: Duration = Duration::from_secs(60);
/// How long a pass waits for a pull before moving on to other containers;
/// a fast answer (small image, or an offline node's instant failure) is
/// still reported in the same pass.
const PULL_WAIT: Duration = Duration::from_secs(3);

/// What one pass found for one spec: the state of the desired version, the
/// hash of the version that runs (maybe an older one), and why the desired
/// version does not run.
struct Outcome {
    state: ContainerState,
    running_spec: Option<String>,
    error: Option<String>,
    /// Readiness probe result of the desired version, when it has run.
    ready: Option<bool>,
}

impl Outcome {
    fn new(state: ContainerState, running_spec: Option<String>, error: Option<String>) -> Outcome {
        Outcome { state, running_spec, error: error.map(|e| short(&e)), ready: None }
    }
}

/// What a pass did for one spec: finished, or a container still to be
/// created and started together with the others of the pass.
enum Step<T> {
    Done(T),
    Launch(Box<Launch>),
}

/// A new container, ready to be created and started.
struct Launch {
    cname: String,
    hash: String,
    /// The pod network container it joins.
    network: Option<String>,
    /// The previous version, stopped to free its host ports: started again
    /// if the new one cannot start.
    stopped_old: Option<ContainerSummary>,
    /// The spec hash of the older version that serves meanwhile.
    serving: Option<String>,
    has_older: bool,
}

enum Image {
    Ready,
    Pulling,
    Failed(String),
}

/// Makes the local Docker engine match a node's desired containers.
pub struct Reconciler {
    engine: Engine,
    owner: Owner,
    data_dir: PathBuf,
    tracks: HashMap<String, Track>,
    probes: probes::Prober,
    rollback_window: Duration,
    /// Pod network holders running in this pass, `KEY@HASH` -> container id.
    pod_networks: HashMap<String, String>,
    /// Pod network holders (re)started in this pass: their members must
    /// restart too, or they keep the old, dead network namespace.
    restarted_networks: HashSet<String>,
}

impl Reconciler {
    /// Connects to the local engine. `wake` is notified when something
    /// outside a pass needs one (a probe result changed).
    pub async fn connect(owner: Owner, data_dir: &Path, wake: Arc<Notify>) -> Result<Self, RuntimeError> {
        if owner.node.is_empty() {
            return Err(RuntimeError::Invalid("node name is empty".into()));
        }
        let engine = Engine::connect().await?;
        // Docker needs absolute bind sources; the agent may run from anywhere.
        let data_dir = std::path::absolute(data_dir)
            .map_err(|source| RuntimeError::Io { context: format!("resolve data directory {}", data_dir.display()), source })?;
        let probes = probes::Prober::new(engine.docker.clone(), wake);
        Ok(Reconciler { engine, owner, data_dir, tracks: HashMap::new(), probes, rollback_window: track::ROLLBACK_WINDOW, pod_networks: HashMap::new(), restarted_networks: HashSet::new() })
    }

    /// How long the previous version is kept after an update (default
    /// [`track::ROLLBACK_WINDOW`]).
    pub fn with_rollback_window(mut self, window: Duration) -> Self {
        self.rollback_window = window;
        self
    }

    /// The engine's name and version, e.g. "docker 20.10.24".
    pub async fn runtime_version(&self) -> Result<String, RuntimeError> {
        self.engine.version().await
    }

    /// A Docker client for the event watcher.
    pub fn docker(&self) -> bollard::Docker {
        self.engine.docker.clone()
    }

    pub fn node(&self) -> &str {
        &self.owner.node
    }

    /// When a pass next has something to do (a restart back-off ends, a
    /// rollback window closes, a started container settles).
    pub fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        self.tracks.values().filter_map(|t| t.wake_at(now, self.rollback_window)).min()
    }

    /// One pass: creates, starts, replaces and removes this node's
    /// containers so the engine matches `desired`, and returns the observed
    /// status of each desired container, in order. `None` means "unknown":
    /// keep what runs. Never fails as a whole: each container's trouble is in
    /// its own status.
    pub async fn reconcile(&mut self, desired: Option<&[ContainerSpec]>) -> Vec<ContainerStatus> {
        let owned = match self.engine.list_owned(&self.owner.node).await {
            Ok(owned) => owned,
            Err(e) => {
                warn!(error = %e, "cannot list containers");
                let specs = desired.unwrap_or_default();
                return specs.iter().map(|s| self.status(s, Outcome::new(ContainerState::Failed, None, Some(e.to_string())))).collect();
            }
        };
        // Only containers the agent made carry both labels; anything else
        // with this node's label is not ours to touch.
        let mut by_key: HashMap<String, Vec<ContainerSummary>> = HashMap::new();
        for c in owned {
            if let Some(key) = label(&c, LABEL_NAME) {
                by_key.entry(key.to_string()).or_default().push(c);
            }
        }
        let Some(desired) = desired else {
            return self.adopt(by_key).await;
        };

        // Remove first: frees names and host ports for the new containers.
        let wanted: HashSet<&str> = desired.iter().map(|s| s.name.as_str()).collect();
        let stale: Vec<ContainerSummary> =
            by_key.iter().filter(|(k, _)| !wanted.contains(k.as_str())).flat_map(|(_, cs)| cs.iter().cloned()).collect();
        for c in &stale {
            self.remove_version(c).await;
        }
        by_key.retain(|k, _| wanted.contains(k.as_str()));
        self.tracks.retain(|name, _| wanted.contains(name.as_str()));

        self.probes.begin_pass();
        self.pod_networks = by_key
            .iter()
            .flat_map(|(key, cs)| cs.iter().filter(|c| is_running(c)).map(move |c| (format!("{key}@{}", label(c, LABEL_SPEC).unwrap_or("")), handle(c))))
            .collect();
        self.restarted_networks.clear();
        // Pod members after the containers whose network they join.
        let mut order: Vec<usize> = (0..desired.len()).collect();
        order.sort_by_key(|i| desired[*i].pod_network.is_some());
        let mut seen = HashSet::new();
        let mut statuses: Vec<Option<ContainerStatus>> = vec![None; desired.len()];
        let mut launches: Vec<(usize, Box<Launch>)> = Vec::new();
        for i in order {
            let spec = &desired[i];
            if !seen.insert(spec.name.as_str()) {
                let error = format!("container {} appears twice in the desired state", spec.name);
                statuses[i] = Some(self.status(spec, Outcome::new(ContainerState::Failed, None, Some(error))));
                continue;
            }
            // Pod members join the network of a container that may be in
            // this batch: start the batch first.
            if spec.pod_network.is_some() && !launches.is_empty() {
                self.launch_all(desired, std::mem::take(&mut launches), &mut statuses).await;
            }
            let found = by_key.remove(&spec.name).unwrap_or_default();
            match self.reconcile_one(spec, found).await {
                Step::Done(status) => statuses[i] = Some(status),
                Step::Launch(launch) => launches.push((i, launch)),
            }
        }
        self.launch_all(desired, launches, &mut statuses).await;
        self.probes.end_pass();
        statuses.into_iter().flatten().collect()
    }

    fn status(&self, spec: &ContainerSpec, outcome: Outcome) -> ContainerStatus {
        let track = self.tracks.get(&spec.name);
        ContainerStatus {
            name: spec.name.clone(),
            app_id: spec.app_id.clone(),
            workload: spec.workload.clone(),
            state: outcome.state,
            spec_hash: spec.spec_hash(),
            running_spec: outcome.running_spec,
            ready: spec.readiness.as_ref().map(|_| outcome.ready.unwrap_or(false)),
            restarts: track.map_or(0, |t| t.restarts),
            last_error: outcome.error,
        }
    }

    /// Removes one container (any version) and the config-map files of
    /// its version.
    async fn remove_version(&self, c: &ContainerSummary) {
        let id = handle(c);
        match self.engine.remove(&id).await {
            Ok(()) => info!(container = %id, name = label(c, LABEL_NAME).unwrap_or(""), "removed container that is no longer desired"),
            Err(e) => warn!(error = %e, "cannot remove container"),
        }
        if let (Some(key), Some(hash)) = (label(c, LABEL_NAME), label(c, LABEL_SPEC)) {
            let dir = config::configmap_dir(&self.data_dir, key, hash);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(dir = %dir.display(), error = %e, "cannot remove config-map files");
                }
            }
        }
    }

    /// No desired state: keep every container of this node running as it is.
    async fn adopt(&mut self, by_key: HashMap<String, Vec<ContainerSummary>>) -> Vec<ContainerStatus> {
        let now = Instant::now();
        let mut statuses = Vec::new();
        let mut keys: Vec<_> = by_key.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, mut versions) in keys {
            // The running version, else the newest.
            versions.sort_by_key(|c| (!is_running(c), -c.created.unwrap_or(0)));
            let c = &versions[0];
            let hash = label(c, LABEL_SPEC).unwrap_or_default().to_string();
            let track = self.tracks.entry(key.clone()).or_insert_with(|| Track::new(hash.clone()));
            let (state, error) = if is_running(c) {
                track.running(now);
                (ContainerState::Running, None)
            } else if track.down(now) {
                let why = self.engine.exit_reason(&handle(c)).await;
                let began = Instant::now();
                let result = self.engine.start(&handle(c), &key).await;
                track.started(began, Instant::now(), result.is_ok(), true);
                info!(container = %key, "{why}: restarting (no desired state: keeping what runs)");
                match result {
                    Ok(()) => (ContainerState::Starting, None),
                    Err(e) => (ContainerState::Failed, Some(e.to_string())),
                }
            } else {
                (ContainerState::Exited, Some(format!("restarting in {:.0?}", track.wait_left(now))))
            };
            let restarts = track.restarts;
            statuses.push(ContainerStatus {
                name: key,
                app_id: label(c, LABEL_APP).unwrap_or_default().to_string(),
                workload: label(c, LABEL_WORKLOAD).unwrap_or_default().to_string(),
                state,
                running_spec: (state == ContainerState::Running).then(|| hash.clone()),
                spec_hash: hash,
                ready: None,
                restarts,
                last_error: error,
            });
        }
        statuses
    }

    async fn reconcile_one(&mut self, spec: &ContainerSpec, found: Vec<ContainerSummary>) -> Step<ContainerStatus> {
        let hash = spec.spec_hash();
        // A new spec starts its bookkeeping (restarts, pulls, failures) afresh.
        let mut track = match self.tracks.remove(&spec.name) {
            Some(t) if t.spec_hash == hash => t,
            _ => Track::new(hash.clone()),
        };
        let (mut current, mut older): (Vec<_>, Vec<_>) = found.into_iter().partition(|c| label(c, LABEL_SPEC) == Some(hash.as_str()));
        // Running first, then newest.
        let order = |c: &ContainerSummary| (!is_running(c), -c.created.unwrap_or(0));
        current.sort_by_key(order);
        older.sort_by_key(order);
        // One container per version: a leftover duplicate goes.
        for extra in current.iter().skip(1) {
            self.remove_version(extra).await;
        }
        match self.drive(spec, &hash, current.into_iter().next(), &older, &mut track).await {
            Step::Done(outcome) => Step::Done(self.conclude(spec, track, outcome)),
            Step::Launch(launch) => {
                self.tracks.insert(spec.name.clone(), track);
                Step::Launch(launch)
            }
        }
    }

    /// Logs a change of the spec's trouble, keeps its bookkeeping for the
    /// next pass, and makes its status.
    fn conclude(&mut self, spec: &ContainerSpec, mut track: Track, outcome: Outcome) -> ContainerStatus {
        if outcome.error != track.last_error {
            match &outcome.error {
                Some(e) => warn!(container = %spec.name, state = outcome.state.as_str(), error = %e, "container does not run its desired version"),
                None => debug!(container = %spec.name, state = outcome.state.as_str(), "container is fine"),
            }
        }
        track.last_error = outcome.error.clone();
        self.tracks.insert(spec.name.clone(), track);
        self.status(spec, outcome)
    }

    /// Creates and starts the pass's new containers, [`PARALLEL_LAUNCHES`]
    /// at a time, and fills in their statuses.
    async fn launch_all(&mut self, desired: &[ContainerSpec], launches: Vec<(usize, Box<Launch>)>, statuses: &mut [Option<ContainerStatus>]) {
        if launches.is_empty() {
            return;
        }
        let (engine, owner, data_dir) = (&self.engine, &self.owner, self.data_dir.as_path());
        let results: Vec<_> = futures_util::stream::iter(launches)
            .map(|(i, launch)| async move {
                let began = Instant::now();
                let result = launch_container(engine, owner, data_dir, &desired[i], &launch).await;
                (i, launch, result, began, Instant::now())
            })
            .buffer_unordered(PARALLEL_LAUNCHES)
            .collect()
            .await;
        for (i, launch, result, began, done) in results {
            let spec = &desired[i];
            let mut track = self.tracks.remove(&spec.name).unwrap_or_else(|| Track::new(launch.hash.clone()));
            let outcome = self.launched(spec, launch, result, &mut track, began, done).await;
            statuses[i] = Some(self.conclude(spec, track, outcome));
        }
    }

    async fn drive(
        &mut self,
        spec: &ContainerSpec,
        hash: &str,
        current: Option<ContainerSummary>,
        older: &[ContainerSummary],
        track: &mut Track,
    ) -> Step<Outcome> {
        let now = Instant::now();
        let cname = container_name(&self.owner.node, spec, hash);
        let Some(c) = current else {
            return self.roll_out(spec, hash, cname, older, track).await;
        };
        Step::Done(self.drive_existing(spec, hash, &cname, c, older, track, now).await)
    }

    /// The desired version has a container: keep it running, restart it,
    /// or bring the old version back when it died right after the update.
    #[allow(clippy::too_many_arguments)]
    async fn drive_existing(
        &mut self,
        spec: &ContainerSpec,
        hash: &str,
        cname: &str,
        c: ContainerSummary,
        older: &[ContainerSummary],
        track: &mut Track,
        now: Instant,
    ) -> Outcome {
        let id = handle(&c);
        if is_running(&c) && spec.pod_network.as_ref().is_some_and(|n| self.restarted_networks.contains(n)) {
            info!(container = %cname, "its pod's network container restarted: restarting it to join the new network");
            let stopped = self.engine.stop(&id).await;
            let began = Instant::now();
            let result = match stopped {
                Ok(()) => self.engine.start(&id, cname).await,
                Err(e) => Err(e),
            };
            track.started(began, Instant::now(), result.is_ok(), true);
            return match result {
                Ok(()) => Outcome::new(ContainerState::Starting, Some(hash.into()), None),
                Err(e) => Outcome::new(ContainerState::Failed, None, Some(e.to_string())),
            };
        }
        if is_running(&c) {
            let settled = track.running(now);
            track.failure = None;
            if !older.is_empty() && !track.in_rollback_window(now, self.rollback_window) {
                for old in older {
                    self.remove_version(old).await;
                }
                info!(container = %cname, "update done: removed the previous version");
            }
            if let Some(reason) = self.probes.liveness_failure(&id, spec) {
                info!(container = %cname, %reason, "liveness probe failed: restarting");
                self.probes.forget(&id);
                let stopped = self.engine.stop(&id).await;
                let began = Instant::now();
                let result = match stopped {
                    Ok(()) => self.engine.start(&id, cname).await,
                    Err(e) => Err(e),
                };
                track.started(began, Instant::now(), result.is_ok(), true);
                self.restarted_networks.insert(format!("{}@{hash}", spec.name));
                return match result {
                    Ok(()) => Outcome::new(ContainerState::Starting, Some(hash.into()), Some(format!("restarted: {reason}"))),
                    Err(e) => Outcome::new(ContainerState::Failed, None, Some(e.to_string())),
                };
            }
            let ready = self.probes.watch(&id, spec);
            let state = if settled { ContainerState::Running } else { ContainerState::Starting };
            return Outcome { ready, ..Outcome::new(state, Some(hash.into()), None) };
        }

        // The new version died soon after an update: bring the old one back.
        if track.in_rollback_window(now, self.rollback_window) && !older.is_empty() {
            let why = self.engine.exit_reason(&id).await;
            self.remove_version(&c).await;
            let restored = self.ensure_serving(older).await;
            let reason = format!("the new version {why} right after the update; brought back the previous version");
            warn!(container = %cname, "{reason}");
            track.fail(now, reason.clone());
            return Outcome::new(ContainerState::Failed, restored, Some(reason));
        }
        let serving = older.iter().find(|o| is_running(o)).and_then(|o| label(o, LABEL_SPEC)).map(String::from);
        match c.state {
            Some(
                ContainerSummaryStateEnum::RESTARTING | ContainerSummaryStateEnum::REMOVING | ContainerSummaryStateEnum::STOPPING,
            ) => Outcome::new(ContainerState::Starting, serving, None),
            Some(ContainerSummaryStateEnum::PAUSED) => match self.engine.docker.unpause_container(&id).await {
                Ok(()) => Outcome::new(ContainerState::Running, Some(hash.into()), None),
                Err(e) => Outcome::new(ContainerState::Failed, serving, Some(RuntimeError::docker(format!("unpause container {cname}"), e).to_string())),
            },
            // Created but never started (the agent stopped in between), exited, or dead.
            state => {
                let why = self.engine.exit_reason(&id).await;
                if !track.down(now) {
                    let wait = track.wait_left(now).as_secs_f32().ceil();
                    let state = if track.crash_looping() { ContainerState::Failed } else { ContainerState::Exited };
                    let what = if track.crash_looping() { format!("crash loop: {why}") } else { why };
                    return Outcome::new(state, serving, Some(format!("{what}; restarting in {wait} s")));
                }
                info!(container = %cname, restarts = track.restarts + 1, "{why}: restarting");
                self.probes.forget(&id);
                self.restarted_networks.insert(format!("{}@{hash}", spec.name));
                let began = Instant::now();
                let result = if state == Some(ContainerSummaryStateEnum::DEAD) {
                    // A dead container cannot be started again: make a new one.
                    match self.engine.remove(&id).await {
                        Ok(()) => self.create_and_start(spec, hash, cname).await,
                        Err(e) => Err(e),
                    }
                } else {
                    self.engine.start(&id, cname).await
                };
                track.started(began, Instant::now(), result.is_ok(), state != Some(ContainerSummaryStateEnum::CREATED));
                match result {
                    Ok(()) => Outcome::new(ContainerState::Starting, Some(hash.into()), None),
                    Err(e) => Outcome::new(ContainerState::Failed, serving, Some(e.to_string())),
                }
            }
        }
    }

    /// The desired version has no container yet: prepare it, to be
    /// created beside the old one, or in its place when they cannot run
    /// together (then the old one is stopped here).
    async fn roll_out(&mut self, spec: &ContainerSpec, hash: &str, cname: String, older: &[ContainerSummary], track: &mut Track) -> Step<Outcome> {
        let now = Instant::now();
        if let Some(reason) = track.failure_active(now).map(String::from) {
            let serving = self.ensure_serving(older).await;
            return Step::Done(Outcome::new(ContainerState::Failed, serving, Some(reason)));
        }
        let old_running = older.iter().find(|o| is_running(o));
        let serving = old_running.and_then(|o| label(o, LABEL_SPEC)).map(String::from);
        match self.ensure_image(spec, track).await {
            Image::Ready => {}
            Image::Pulling => return Step::Done(Outcome::new(ContainerState::Starting, serving, Some(format!("pulling image {}", spec.image)))),
            Image::Failed(e) => {
                track.fail(now, e.clone());
                let serving = self.ensure_serving(older).await;
                return Step::Done(Outcome::new(ContainerState::Failed, serving, Some(e)));
            }
        }
        let network = match self.pod_network_of(spec) {
            Ok(network) => network,
            Err(why) => return Step::Done(Outcome::new(ContainerState::Starting, serving, Some(why.to_string()))),
        };
        let clash = old_running.filter(|o| config::host_ports_clash(label(o, LABEL_HOST_PORTS).unwrap_or(""), &config::host_ports_label(spec)));
        if let Some(old) = clash {
            info!(container = %cname, "the new version needs the old one's host ports: stopping the old one first");
            if let Err(e) = self.engine.stop(&handle(old)).await {
                let reason = format!("cannot stop the previous version to free its ports: {e}");
                track.fail(now, reason.clone());
                return Step::Done(Outcome::new(ContainerState::Failed, serving, Some(reason)));
            }
        }
        Step::Launch(Box::new(Launch { cname, hash: hash.to_string(), network, stopped_old: clash.cloned(), serving, has_older: !older.is_empty() }))
    }

    /// Books the result of a launch that ran from `began` to `done`.
    async fn launched(
        &mut self,
        spec: &ContainerSpec,
        launch: Box<Launch>,
        result: Result<String, RuntimeError>,
        track: &mut Track,
        began: Instant,
        done: Instant,
    ) -> Outcome {
        let Launch { cname, hash, stopped_old, serving, has_older, .. } = *launch;
        let id = match result {
            Ok(id) => id,
            Err(e) => {
                let restored = match &stopped_old {
                    Some(old) => self.start_again(old).await,
                    None => serving,
                };
                let reason = if has_older { format!("{e}; the previous version keeps running") } else { e.to_string() };
                track.fail(done, reason.clone());
                return Outcome::new(ContainerState::Failed, restored, Some(reason));
            }
        };
        info!(container = %cname, image = %spec.image, "started container");
        self.joined_pod(spec, &hash, id);
        track.created(began, done);
        if has_older {
            track.replaced_at = Some(done);
        }
        Outcome::new(ContainerState::Starting, Some(hash), None)
    }

    /// Makes sure the newest older version runs (after a failed update);
    /// returns its spec hash when it does.
    async fn ensure_serving(&self, older: &[ContainerSummary]) -> Option<String> {
        let old = older.first()?;
        if is_running(old) {
            return label(old, LABEL_SPEC).map(String::from);
        }
        self.start_again(old).await
    }

    /// Starts an older version that was stopped; returns its spec hash.
    async fn start_again(&self, old: &ContainerSummary) -> Option<String> {
        let hash = label(old, LABEL_SPEC).map(String::from);
        let key = label(old, LABEL_NAME).unwrap_or_default();
        match self.engine.start(&handle(old), key).await {
            Ok(()) => {
                info!(container = %key, "started the previous version again");
                hash
            }
            Err(e) => {
                warn!(container = %key, error = %e, "cannot start the previous version again");
                None
            }
        }
    }

    /// The id of the pod network container `spec` joins; `Waiting` while
    /// it does not run yet.
    fn pod_network_of(&self, spec: &ContainerSpec) -> Result<Option<String>, RuntimeError> {
        let Some(holder) = &spec.pod_network else { return Ok(None) };
        match self.pod_networks.get(holder) {
            Some(id) => Ok(Some(id.clone())),
            None => Err(RuntimeError::Waiting(format!("waiting for its pod's network container {} to run", holder.split('@').next().unwrap_or(holder)))),
        }
    }

    /// A container of `spec` started: pod members may join its network,
    /// and members that run must rejoin it.
    fn joined_pod(&mut self, spec: &ContainerSpec, hash: &str, id: String) {
        let holder = format!("{}@{hash}", spec.name);
        self.pod_networks.insert(holder.clone(), id);
        self.restarted_networks.insert(holder);
    }

    /// Creates and starts a container in the pass itself (a dead one's replacement).
    async fn create_and_start(&mut self, spec: &ContainerSpec, hash: &str, cname: &str) -> Result<(), RuntimeError> {
        let network = self.pod_network_of(spec)?;
        let launch = Launch { cname: cname.to_string(), hash: hash.to_string(), network, stopped_old: None, serving: None, has_older: false };
        let id = launch_container(&self.engine, &self.owner, &self.data_dir, spec, &launch).await?;
        self.joined_pod(spec, hash, id);
        Ok(())
    }

    /// Makes sure the image is local, pulling it in the background when not:
    /// once per spec, then at most every `PULL_RETRY`.
    async fn ensure_image(&self, spec: &ContainerSpec, track: &mut Track) -> Image {
        match self.engine.has_image(&spec.image).await {
            Ok(true) => return Image::Ready,
            Ok(false) => {}
            Err(e) => return Image::Failed(e.to_string()),
        }
        if !matches!(track.pull, Some(Pull::Running(_))) {
            if let Some(Pull::Failed { at, error }) = &track.pull {
                if at.elapsed() < PULL_RETRY {
                    return Image::Failed(error.clone());
                }
            }
            info!(image = %spec.image, "image is not on this node: pulling");
            let task = tokio::spawn(pull_image(self.engine.docker.clone(), spec.image.clone()));
            track.pull = Some(Pull::Running(task));
        }
        let Some(Pull::Running(handle)) = &mut track.pull else {
            return Image::Pulling;
        };
        let joined = match tokio::time::timeout(PULL_WAIT, handle).await {
            Err(_) => return Image::Pulling,
            Ok(joined) => joined,
        };
        match joined.unwrap_or_else(|e| Err(format!("pull task ended: {e}"))) {
            Ok(()) => {
                info!(image = %spec.image, "pulled image");
                track.pull = None;
                Image::Ready
            }
            Err(reason) => {
                let error = short(&format!("image {} is not on this node and could not be pulled: {reason}", spec.image));
                track.pull = Some(Pull::Failed { at: Instant::now(), error: error.clone() });
                Image::Failed(error)
            }
        }
    }
}

/// Prepares mounts, creates and starts a container; a container that was
/// created but could not start is removed again. Returns its id.
async fn launch_container(engine: &Engine, owner: &Owner, data_dir: &Path, spec: &ContainerSpec, launch: &Launch) -> Result<String, RuntimeError> {
    let mounts = config::prepare_mounts(spec, &launch.hash, data_dir)?;
    let body = config::create_body(spec, owner, &launch.hash, mounts, launch.network.as_deref())?;
    // A leftover container of this very version (e.g. created before a crash) is in the way.
    engine.remove(&launch.cname).await?;
    let id = engine.create(&launch.cname, body).await?;
    if let Err(e) = engine.start(&id, &launch.cname).await {
        let _ = engine.remove(&id).await;
        return Err(e);
    }
    Ok(id)
}
