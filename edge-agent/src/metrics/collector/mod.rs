//! What the agent measures each interval, under the names existing MiCADO
//! queries use: node metrics as node-exporter names them, container
//! metrics as cAdvisor names them, the exporters a policy lists as
//! `sources`, and the agent's own metrics. Every sample carries `node` and
//! `instance` labels naming the fog node.

mod containers;
mod node;
mod scrape;

use bollard::Docker;
use fogmesh_common::metrics::{BatchSample, Labels};
use fogmesh_common::wire::ScrapeTarget;

pub use node::NodeCollector;

/// Everything measured in one interval.
pub struct Collector {
    node: String,
    docker: Option<Docker>,
    host: HostSource,
}

/// Where node metrics come from.
enum HostSource {
    /// This machine, through sysinfo.
    Real(Box<NodeCollector>),
    /// Made up (a simulated fleet): a few node-exporter series that move.
    Synthetic { collections: u64 },
}

impl Collector {
    pub fn new(node: &str, docker: Option<Docker>) -> Collector {
        Collector { node: node.to_string(), docker, host: HostSource::Real(Box::default()) }
    }

    /// A collector of made-up node metrics, for simulated nodes.
    pub fn synthetic(node: &str) -> Collector {
        Collector { node: node.to_string(), docker: None, host: HostSource::Synthetic { collections: 0 } }
    }

    /// One interval's samples, all stamped `now_ms`.
    pub async fn collect(&mut self, scrapes: &[ScrapeTarget], now_ms: i64) -> Vec<BatchSample> {
        let mut out = match &mut self.host {
            HostSource::Real(host) => host.collect(&self.node, now_ms),
            HostSource::Synthetic { collections } => {
                *collections += 1;
                synthetic(&self.node, *collections, now_ms)
            }
        };
        if let Some(docker) = &self.docker {
            out.extend(containers::collect(docker, &self.node, now_ms).await);
        }
        for target in scrapes {
            out.extend(scrape::collect(docker_ref(&self.docker), &self.node, target, now_ms).await);
        }
        out
    }
}

/// Twenty node-exporter-like series: CPU counters per mode and core that
/// grow, load and memory that wander.
fn synthetic(node: &str, n: u64, now_ms: i64) -> Vec<BatchSample> {
    let wave = ((n % 40) as f64 / 40.0 * std::f64::consts::TAU).sin();
    let mut out = Vec::with_capacity(20);
    for cpu in ["0", "1"] {
        for (mode, share) in [("user", 0.3), ("system", 0.1), ("idle", 0.55), ("iowait", 0.05)] {
            out.push(sample(node, "node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)], n as f64 * 15.0 * share, now_ms));
        }
    }
    for (name, value) in [("node_load1", 0.5 + 0.4 * wave), ("node_load5", 0.5 + 0.2 * wave), ("node_load15", 0.5 + 0.1 * wave)] {
        out.push(sample(node, name, &[], value, now_ms));
    }
    out.push(sample(node, "node_memory_MemTotal_bytes", &[], 1_073_741_824.0, now_ms));
    out.push(sample(node, "node_memory_MemAvailable_bytes", &[], 600_000_000.0 + 100_000_000.0 * wave, now_ms));
    for (name, rate) in [("node_network_receive_bytes_total", 20_000.0), ("node_network_transmit_bytes_total", 5_000.0)] {
        out.push(sample(node, name, &[("device", "eth0")], n as f64 * 15.0 * rate, now_ms));
    }
    out.push(sample(node, "node_filesystem_avail_bytes", &[("mountpoint", "/")], 4e9, now_ms));
    out.push(sample(node, "node_filesystem_size_bytes", &[("mountpoint", "/")], 8e9, now_ms));
    out
}

fn docker_ref(d: &Option<Docker>) -> Option<&Docker> {
    d.as_ref()
}

/// A sample named `name` with `pairs` plus the node labels.
pub fn sample(node: &str, name: &str, pairs: &[(&str, &str)], value: f64, ts_ms: i64) -> BatchSample {
    let mut all: Vec<(&str, &str)> = pairs.to_vec();
    all.push(("node", node));
    all.push(("instance", node));
    BatchSample { labels: Labels::metric(name, &all), value, ts_ms }
}
