//! Prometheus exporters a policy lists as `sources`, scraped by the agent of
//! the node they run on; the text exposition format is parsed with the
//! `prometheus-parse` crate.

use std::time::Duration;

use bollard::Docker;
use fogmesh_common::metrics::{BatchSample, Labels};
use fogmesh_common::wire::{ScrapeAddress, ScrapeTarget};

/// Longest a scrape may take; a slow exporter must not hold up the batch.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest exposition accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

pub async fn collect(docker: Option<&Docker>, node: &str, target: &ScrapeTarget, now: i64) -> Vec<BatchSample> {
    let address = match &target.address {
        ScrapeAddress::Host(addr) => addr.clone(),
        ScrapeAddress::Local { port } => format!("127.0.0.1:{port}"),
        ScrapeAddress::Container { key, port } => match container_ip(docker, node, key).await {
            Some(ip) => format!("{ip}:{port}"),
            None => return vec![up(node, target, 0.0, now)],
        },
    };
    let body = match tokio::time::timeout(SCRAPE_TIMEOUT, fetch(&address, &target.path)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            tracing::debug!(source = %target.source, %address, error = %e, "scrape failed");
            return vec![up(node, target, 0.0, now)];
        }
        Err(_) => return vec![up(node, target, 0.0, now)],
    };
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        tracing::debug!(source = %target.source, "exposition does not parse");
        return vec![up(node, target, 0.0, now)];
    };
    let mut out = vec![up(node, target, 1.0, now)];
    for s in scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            // Histograms and summaries arrive as their `_bucket`/`_sum`/`_count` lines.
            _ => continue,
        };
        let mut pairs: Vec<(String, String)> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        pairs.push(("__name__".into(), s.metric.clone()));
        pairs.push(("job".into(), target.source.clone()));
        pairs.push(("instance".into(), target.source.clone()));
        pairs.push(("node".into(), node.into()));
        out.push(BatchSample { labels: Labels::new(pairs), value, ts_ms: now });
    }
    out
}

/// `up{job, instance}`: whether the exporter answered, as Prometheus records it.
fn up(node: &str, target: &ScrapeTarget, value: f64, now: i64) -> BatchSample {
    BatchSample { labels: Labels::metric("up", &[("job", &target.source), ("instance", &target.source), ("node", node)]), value, ts_ms: now }
}

async fn container_ip(docker: Option<&Docker>, node: &str, key: &str) -> Option<String> {
    let docker = docker?;
    let filters = std::collections::HashMap::from([("label", vec![format!("fogmesh.node={node}"), format!("fogmesh.name={key}")]), ("status", vec!["running".to_string()])]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::new().filters(&filters).build();
    let c = docker.list_containers(Some(opts)).await.ok()?.into_iter().next()?;
    let nets = c.network_settings?.networks?;
    nets.into_values().filter_map(|n| n.ip_address).find(|ip| !ip.is_empty()).or(Some("127.0.0.1".into()))
}

async fn fetch(address: &str, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect {address}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY);
        let bytes = http_body_util::BodyExt::collect(body).await.map_err(|e| e.to_string())?.to_bytes();
        String::from_utf8(bytes.to_vec()).map_err(|_| "exposition is not UTF-8".to_string())
    }
    .await;
    driver.abort();
    result
}
