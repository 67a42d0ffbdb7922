//! The master's own metrics, in the Prometheus text format (`/metrics`):
//! what ingest took and refused, the store's size, remote write.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::Metrics;

pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    let c = &m.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(&mut out, "fogmesh_ingest_batches_total", "Metric batches stored and acknowledged.", &[("", load(&c.batches))]);
    counter(&mut out, "fogmesh_ingest_samples_total", "Samples stored.", &[("", load(&c.samples))]);
    counter(
        &mut out,
        "fogmesh_ingest_refused_total",
        "Batches refused, by reason.",
        &[
            ("reason=\"forged\"", load(&c.refused_forged)),
            ("reason=\"unknown_node\"", load(&c.refused_unknown_node)),
            ("reason=\"malformed\"", load(&c.refused_malformed)),
        ],
    );
    let refused = c.refused_samples();
    let _ = writeln!(
        out,
        "# HELP fogmesh_ingest_refused_samples_total Samples refused from stored batches, by node and reason (series_limit: a new series past --max-series-per-node; future: stamped over 10 min ahead).\n# TYPE fogmesh_ingest_refused_samples_total counter"
    );
    for (node, r) in &refused {
        let node = label_value(node);
        let _ = writeln!(out, "fogmesh_ingest_refused_samples_total{{node=\"{node}\",reason=\"series_limit\"}} {}", r.series_limit);
        let _ = writeln!(out, "fogmesh_ingest_refused_samples_total{{node=\"{node}\",reason=\"future\"}} {}", r.future);
    }
    gauge(&mut out, "fogmesh_tsdb_max_series_per_node", "Series a node may have in the store (--max-series-per-node).", m.tsdb.max_series_per_node() as f64);
    if let Some(g) = &m.gate {
        counter(
            &mut out,
            "fogmesh_mqtt_refused_total",
            "MQTT connections the embedded broker's door refused or closed, by reason.",
            &[
                ("reason=\"certificate\"", load(&g.refused_certificate)),
                ("reason=\"connect\"", load(&g.refused_connect)),
                ("reason=\"packet\"", load(&g.refused_packet)),
                ("reason=\"revoked\"", load(&g.closed_revoked)),
            ],
        );
    }
    counter(&mut out, "fogmesh_ingest_store_errors_total", "Batches that could not be stored (the agent resends them).", &[("", load(&c.store_errors))]);
    let stats = m.tsdb.stats();
    gauge(&mut out, "fogmesh_tsdb_series", "Series in the store.", stats.series as f64);
    gauge(&mut out, "fogmesh_tsdb_samples", "Samples in the store.", stats.samples as f64);
    gauge(&mut out, "fogmesh_tsdb_memory_bytes", "Bytes the stored samples take in memory (compressed chunks).", stats.bytes as f64);
    if let Some(r) = &m.remote {
        let rc = &r.counters;
        counter(&mut out, "fogmesh_remote_write_samples_total", "Samples the remote store accepted.", &[("", load(&rc.sent_samples))]);
        counter(&mut out, "fogmesh_remote_write_failed_requests_total", "Remote-write requests that failed and were retried.", &[("", load(&rc.failed_requests))]);
        counter(&mut out, "fogmesh_remote_write_dropped_samples_total", "Samples dropped: refused by the store or over the queue's cap.", &[("", load(&rc.dropped_samples))]);
        gauge(&mut out, "fogmesh_remote_write_queued_samples", "Samples waiting to be sent.", r.queued() as f64);
    }
    if let Some(cluster) = &m.cluster {
        scaling_gauges(&mut out, cluster);
    }
    out
}

/// What each scaling policy's target has now: replicas of a workload, or
/// the members a node set should have (what `--node-set-hook` is told).
fn scaling_gauges(out: &mut String, cluster: &crate::cluster::Cluster) {
    let Ok(apps) = cluster.store.apps() else { return };
    let _ = writeln!(out, "# HELP fogmesh_scaling_target_count Replicas (workload) or members (node set) a scaling policy's target has now.\n# TYPE fogmesh_scaling_target_count gauge");
    for app in &apps {
        let state = cluster.store.scaling(&app.id).unwrap_or_default();
        for view in crate::policy_keeper::policy_views(app, &state, cluster.config.scaling_period) {
            let kind = if app.plan.workload(&view.target).is_some() { "workload" } else { "node_set" };
            let _ = writeln!(
                out,
                "fogmesh_scaling_target_count{{app={:?},policy={:?},target={:?},kind=\"{kind}\"}} {}",
                app.name, view.policy, view.target, view.current
            );
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}
