//! Liveness and readiness probes from the ADT, run by the agent against its
//! containers: exec inside the container, HTTP GET or a TCP connect to the
//! container's address. One task per running container; results are read
//! by the reconciler's passes, and a change wakes the reconcile loop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use fogmesh_common::wire::{ContainerSpec, Probe, ProbeAction};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What the probes of one container found so far.
#[derive(Clone, Debug, Default)]
struct Results {
    /// Set once the liveness probe failed `failure_threshold` times in a row.
    liveness_failure: Option<String>,
    ready: bool,
}

struct Watch {
    task: JoinHandle<()>,
    results: Arc<Mutex<Results>>,
    touched: bool,
}

pub struct Prober {
    docker: Docker,
    wake: Arc<Notify>,
    /// By container id.
    watches: HashMap<String, Watch>,
}

impl Prober {
    pub fn new(docker: Docker, wake: Arc<Notify>) -> Prober {
        Prober { docker, wake, watches: HashMap::new() }
    }

    pub fn begin_pass(&mut self) {
        for w in self.watches.values_mut() {
            w.touched = false;
        }
    }

    /// Stops probing containers no pass asked about since `begin_pass`.
    pub fn end_pass(&mut self) {
        self.watches.retain(|_, w| {
            if !w.touched {
                w.task.abort();
            }
            w.touched
        });
    }

    /// Keeps the container's probes running; returns its readiness (`None`
    /// when it has no readiness probe).
    pub fn watch(&mut self, id: &str, spec: &ContainerSpec) -> Option<bool> {
        if spec.liveness.is_none() && spec.readiness.is_none() {
            return None;
        }
        let watch = self.watches.entry(id.to_string()).or_insert_with(|| {
            let results = Arc::new(Mutex::new(Results::default()));
            let task = tokio::spawn(run_probes(self.docker.clone(), id.to_string(), spec.clone(), results.clone(), self.wake.clone()));
            Watch { task, results, touched: true }
        });
        watch.touched = true;
        spec.readiness.as_ref().map(|_| lock(&watch.results).ready)
    }

    /// Why the liveness probe says the container must be restarted.
    pub fn liveness_failure(&self, id: &str, spec: &ContainerSpec) -> Option<String> {
        spec.liveness.as_ref()?;
        lock(&self.watches.get(id)?.results).liveness_failure.clone()
    }

    /// Drops a container's probe state (it is being restarted).
    pub fn forget(&mut self, id: &str) {
        if let Some(w) = self.watches.remove(id) {
            w.task.abort();
        }
    }
}

fn lock(m: &Mutex<Results>) -> std::sync::MutexGuard<'_, Results> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run_probes(docker: Docker, id: String, spec: ContainerSpec, results: Arc<Mutex<Results>>, wake: Arc<Notify>) {
    let address = container_address(&docker, &id, spec.host_network).await;
    let target = Target { docker, id, address };
    let liveness = async {
        if let Some(p) = &spec.liveness {
            probe_loop(&target, p, |passing, detail| {
                let mut r = lock(&results);
                let failure = (!passing).then(|| format!("liveness probe failed {} times: {detail}", p.failure_threshold));
                if r.liveness_failure != failure {
                    r.liveness_failure = failure;
                    wake.notify_one();
                }
            })
            .await;
        }
    };
    let readiness = async {
        if let Some(p) = &spec.readiness {
            probe_loop(&target, p, |passing, _| {
                let mut r = lock(&results);
                if r.ready != passing {
                    r.ready = passing;
                    wake.notify_one();
                }
            })
            .await;
        }
    };
    tokio::join!(liveness, readiness);
}

/// Runs one probe forever; `report(passing, detail)` is called whenever the
/// thresholds are crossed (and with the first verdict).
async fn probe_loop(target: &Target, probe: &Probe, mut report: impl FnMut(bool, &str)) {
    tokio::time::sleep(Duration::from_millis(probe.initial_delay_ms)).await;
    let period = Duration::from_millis(probe.period_ms.max(100));
    let timeout = Duration::from_millis(probe.timeout_ms.max(100));
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut verdict: Option<bool> = None;
    loop {
        let outcome = match tokio::time::timeout(timeout, target.check(&probe.action)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match &outcome {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if successes >= probe.success_threshold.max(1) && verdict != Some(true) {
                    verdict = Some(true);
                    report(true, "passing");
                }
            }
            Err(detail) => {
                failures += 1;
                successes = 0;
                if failures >= probe.failure_threshold.max(1) && verdict != Some(false) {
                    verdict = Some(false);
                    report(false, detail);
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

struct Target {
    docker: Docker,
    id: String,
    address: IpAddr,
}

impl Target {
    async fn check(&self, action: &ProbeAction) -> Result<(), String> {
        match action {
            ProbeAction::Tcp { port } => tokio::net::TcpStream::connect(SocketAddr::new(self.address, *port))
                .await
                .map(|_| ())
                .map_err(|e| format!("TCP connect to port {port}: {e}")),
            ProbeAction::Http { port, path } => http_get(SocketAddr::new(self.address, *port), path).await,
            ProbeAction::Exec(command) => self.exec(command).await,
        }
    }

    async fn exec(&self, command: &[String]) -> Result<(), String> {
        let opts = CreateExecOptions { cmd: Some(command.to_vec()), attach_stdout: Some(true), attach_stderr: Some(true), ..Default::default() };
        let exec = self.docker.create_exec(&self.id, opts).await.map_err(|e| format!("exec {command:?}: {e}"))?;
        if let StartExecResults::Attached { mut output, .. } = self.docker.start_exec(&exec.id, None).await.map_err(|e| format!("exec {command:?}: {e}"))? {
            while output.next().await.is_some() {}
        }
        let inspect = self.docker.inspect_exec(&exec.id).await.map_err(|e| format!("exec {command:?}: {e}"))?;
        match inspect.exit_code {
            Some(0) => Ok(()),
            code => Err(format!("exec {command:?} exited with {}", code.map_or("?".to_string(), |c| c.to_string()))),
        }
    }
}

/// GET `path`; 200-399 passes.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("HTTP GET {path} on {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP GET {path} on {addr}: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("HTTP GET {path}: {e}"))?;
    let result = sender.send_request(request).await;
    driver.abort();
    let response = result.map_err(|e| format!("HTTP GET {path} on {addr}: {e}"))?;
    let status = response.status().as_u16();
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP GET {path} answered {status}"))
    }
}

/// Where probes reach the container: its bridge address, or loopback when
/// it shares the node's network.
async fn container_address(docker: &Docker, id: &str, host_network: bool) -> IpAddr {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if host_network {
        return loopback;
    }
    let Ok(info) = docker.inspect_container(id, None).await else { return loopback };
    let settings = info.network_settings.unwrap_or_default();
    settings
        .networks
        .unwrap_or_default()
        .into_values()
        .filter_map(|n| n.ip_address)
        .find(|ip| !ip.is_empty())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(loopback)
}
