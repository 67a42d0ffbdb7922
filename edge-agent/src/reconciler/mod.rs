//! Reconciler: makes the local Docker engine run exactly the containers the
//! node should run. Only containers labelled with this node's name are ever
//! touched, so several agents (and the operator's own containers) can share
//! one engine. Restarts are done by the agent, not by Docker, so they can be
//! counted, backed off, and happen with no master around.

mod config;
mod track;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use fogmesh_common::wire::{ContainerSpec, ContainerState, ContainerStatus};
use futures_util::StreamExt;
use tracing::{debug, info, warn};

pub use config::{container_name, spec_hash, LABEL_APP, LABEL_NAME, LABEL_NODE, LABEL_SPEC, LABEL_WORKLOAD};
use track::{Pull, Track};

/// Longest a single image pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(20);
/// A failed pull is retried no more often than this.
const PULL_RETRY: Duration = Duration::from_secs(60);
/// How long a pass waits for a pull before moving on to other containers;
/// a fast answer (small image, or an offline node's instant failure) is
/// still reported in the same pass.
const PULL_WAIT: Duration = Duration::from_secs(3);
/// Error messages in statuses stay short: they travel to the master.
const MAX_ERROR_CHARS: usize = 300;

/// Why a runtime operation failed, with what the agent was doing.
#[derive(Debug)]
pub enum RuntimeError {
    /// The engine refused or could not be reached.
    Docker { context: String, source: DockerError },
    /// A file operation on the node (mount folders, config maps) failed.
    Io { context: String, source: std::io::Error },
    /// The spec cannot be run as written.
    Invalid(String),
}

impl RuntimeError {
    fn docker(context: impl Into<String>, source: DockerError) -> Self {
        RuntimeError::Docker { context: context.into(), source }
    }
}

/// Docker's own message without the transport wrapping, on one short line.
fn docker_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => short(message),
        DockerError::DockerStreamError { error } => short(error),
        other => short(&other.to_string()),
    }
}

fn short(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Docker { context, source } => write!(f, "{context}: {}", docker_message(source)),
            RuntimeError::Io { context, source } => write!(f, "{context}: {source}"),
            RuntimeError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for RuntimeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RuntimeError::Docker { source, .. } => Some(source),
            RuntimeError::Io { source, .. } => Some(source),
            RuntimeError::Invalid(_) => None,
        }
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

/// Result of one container's pass: state and why it is not running.
type Outcome = (ContainerState, Option<String>);

fn failed(e: impl fmt::Display) -> Outcome {
    (ContainerState::Failed, Some(short(&e.to_string())))
}

enum Image {
    Ready,
    Pulling,
    Failed(String),
}

/// Makes the local Docker engine match a node's desired containers.
pub struct Reconciler {
    docker: Docker,
    node: String,
    data_dir: PathBuf,
    bind_ip: Option<IpAddr>,
    tracks: HashMap<String, Track>,
}

impl Reconciler {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and
    /// agrees on an API version: fog boxes often run engines older than bollard.
    pub async fn connect(node_name: &str, data_dir: &Path, bind_ip: Option<IpAddr>) -> Result<Self, RuntimeError> {
        if node_name.is_empty() {
            return Err(RuntimeError::Invalid("node name is empty".into()));
        }
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::docker("connect to the Docker engine", e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::docker("connect to the Docker engine", e))?;
        // Docker needs absolute bind sources; the agent may run from anywhere.
        let data_dir = std::path::absolute(data_dir).map_err(|source| RuntimeError::Io {
            context: format!("resolve data directory {}", data_dir.display()),
            source,
        })?;
        Ok(Reconciler { docker, node: node_name.to_string(), data_dir, bind_ip, tracks: HashMap::new() })
    }

    /// The engine's name and version, e.g. "docker 20.10.24".
    pub async fn runtime_version(&self) -> Result<String, RuntimeError> {
        let v = self.docker.version().await.map_err(|e| RuntimeError::docker("query the Docker version", e))?;
        Ok(format!("docker {}", v.version.as_deref().unwrap_or("unknown")))
    }

    /// One pass: creates, starts, replaces and removes this node's containers
    /// so the engine matches `desired`; returns the observed status of each
    /// desired container, in order. Never fails as a whole: each container's
    /// trouble is in its own status.
    pub async fn reconcile(&mut self, desired: &[ContainerSpec]) -> Vec<ContainerStatus> {
        let owned = match self.list_owned().await {
            Ok(owned) => owned,
            Err(e) => {
                warn!(error = %e, "cannot list containers");
                let (state, err) = failed(&e);
                return desired.iter().map(|s| self.status(s, state, err.clone())).collect();
            }
        };
        let wanted: HashSet<&str> = desired.iter().map(|s| s.name.as_str()).collect();
        let mut by_name: HashMap<String, ContainerSummary> = HashMap::new();
        let mut stale = Vec::new();
        for c in owned {
            match label(&c, LABEL_NAME) {
                Some(n) if wanted.contains(n) && !by_name.contains_key(n) => {
                    by_name.insert(n.to_string(), c);
                }
                _ => stale.push(c),
            }
        }
        // Remove first: frees names and host ports for the new containers.
        for c in &stale {
            self.remove_stale(c, &wanted).await;
        }
        self.tracks.retain(|name, _| wanted.contains(name.as_str()));

        let mut seen = HashSet::new();
        let mut statuses = Vec::with_capacity(desired.len());
        for spec in desired {
            if !seen.insert(spec.name.as_str()) {
                let (state, err) = failed(format!("container name {} appears twice in the desired state", spec.name));
                statuses.push(self.status(spec, state, err));
                continue;
            }
            statuses.push(self.reconcile_one(spec, by_name.remove(&spec.name)).await);
        }
        statuses
    }

