//! The Prometheus HTTP API on the master's API port, behind the same
//! bearer token as `/v1`: `/api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/NAME/values` (GET or
//! form POST, Prometheus's JSON shapes, so Grafana can use the master as a
//! Prometheus data source), and `/metrics` for the master's own metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fogmesh_common::metrics::{Labels, MatchOp, Matcher, Series, SeriesSource};
use fogmesh_common::promql::{self, ErrorKind, PromqlError, Value};
use serde_json::{json, Map};

use super::tsdb::now_ms;
use super::Metrics;

/// Longest a query may compute before it is abandoned.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default window of `/series` and `/labels` without `start`.
const DEFAULT_LOOKBACK_MS: i64 = 6 * 3600 * 1000;

pub fn router(metrics: Arc<Metrics>) -> Router {
    let queries = Router::new()
        .route("/api/v1/query", get(query).post(query_form))
        .route("/api/v1/query_range", get(query_range).post(query_range_form))
        .route("/api/v1/series", get(series).post(series_form))
        .route("/api/v1/labels", get(labels).post(labels_form))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route_layer(axum::middleware::from_fn_with_state(metrics.clone(), refuse_while_loading));
    queries.route("/metrics", get(own_metrics)).with_state(metrics)
}

/// 503 while the store replays its log: an answer from part of the data
/// would look like a true one (Prometheus does the same while it starts).
async fn refuse_while_loading(State(m): State<Arc<Metrics>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match m.tsdb.unavailable() {
        Some(why) => ApiError { status: StatusCode::SERVICE_UNAVAILABLE, kind: "unavailable", message: why }.into_response(),
        None => next.run(request).await,
    }
}

/// A Prometheus API error: `{"status":"error","errorType":..,"error":..}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn bad_data(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, kind: "bad_data", message: message.into() }
    }
}

impl From<PromqlError> for ApiError {
    fn from(e: PromqlError) -> ApiError {
        match e.kind() {
            ErrorKind::Parse | ErrorKind::Unsupported | ErrorKind::Limit => ApiError::bad_data(e.to_string()),
            _ => ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, kind: "execution", message: e.to_string() },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"status": "error", "errorType": self.kind, "error": self.message}))).into_response()
    }
}

type ApiResult = Result<Json<serde_json::Value>, ApiError>;

fn success(data: serde_json::Value) -> ApiResult {
    Ok(Json(json!({"status": "success", "data": data})))
}

/// Request parameters from the query string and a form body; repeated
/// names (`match[]`) keep every value.
struct Params(Vec<(String, String)>);

impl Params {
    fn from(query: Option<String>, body: Option<&[u8]>) -> Params {
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            pairs.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        if let Some(b) = body {
            pairs.extend(form_urlencoded::parse(b).into_owned());
        }
        Params(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| ApiError::bad_data(format!("missing parameter {name:?}")))
    }

    /// A time: unix seconds (fractions allowed) or RFC 3339.
    fn time(&self, name: &str, default_ms: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(default_ms),
            Some(text) => parse_time(text).ok_or_else(|| ApiError::bad_data(format!("invalid parameter {name:?}: {text:?} is neither unix seconds nor an RFC 3339 time"))),
        }
    }

    /// Label matchers from `match[]` selectors (series matching any one).
    fn selectors(&self) -> Result<Vec<Vec<Matcher>>, ApiError> {
        self.all("match[]").into_iter().map(selector_matchers).collect()
    }
}

pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds.is_finite().then(|| (seconds * 1000.0).round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

/// A step: seconds (fractions allowed) or a PromQL duration (`15s`, `1m`).
fn parse_step(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds > 0.0).then(|| (seconds * 1000.0).round().max(1.0) as i64);
    }
    promql_parser::util::duration::parse_duration(text).ok().map(|d| d.as_millis() as i64).filter(|ms| *ms > 0)
}

