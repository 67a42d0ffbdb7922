//! Container metrics from the Docker stats API under cAdvisor's names,
//! labelled so MiCADO queries match: `name`, `image`, `app`, `workload`,
//! `pod` and `container_label_io_kubernetes_pod_name` (WORKLOAD-REPLICA,
//! so `=~"WORKLOAD.*"` matches), and `node`.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, StatsOptionsBuilder};
use bollard::Docker;
use fogmesh_common::metrics::BatchSample;
use futures_util::StreamExt;

use super::sample;

pub async fn collect(docker: &Docker, node: &str, now: i64) -> Vec<BatchSample> {
    let filters = HashMap::from([("label", vec![format!("fogmesh.node={node}")]), ("status", vec!["running".to_string()])]);
    let opts = ListContainersOptionsBuilder::new().filters(&filters).build();
    let Ok(list) = docker.list_containers(Some(opts)).await else { return Vec::new() };
    // Docker takes about a second per stats call: ask for all at once.
    let per_container = list.into_iter().map(|c| one(docker, node, c, now));
    futures_util::future::join_all(per_container).await.into_iter().flatten().collect()
}

async fn one(docker: &Docker, node: &str, c: bollard::models::ContainerSummary, now: i64) -> Vec<BatchSample> {
    let mut out = Vec::new();
    let Some(id) = c.id.clone() else { return out };
    let labels = c.labels.clone().unwrap_or_default();
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let name = c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default();
    let image = c.image.clone().unwrap_or_default();
    let (app, workload, replica) = (get("fogmesh.app-name"), get("fogmesh.workload"), get("fogmesh.replica"));
    let pod = format!("{workload}-{replica}");
    let opts = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
    let Some(Ok(stats)) = docker.stats(&id, Some(opts)).next().await else { return out };
    let l = [
        ("name", name.as_str()),
        ("image", image.as_str()),
        ("app", app.as_str()),
        ("workload", workload.as_str()),
        ("pod", pod.as_str()),
        ("container_label_io_kubernetes_pod_name", pod.as_str()),
    ];
    if let Some(ns) = stats.cpu_stats.as_ref().and_then(|s| s.cpu_usage.as_ref()).and_then(|u| u.total_usage) {
        out.push(sample(node, "container_cpu_usage_seconds_total", &l, ns as f64 / 1e9, now));
    }
    if let Some(bytes) = stats.memory_stats.as_ref().and_then(|m| m.usage) {
        out.push(sample(node, "container_memory_usage_bytes", &l, bytes as f64, now));
    }
    if let Some(nets) = &stats.networks {
        let rx: u64 = nets.values().filter_map(|n| n.rx_bytes).sum();
        let tx: u64 = nets.values().filter_map(|n| n.tx_bytes).sum();
        out.push(sample(node, "container_network_receive_bytes_total", &l, rx as f64, now));
        out.push(sample(node, "container_network_transmit_bytes_total", &l, tx as f64, now));
    }
    out
}