    fn status(&self, spec: &ContainerSpec, state: ContainerState, last_error: Option<String>) -> ContainerStatus {
        ContainerStatus {
            name: spec.name.clone(),
            app_id: spec.app_id.clone(),
            workload: spec.workload.clone(),
            state,
            restarts: self.tracks.get(&spec.name).map_or(0, |t| t.restarts),
            last_error,
        }
    }

    async fn list_owned(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={}", self.node)])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        self.docker.list_containers(Some(opts)).await.map_err(|e| RuntimeError::docker("list containers", e))
    }

    /// Removes an owned container no desired spec accounts for.
    async fn remove_stale(&self, c: &ContainerSummary, wanted: &HashSet<&str>) {
        let name = label(c, LABEL_NAME).unwrap_or("");
        let handle = c.id.clone().unwrap_or_else(|| container_name(&self.node, name));
        match self.remove(&handle).await {
            Ok(()) => info!(container = %handle, name, "removed container that is no longer desired"),
            Err(e) => warn!(error = %e, "cannot remove container"),
        }
        if !wanted.contains(name) {
            let dir = config::configmap_dir(&self.data_dir, name);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(dir = %dir.display(), error = %e, "cannot remove config-map files");
                }
            }
        }
    }

    /// Force-removes a container with its anonymous volumes; gone is fine.
    async fn remove(&self, handle: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.docker.remove_container(handle, Some(opts)).await {
            Err(e) if !is_not_found(&e) => Err(RuntimeError::docker(format!("remove container {handle}"), e)),
            _ => Ok(()),
        }
    }

    async fn reconcile_one(&mut self, spec: &ContainerSpec, existing: Option<ContainerSummary>) -> ContainerStatus {
        let hash = spec_hash(spec);
        // A new spec starts its bookkeeping (restarts, pulls) afresh.
        let mut track = match self.tracks.remove(&spec.name) {
            Some(t) if t.spec_hash == hash => t,
            _ => Track::new(hash.clone()),
        };
        let (state, err) = self.drive(spec, &hash, existing, &mut track).await;
        if err != track.last_error {
            match &err {
                Some(e) => warn!(container = %spec.name, state = state.as_str(), error = %e, "container is not running"),
                None => debug!(container = %spec.name, state = state.as_str(), "container is fine"),
            }
        }
        track.last_error = err.clone();
        self.tracks.insert(spec.name.clone(), track);
        self.status(spec, state, err)
    }

    async fn drive(
        &self,
        spec: &ContainerSpec,
        hash: &str,
        existing: Option<ContainerSummary>,
        track: &mut Track,
    ) -> Outcome {
        let cname = container_name(&self.node, &spec.name);
        let Some(c) = existing else {
            return self.create_and_start(spec, hash, &cname, track).await;
        };
        let handle = c.id.clone().unwrap_or_else(|| cname.clone());
        if label(&c, LABEL_SPEC) != Some(hash) {
            info!(container = %cname, "spec changed: replacing container");
            if let Err(e) = self.remove(&handle).await {
                return failed(e);
            }
            return self.create_and_start(spec, hash, &cname, track).await;
        }
        let now = Instant::now();
        match c.state {
            Some(ContainerSummaryStateEnum::RUNNING) => {
                track.running(now);
                (ContainerState::Running, None)
            }
            Some(ContainerSummaryStateEnum::PAUSED) => match self.docker.unpause_container(&handle).await {
                Ok(()) => (ContainerState::Running, None),
                Err(e) => failed(RuntimeError::docker(format!("unpause container {cname}"), e)),
            },
            Some(
                ContainerSummaryStateEnum::RESTARTING
                | ContainerSummaryStateEnum::REMOVING
                | ContainerSummaryStateEnum::STOPPING,
            ) => (ContainerState::Starting, None),
            // Created but never started: the first start failed, or the agent stopped in between.
            Some(ContainerSummaryStateEnum::CREATED) => {
                if !track.down(now) {
                    return (ContainerState::Failed, track.last_error.clone());
                }
                let result = self.start(&handle, &cname).await;
                track.created(now, result.is_ok());
                match result {
                    Ok(()) => (ContainerState::Starting, None),
                    Err(e) => failed(e),
                }
            }
            // Exited, dead or unknown: restart after the back-off.
            state => {
                let why = self.exit_reason(&handle).await;
                if !track.down(now) {
                    let wait = track.wait_left(now).as_secs_f32().ceil();
                    return (ContainerState::Exited, Some(format!("{why}; restarting in {wait} s")));
                }
                info!(container = %cname, restarts = track.restarts + 1, "{why}: restarting");
                let result = if state == Some(ContainerSummaryStateEnum::DEAD) {
                    // A dead container cannot be started again: make a new one.
                    match self.remove(&handle).await {
                        Ok(()) => self.create(spec, hash, &cname).await.map(|_| ()),
                        Err(e) => Err(e),
                    }
                } else {
                    self.start(&handle, &cname).await
                };
                track.started(now, result.is_ok(), true);
                match result {
                    Ok(()) => (ContainerState::Starting, None),
                    Err(e) => failed(e),
                }
            }
        }
    }

    /// Why a stopped container stopped, for its status.
    async fn exit_reason(&self, handle: &str) -> String {
        let state = match self.docker.inspect_container(handle, None).await {
            Ok(info) => info.state,
            Err(e) => return format!("exited (inspect failed: {})", docker_message(&e)),
        };
        let Some(state) = state else { return "exited".into() };
        let code = state.exit_code.map_or_else(|| "?".to_string(), |c| c.to_string());
        let mut why = if state.oom_killed == Some(true) {
            format!("killed for running out of memory (exit code {code})")
        } else {
            format!("exited with code {code}")
        };
        if let Some(err) = state.error.as_deref().filter(|e| !e.trim().is_empty()) {
            why.push_str(": ");
            why.push_str(&short(err));
        }
        why
    }

    async fn create_and_start(&self, spec: &ContainerSpec, hash: &str, cname: &str, track: &mut Track) -> Outcome {
        match self.ensure_image(spec, track).await {
            Image::Ready => {}
            Image::Pulling => return (ContainerState::Starting, Some(format!("pulling image {}", spec.image))),
            Image::Failed(e) => return (ContainerState::Failed, Some(e)),
        }
        let id = match self.create(spec, hash, cname).await {
            Ok(id) => id,
            Err(e) => return failed(e),
        };
        info!(container = %cname, image = %spec.image, "created container");
        let result = self.start(&id, cname).await;
        track.created(Instant::now(), result.is_ok());
        match result {
            Ok(()) => (ContainerState::Starting, None),
            Err(e) => failed(e),
        }
    }

    /// Prepares mounts and creates (does not start) the container; returns its id.
    async fn create(&self, spec: &ContainerSpec, hash: &str, cname: &str) -> Result<String, RuntimeError> {
        let mounts = config::prepare_mounts(spec, &self.data_dir)?;
        let body = config::create_body(spec, &self.node, hash, self.bind_ip, mounts)?;
        let opts = CreateContainerOptionsBuilder::new().name(cname).build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| RuntimeError::docker(format!("create container {cname}"), e))?;
        for w in created.warnings.iter().filter(|w| !w.is_empty()) {
            warn!(container = %cname, warning = %w, "docker warning");
        }
        Ok(created.id)
    }

    async fn start(&self, handle: &str, cname: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(handle, None)
            .await
            .map_err(|e| RuntimeError::docker(format!("start container {cname}"), e))
    }

    /// Makes sure the image is local, pulling it in the background when not:
    /// once per spec, then at most every `PULL_RETRY`.
    async fn ensure_image(&self, spec: &ContainerSpec, track: &mut Track) -> Image {
        match self.docker.inspect_image(&spec.image).await {
            Ok(_) => return Image::Ready,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Image::Failed(RuntimeError::docker(format!("inspect image {}", spec.image), e).to_string()),
        }
        if !matches!(track.pull, Some(Pull::Running(_))) {
            if let Some(Pull::Failed { at, error }) = &track.pull {
                if at.elapsed() < PULL_RETRY {
                    return Image::Failed(error.clone());
                }
            }
            info!(image = %spec.image, "image is not on this node: pulling");
            let task = tokio::spawn(pull_image(self.docker.clone(), spec.image.clone()));
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
                let error = format!("image {} is not on this node and could not be pulled: {reason}", spec.image);
                track.pull = Some(Pull::Failed { at: Instant::now(), error: short(&error) });
                Image::Failed(short(&error))
            }
        }
    }
}

/// Pulls `image`, giving up after `PULL_TIMEOUT`; the error is the reason.
async fn pull_image(docker: Docker, image: String) -> Result<(), String> {
    let opts = CreateImageOptionsBuilder::new().from_image(&config::image_with_tag(&image)).build();
    let drain = async {
        let mut stream = Box::pin(docker.create_image(Some(opts), None, None));
        while let Some(item) = stream.next().await {
            item.map_err(|e| docker_message(&e))?;
        }
        Ok(())
    };
    match tokio::time::timeout(PULL_TIMEOUT, drain).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} s", PULL_TIMEOUT.as_secs())),
    }
}
