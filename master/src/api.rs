//! The REST API (`/v1/...`), behind a bearer token. Bodies are JSON and
//! size-limited; every error is `{"error": ..., "problems": [...]}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fogmesh_common::pki::{constant_time_eq, hash_secret};

use crate::cluster::Cluster;
use crate::failure::Failure;
use crate::model::{ApiError, CreateToken, DeclareNode, SubmitApp};
use serde::Deserialize;

/// Largest request body: an ADT (1 MiB) plus JSON escaping.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Store key of the admin token's hash.
pub const ADMIN_TOKEN_KEY: &str = "admin_token_sha256";

pub fn router(cluster: Arc<Cluster>) -> Router {
    let v1 = Router::new()
        .route("/tokens", post(create_token))
        .route("/nodes", get(list_nodes).post(declare_node))
        .route("/nodes/{name}", delete(remove_node))
        .route("/nodes/{name}/labels", post(label_node))
        .route("/node-summary", get(node_summary))
        .route("/apps", get(list_apps).post(submit_app))
        .route("/apps/{id}", get(show_app).put(update_app).delete(delete_app))
        .route("/apps/{id}/events", get(app_events))
        .route_layer(middleware::from_fn_with_state(cluster.clone(), require_token));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .nest("/v1", v1)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(cluster)
}

/// `router` behind the API token.
pub fn protect(cluster: &Arc<Cluster>, router: Router) -> Router {
    router.route_layer(middleware::from_fn_with_state(cluster.clone(), require_token))
}

async fn require_token(State(cluster): State<Arc<Cluster>>, request: Request, next: Next) -> Response {
    // The scheme is case-insensitive (RFC 9110).
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    let expected = cluster.store.meta(ADMIN_TOKEN_KEY).ok().flatten();
    match (presented, expected) {
        (Some(token), Some(hash)) if constant_time_eq(&hash_secret(token.trim()), &hash) => next.run(request).await,
        (None, _) => error(StatusCode::UNAUTHORIZED, "missing bearer token (use --config or FOGMESH_TOKEN)".into(), vec![]),
        _ => {
            tracing::warn!("API request with a wrong token");
            error(StatusCode::UNAUTHORIZED, "invalid API token".into(), vec![])
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::BadRequest(m) => error(StatusCode::BAD_REQUEST, m, vec![]),
            Failure::Invalid { message, problems } => error(StatusCode::UNPROCESSABLE_ENTITY, message, problems),
            Failure::NotFound(m) => error(StatusCode::NOT_FOUND, m, vec![]),
            Failure::Conflict(m) => error(StatusCode::CONFLICT, m, vec![]),
            Failure::StaleRevision(m) => error(StatusCode::PRECONDITION_FAILED, m, vec![]),
            Failure::TooLarge(m) => error(StatusCode::PAYLOAD_TOO_LARGE, m, vec![]),
            Failure::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "API request failed");
                error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e:#}"), vec![])
            }
        }
    }
}

fn error(status: StatusCode, error: String, problems: Vec<String>) -> Response {
    (status, Json(ApiError { error, problems })).into_response()
}

/// A JSON body, with a readable 400 when it is not one and 413 when it is
/// over the size limit.
fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, Failure> {
    payload.map(|Json(v)| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure::TooLarge(format!("request body is over the {MAX_BODY_BYTES} byte limit"))
        } else {
            Failure::BadRequest(format!("bad request body: {}", e.body_text()))
        }
    })
}

type ApiResult<T> = Result<Json<T>, Failure>;

async fn create_token(State(c): State<Arc<Cluster>>, payload: Result<Json<CreateToken>, JsonRejection>) -> ApiResult<crate::model::TokenCreated> {
    let req = body(payload)?;
    Ok(Json(c.create_token(Duration::from_secs(req.ttl_seconds), req.uses, req.replace).await?))
}

async fn list_nodes(State(c): State<Arc<Cluster>>) -> ApiResult<Vec<crate::model::NodeView>> {
    Ok(Json(c.node_views()?))
}

async fn node_summary(State(c): State<Arc<Cluster>>) -> ApiResult<crate::model::NodeSummary> {
    Ok(Json(c.node_summary()?))
}

async fn declare_node(State(c): State<Arc<Cluster>>, payload: Result<Json<DeclareNode>, JsonRejection>) -> ApiResult<crate::model::NodeRecord> {
    Ok(Json(c.declare_node(&body(payload)?).await?))
}

async fn remove_node(State(c): State<Arc<Cluster>>, Path(name): Path<String>) -> Result<StatusCode, Failure> {
    c.remove_node(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn label_node(State(c): State<Arc<Cluster>>, Path(name): Path<String>, payload: Result<Json<crate::model::LabelNode>, JsonRejection>) -> ApiResult<crate::model::NodeRecord> {
    Ok(Json(c.label_node(&name, &body(payload)?).await?))
}

async fn list_apps(State(c): State<Arc<Cluster>>) -> ApiResult<Vec<crate::model::AppSummary>> {
    Ok(Json(c.app_summaries()?))
}

async fn submit_app(State(c): State<Arc<Cluster>>, payload: Result<Json<SubmitApp>, JsonRejection>) -> Result<(StatusCode, Json<crate::model::AppDetail>), Failure> {
    let app = c.submit_app(&body(payload)?).await?;
    Ok((StatusCode::CREATED, Json(c.view_of(&app)?)))
}

/// `?wait_after=VERSION&timeout=SECONDS`: long-poll for the next change.
#[derive(Deserialize)]
struct ShowQuery {
    wait_after: Option<u64>,
    #[serde(default = "default_watch_seconds")]
    timeout: u64,
}

fn default_watch_seconds() -> u64 {
    25
}

async fn show_app(State(c): State<Arc<Cluster>>, Path(id): Path<String>, query: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>) -> ApiResult<crate::model::AppDetail> {
    let Query(q) = query.map_err(|e| Failure::BadRequest(format!("bad query: {}", e.body_text())))?;
    Ok(Json(c.app_detail(&id, q.wait_after, Duration::from_secs(q.timeout)).await?))
}

/// `If-Match: "REVISION"` makes the update conditional.
async fn update_app(State(c): State<Arc<Cluster>>, Path(id): Path<String>, headers: HeaderMap, payload: Result<Json<SubmitApp>, JsonRejection>) -> ApiResult<crate::model::AppDetail> {
    let expected = match headers.get(header::IF_MATCH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(|t| t.trim().trim_matches('"'))
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| Failure::BadRequest("If-Match must hold an app revision number, e.g. \"3\"".into()))?,
        ),
    };
    let app = c.update_app(&id, &body(payload)?, expected).await?;
    Ok(Json(c.view_of(&app)?))
}

/// `?after=SEQ&wait=true&timeout=SECONDS`: events after SEQ; with `wait`,
/// long-poll until there is one.
#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait: bool,
    #[serde(default = "default_watch_seconds")]
    timeout: u64,
}

async fn app_events(
    State(c): State<Arc<Cluster>>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<crate::model::EventPage> {
    let Query(q) = query.map_err(|e| Failure::BadRequest(format!("bad query: {e}")))?;
    Ok(Json(c.app_events(&id, q.after, q.wait, Duration::from_secs(q.timeout)).await?))
}

async fn delete_app(State(c): State<Arc<Cluster>>, Path(id): Path<String>) -> Result<StatusCode, Failure> {
    c.delete_app(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