/// The matchers of a series selector such as `up{job="node"}`.
fn selector_matchers(selector: &str) -> Result<Vec<Matcher>, ApiError> {
    let expr = promql::parse(selector).map_err(|e| ApiError::bad_data(format!("invalid match[] {selector:?}: {e}")))?;
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
        return Err(ApiError::bad_data(format!("match[] {selector:?} must be a series selector such as up{{job=\"node\"}}")));
    };
    let mut out = Vec::new();
    if let Some(name) = &vs.name {
        out.push(Matcher::new("__name__", MatchOp::Equal, name).map_err(ApiError::bad_data)?);
    }
    for m in &vs.matchers.matchers {
        let op = match &m.op {
            promql_parser::label::MatchOp::Equal => MatchOp::Equal,
            promql_parser::label::MatchOp::NotEqual => MatchOp::NotEqual,
            promql_parser::label::MatchOp::Re(_) => MatchOp::Regex,
            promql_parser::label::MatchOp::NotRe(_) => MatchOp::NotRegex,
        };
        out.push(Matcher::new(&m.name, op, &m.value).map_err(ApiError::bad_data)?);
    }
    Ok(out)
}

async fn query(State(m): State<Arc<Metrics>>, RawQuery(q): RawQuery) -> ApiResult {
    run_query(m, Params::from(q, None)).await
}

async fn query_form(State(m): State<Arc<Metrics>>, RawQuery(q): RawQuery, body: Bytes) -> ApiResult {
    run_query(m, Params::from(q, Some(&body))).await
}

async fn run_query(m: Arc<Metrics>, p: Params) -> ApiResult {
    let text = p.required("query")?.to_string();
    let at = p.time("time", now_ms())?;
    let value = evaluate(move || promql::instant(m.tsdb.as_ref(), &text, at)).await?;
    let kind = value.result_type();
    let result = match value {
        Value::Scalar(v) => json!([at as f64 / 1000.0, format_value(v)]),
        Value::String(s) => json!([at as f64 / 1000.0, s]),
        Value::Vector(samples) => samples
            .iter()
            .map(|s| json!({"metric": labels_json(&s.labels), "value": [at as f64 / 1000.0, format_value(s.value)]}))
            .collect(),
        Value::Matrix(series) => matrix_json(&series),
    };
    success(json!({"resultType": kind, "result": result}))
}

async fn query_range(State(m): State<Arc<Metrics>>, RawQuery(q): RawQuery) -> ApiResult {
    run_range(m, Params::from(q, None)).await
}

async fn query_range_form(State(m): State<Arc<Metrics>>, RawQuery(q): RawQuery, body: Bytes) -> ApiResult {
    run_range(m, Params::from(q, Some(&body))).await
}

async fn run_range(m: Arc<Metrics>, p: Params) -> ApiResult {
    let text = p.required("query")?.to_string();
    let start = p.time("start", i64::MIN).and_then(|t| if t == i64::MIN { Err(ApiError::bad_data("missing parameter \"start\"")) } else { Ok(t) })?;
    let end = p.time("end", i64::MIN).and_then(|t| if t == i64::MIN { Err(ApiError::bad_data("missing parameter \"end\"")) } else { Ok(t) })?;
    let step_text = p.required("step")?;
    let step = parse_step(step_text).ok_or_else(|| ApiError::bad_data(format!("invalid parameter \"step\": {step_text:?} is not a positive duration")))?;
    let series = evaluate(move || promql::range(m.tsdb.as_ref(), &text, start, end, step)).await?;
    success(json!({"resultType": "matrix", "result": matrix_json(&series)}))
}

/// Runs a query off the async threads, with a time limit.
async fn evaluate<T: Send + 'static>(work: impl FnOnce() -> Result<T, PromqlError> + Send + 'static) -> Result<T, ApiError> {
    match tokio::time::timeout(QUERY_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result.map_err(ApiError::from),
        Ok(Err(e)) => Err(ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, kind: "internal", message: format!("query failed: {e}") }),
        Err(_) => Err(ApiError { status: StatusCode::SERVICE_UNAVAILABLE, kind: "timeout", message: format!("query took longer than {QUERY_TIMEOUT:?}") }),
    }
}

