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
    // Replicas of one workload share the source's name: each container is
    // its own `instance`, as Prometheus names each scraped endpoint.
    let (address, instance) = match &target.address {
        ScrapeAddress::Host(addr) => (addr.clone(), target.source.clone()),
        ScrapeAddress::Local { port } => (format!("127.0.0.1:{port}"), target.source.clone()),
        ScrapeAddress::Container { key, port } => match container_ip(docker, node, key).await {
            Some(ip) => (format!("{ip}:{port}"), key.clone()),
            None => return vec![up(node, target, key, 0.0, now)],
        },
    };
    let body = match tokio::time::timeout(SCRAPE_TIMEOUT, fetch(&address, &target.path)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            tracing::debug!(source = %target.source, %address, error = %e, "scrape failed");
            return vec![up(node, target, &instance, 0.0, now)];
        }
        Err(_) => return vec![up(node, target, &instance, 0.0, now)],
    };
    match samples_of(&body, node, target, &instance, now) {
        Some(samples) => samples,
        None => {
            tracing::debug!(source = %target.source, "exposition does not parse");
            vec![up(node, target, &instance, 0.0, now)]
        }
    }
}

/// The samples of one exposition, with `job`, `instance` and `node` added.
/// Histograms and summaries become their `_bucket{le}` and `{quantile}`
/// series (the parser groups them; `_sum`/`_count` come as plain lines).
fn samples_of(body: &str, node: &str, target: &ScrapeTarget, instance: &str, now: i64) -> Option<Vec<BatchSample>> {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()?;
    let mut out = vec![up(node, target, instance, 1.0, now)];
    let mut push = |name: String, labels: &prometheus_parse::Labels, extra: Option<(&str, String)>, value: f64| {
        let mut pairs: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        pairs.extend(extra.map(|(k, v)| (k.to_string(), v)));
        pairs.push(("__name__".into(), name));
        pairs.push(("job".into(), target.source.clone()));
        pairs.push(("instance".into(), instance.to_string()));
        pairs.push(("node".into(), node.into()));
        out.push(BatchSample { labels: Labels::new(pairs), value, ts_ms: now });
    };
    for s in scrape.samples {
        match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => push(s.metric.clone(), &s.labels, None, v),
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    push(format!("{}_bucket", s.metric), &s.labels, Some(("le", bound(b.less_than))), b.count);
                }
            }
            prometheus_parse::Value::Summary(quantiles) => {
                for q in quantiles {
                    push(s.metric.clone(), &s.labels, Some(("quantile", bound(q.quantile))), q.count);
                }
            }
        }
    }
    Some(out)
}

/// A bucket bound as Prometheus writes it.
fn bound(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else {
        v.to_string()
    }
}

/// `up{job, instance}`: whether the exporter answered, as Prometheus records it.
fn up(node: &str, target: &ScrapeTarget, instance: &str, value: f64, now: i64) -> BatchSample {
    BatchSample { labels: Labels::metric("up", &[("job", &target.source), ("instance", instance), ("node", node)]), value, ts_ms: now }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_arrive_as_buckets_and_each_container_is_its_own_instance() {
        let body = "# TYPE detection_seconds histogram\ndetection_seconds_bucket{le=\"0.1\"} 2\ndetection_seconds_bucket{le=\"+Inf\"} 5\ndetection_seconds_sum 1.5\ndetection_seconds_count 5\n# TYPE frames counter\nframes_total 5\n";
        let target = ScrapeTarget { source: "det:9101".into(), address: ScrapeAddress::Container { key: "a.det.2".into(), port: 9101 }, path: "/metrics".into() };
        let samples = samples_of(body, "fog", &target, "a.det.2", 7).unwrap();
        let find = |name: &str, le: Option<&str>| {
            samples
                .iter()
                .find(|s| s.labels.get("__name__") == Some(name) && s.labels.get("le") == le)
                .map(|s| (s.value, s.labels.get("instance").unwrap_or_default().to_string()))
        };
        assert_eq!(find("detection_seconds_bucket", Some("0.1")), Some((2.0, "a.det.2".into())));
        assert_eq!(find("detection_seconds_bucket", Some("+Inf")), Some((5.0, "a.det.2".into())));
        assert_eq!(find("detection_seconds_count", None).map(|s| s.0), Some(5.0));
        assert_eq!(find("frames_total", None).map(|s| s.0), Some(5.0));
        assert_eq!(find("up", None).map(|s| s.0), Some(1.0));
    }
}
