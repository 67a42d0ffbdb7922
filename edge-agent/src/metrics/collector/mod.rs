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
    host: NodeCollector,
}

impl Collector {
    pub fn new(node: &str, docker: Option<Docker>) -> Collector {
        Collector { node: node.to_string(), docker, host: NodeCollector::new() }
    }

    /// One interval's samples, all stamped `now_ms`.
    pub async fn collect(&mut self, scrapes: &[ScrapeTarget], now_ms: i64) -> Vec<BatchSample> {
        let mut out = self.host.collect(&self.node, now_ms);
        if let Some(docker) = &self.docker {
            out.extend(containers::collect(docker, &self.node, now_ms).await);
        }
        for target in scrapes {
            out.extend(scrape::collect(docker_ref(&self.docker), &self.node, target, now_ms).await);
        }
        out
    }
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