/// A value as Prometheus's JSON writes it (`"+Inf"`, `"NaN"`, `"0.5"`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

fn labels_json(labels: &Labels) -> serde_json::Value {
    serde_json::Value::Object(labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<_, _>>())
}

fn matrix_json(series: &[Series]) -> serde_json::Value {
    series
        .iter()
        .map(|s| {
            let values: Vec<_> = s.samples.iter().map(|p| json!([p.ts_ms as f64 / 1000.0, format_value(p.value)])).collect();
            json!({"metric": labels_json(&s.labels), "values": values})
        })
        .collect()
}

async fn series(State(m): State<Arc<Metrics>>, RawQuery(q): RawQuery) -> ApiResult {
    run_series(m, Params::from(q, None))
}

async fn series_form(State(m): State<Arc<Metrics>>, RawQuery(q): RawQuery, body: Bytes) -> ApiResult {
    run_series(m, Params::from(q, Some(&body)))
}

fn run_series(m: Arc<Metrics>, p: Params) -> ApiResult {
    let selectors = p.selectors()?;
    if selectors.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let now = now_ms();
    let (start, end) = (p.time("start", now - DEFAULT_LOOKBACK_MS)?, p.time("end", now)?);
    let mut found: Vec<Labels> = selectors.iter().flat_map(|ms| m.tsdb.series_labels(ms, start, end)).collect();
    found.sort();
    found.dedup();
    success(found.iter().map(labels_json).collect())
}

async fn labels(State(m): State<Arc<Metrics>>, RawQuery(q): RawQuery) -> ApiResult {
    run_labels(m, Params::from(q, None))
}

async fn labels_form(State(m): State<Arc<Metrics>>, RawQuery(q): RawQuery, body: Bytes) -> ApiResult {
    run_labels(m, Params::from(q, Some(&body)))
}

fn run_labels(m: Arc<Metrics>, p: Params) -> ApiResult {
    let selectors = p.selectors()?;
    let mut names: Vec<String> = if selectors.is_empty() {
        m.tsdb.label_names(&[])
    } else {
        selectors.iter().flat_map(|ms| m.tsdb.label_names(ms)).collect()
    };
    names.sort();
    names.dedup();
    success(json!(names))
}

async fn label_values(State(m): State<Arc<Metrics>>, Path(name): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let p = Params::from(q, None);
    let selectors = p.selectors()?;
    let mut values: Vec<String> = if selectors.is_empty() {
        m.tsdb.label_values(&name, &[])
    } else {
        selectors.iter().flat_map(|ms| m.tsdb.label_values(&name, ms)).collect()
    };
    values.sort();
    values.dedup();
    success(json!(values))
}

async fn own_metrics(State(m): State<Arc<Metrics>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], super::own::render(&m)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps_parse_as_prometheus_accepts_them() {
        assert_eq!(parse_time("1700000000.5"), Some(1_700_000_000_500));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_step("15"), Some(15_000));
        assert_eq!(parse_step("1m"), Some(60_000));
        assert_eq!(parse_step("0"), None);
        assert_eq!(parse_step("-5s"), None);
        assert_eq!((format_value(0.5), format_value(f64::NAN), format_value(f64::NEG_INFINITY), format_value(3.0)), ("0.5".into(), "NaN".into(), "-Inf".into(), "3".into()));
    }

    #[test]
    fn series_selectors_become_matchers() {
        let ms = selector_matchers("up{job=~\"n.*\",node!=\"a\"}").unwrap();
        assert_eq!(ms.len(), 3);
        assert!(ms[1].matches(&Labels::metric("up", &[("job", "node"), ("node", "b")])));
        assert!(selector_matchers("rate(up[1m])").unwrap_err().message.contains("series selector"));
    }
}
