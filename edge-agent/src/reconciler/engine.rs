//! The Docker operations the reconciler needs, each with an error that
//! says what the agent was doing. No decisions here: only calls.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::config::{image_with_tag, LABEL_NODE};

/// Longest a single image pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(20);
/// Error messages in statuses stay short: they travel to the master.
const MAX_ERROR_CHARS: usize = 300;
/// How long a stopping container gets before it is killed.
const STOP_GRACE_SECS: i32 = 10;

/// Why a runtime operation failed, with what the agent was doing.
#[derive(Debug)]
pub enum RuntimeError {
    /// The engine refused or could not be reached.
    Docker { context: String, source: DockerError },
    /// A file operation on the node (mount folders, config maps) failed.
    Io { context: String, source: std::io::Error },
    /// The spec cannot be run as written.
    Invalid(String),
    /// Not yet: something it needs is not there (a pod's network container).
    Waiting(String),
}

impl RuntimeError {
    pub fn docker(context: impl Into<String>, source: DockerError) -> Self {
        RuntimeError::Docker { context: context.into(), source }
    }
}

/// Docker's own message without the transport wrapping, on one short line.
pub fn docker_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => short(message),
        DockerError::DockerStreamError { error } => short(error),
        other => short(&other.to_string()),
    }
}

/// One line, at most [`MAX_ERROR_CHARS`] characters.
pub fn short(s: &str) -> String {
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
            RuntimeError::Invalid(msg) | RuntimeError::Waiting(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for RuntimeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RuntimeError::Docker { source, .. } => Some(source),
            RuntimeError::Io { source, .. } => Some(source),
            RuntimeError::Invalid(_) | RuntimeError::Waiting(_) => None,
        }
    }
}

pub fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

pub fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

pub fn is_running(c: &ContainerSummary) -> bool {
    c.state == Some(ContainerSummaryStateEnum::RUNNING)
}

/// The container's id, or its first name when the engine left the id out.
pub fn handle(c: &ContainerSummary) -> String {
    c.id.clone()
        .or_else(|| c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string()))
        .unwrap_or_default()
}

#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
}

impl Engine {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and
    /// agrees on an API version: fog boxes often run engines older than bollard.
    pub async fn connect() -> Result<Engine, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(|e| RuntimeError::docker("connect to the Docker engine", e))?;
        let docker = docker.negotiate_version().await.map_err(|e| RuntimeError::docker("connect to the Docker engine", e))?;
        Ok(Engine { docker })
    }

    /// The engine's name and version, e.g. "docker 20.10.24".
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let v = self.docker.version().await.map_err(|e| RuntimeError::docker("query the Docker version", e))?;
        Ok(format!("docker {}", v.version.as_deref().unwrap_or("unknown")))
    }

    /// Every container (running or not) labelled with `node`.
    pub async fn list_owned(&self, node: &str) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={node}")])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        self.docker.list_containers(Some(opts)).await.map_err(|e| RuntimeError::docker("list containers", e))
    }

    /// Force-removes a container with its anonymous volumes; gone is fine.
    pub async fn remove(&self, handle: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.docker.remove_container(handle, Some(opts)).await {
            Err(e) if !is_not_found(&e) => Err(RuntimeError::docker(format!("remove container {handle}"), e)),
            _ => Ok(()),
        }
    }

    /// Stops a container (SIGTERM, then SIGKILL after the grace period).
    pub async fn stop(&self, handle: &str) -> Result<(), RuntimeError> {
        let opts = StopContainerOptionsBuilder::new().t(STOP_GRACE_SECS).build();
        match self.docker.stop_container(handle, Some(opts)).await {
            // 304: already stopped.
            Err(DockerError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) if !is_not_found(&e) => Err(RuntimeError::docker(format!("stop container {handle}"), e)),
            _ => Ok(()),
        }
    }

    pub async fn start(&self, handle: &str, name: &str) -> Result<(), RuntimeError> {
        self.docker.start_container(handle, None).await.map_err(|e| RuntimeError::docker(format!("start container {name}"), e))
    }

    /// Creates (does not start) a container; returns its id.
    pub async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, RuntimeError> {
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| RuntimeError::docker(format!("create container {name}"), e))?;
        for w in created.warnings.iter().filter(|w| !w.is_empty()) {
            tracing::warn!(container = %name, warning = %w, "docker warning");
        }
        Ok(created.id)
    }

    /// Whether the image is on this node.
    pub async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(RuntimeError::docker(format!("inspect image {image}"), e)),
        }
    }

    /// Why a stopped container stopped, for its status.
    pub async fn exit_reason(&self, handle: &str) -> String {
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
}

/// Pulls `image`, giving up after `PULL_TIMEOUT`; the error is the reason.
pub async fn pull_image(docker: Docker, image: String) -> Result<(), String> {
    let opts = CreateImageOptionsBuilder::new().from_image(&image_with_tag(&image)).build();
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
