//! `fogmesh metrics query`: PromQL against the master's store, as a table
//! or as the Prometheus API's JSON.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::Value;

use super::client::Client;
use super::{duration_arg, table, Format};

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Evaluate a PromQL expression now, or over the last --range.
    Query {
        /// The expression, e.g. 'rate(container_cpu_usage_seconds_total{app="demo"}[1m])'.
        expr: String,
        /// Evaluate over this much of the recent past (a range query) instead of now.
        #[arg(long, value_parser = duration_arg)]
        range: Option<Duration>,
        /// Step of a range query (default: the range / 60, at least 1s).
        #[arg(long, value_parser = duration_arg)]
        step: Option<Duration>,
        /// Output: an aligned table, or the Prometheus API's JSON `data`.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub async fn run(client: &Client, command: MetricsCommand) -> Result<()> {
    let MetricsCommand::Query { expr, range, step, format } = command;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let answer: Value = match range {
        None => client.post_form("/api/v1/query", &[("query", expr.clone()), ("time", format!("{now:.3}"))]).await?,
        Some(range) => {
            let step = step.unwrap_or_else(|| (range / 60).max(Duration::from_secs(1)));
            let form = [
                ("query", expr.clone()),
                ("start", format!("{:.3}", now - range.as_secs_f64())),
                ("end", format!("{now:.3}")),
                ("step", format!("{}", step.as_secs_f64())),
            ];
            client.post_form("/api/v1/query_range", &form).await?
        }
    };
    let Some(data) = answer.get("data") else { bail!("the master's answer has no data: {answer}") };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(data)?);
        return Ok(());
    }
    let kind = data.get("resultType").and_then(Value::as_str).unwrap_or("");
    let result = data.get("result").cloned().unwrap_or(Value::Null);
    match kind {
        "scalar" | "string" => println!("{}", result.get(1).and_then(Value::as_str).unwrap_or("")),
        "vector" => {
            let rows: Vec<Vec<String>> = items(&result).iter().map(|s| vec![series_name(s), point(s.get("value")).1]).collect();
            print_rows(&["SERIES", "VALUE"], rows);
        }
        "matrix" => {
            let rows: Vec<Vec<String>> = items(&result)
                .iter()
                .map(|s| {
                    let points: Vec<(f64, String)> = s.get("values").and_then(Value::as_array).map(|v| v.iter().map(|p| point(Some(p))).collect()).unwrap_or_default();
                    let numbers: Vec<f64> = points.iter().filter_map(|(_, v)| v.parse::<f64>().ok()).collect();
                    let min = numbers.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let last = points.last().map(|(_, v)| v.clone()).unwrap_or_default();
                    vec![series_name(s), points.len().to_string(), last, fmt(min), fmt(max)]
                })
                .collect();
            print_rows(&["SERIES", "POINTS", "LAST", "MIN", "MAX"], rows);
        }
        other => bail!("unexpected result type {other:?}"),
    }
    Ok(())
}

fn items(result: &Value) -> Vec<Value> {
    result.as_array().cloned().unwrap_or_default()
}

fn print_rows(header: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        eprintln!("no series (the query is valid; nothing matching has been reported in the window)");
        return;
    }
    print!("{}", table::render(header, &rows));
}

/// `name{a="1",...}` from a result's `metric` object.
fn series_name(s: &Value) -> String {
    let Some(metric) = s.get("metric").and_then(Value::as_object) else { return "{}".into() };
    let name = metric.get("__name__").and_then(Value::as_str).unwrap_or("");
    let labels: Vec<String> = metric.iter().filter(|(k, _)| *k != "__name__").map(|(k, v)| format!("{k}={}", v)).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// `[time, "value"]` as (time, value text).
fn point(p: Option<&Value>) -> (f64, String) {
    let t = p.and_then(|p| p.get(0)).and_then(Value::as_f64).unwrap_or(0.0);
    let v = p.and_then(|p| p.get(1)).and_then(Value::as_str).unwrap_or("").to_string();
    (t, v)
}

fn fmt(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "-".into()
    }
}
