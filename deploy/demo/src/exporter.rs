//! The HTTP side every component has: Prometheus metrics at `/metrics`
//! (prometheus-client's text encoding) plus the component's own routes.

use std::io::Read;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Request, Response, Server};

/// Largest request body a component reads.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// A request as a route sees it.
pub struct Incoming {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
}

pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self { status, content_type: "application/json", body: value.to_string().into_bytes() }
    }
    pub fn html(body: String) -> Self {
        Self { status: 200, content_type: "text/html; charset=utf-8", body: body.into_bytes() }
    }
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }
}

/// Serves `/metrics` from `registry` and everything else through `routes`
/// (None: 404), on two threads of its own.
pub fn serve<F>(listen: &str, registry: Registry, routes: F) -> anyhow::Result<()>
where
    F: Fn(Incoming) -> Option<Reply> + Send + Sync + 'static,
{
    let server = Arc::new(Server::http(listen).map_err(|e| anyhow::anyhow!("listen on {listen}: {e}"))?);
    tracing::info!(%listen, "serving /metrics");
    let shared = Arc::new((registry, routes));
    for _ in 0..2 {
        let (server, shared) = (server.clone(), shared.clone());
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let reply = handle(&mut request, &shared.0, &shared.1);
                let header = Header::from_bytes("Content-Type", reply.content_type).expect("static header");
                let response = Response::from_data(reply.body).with_status_code(reply.status).with_header(header);
                if let Err(e) = request.respond(response) {
                    tracing::debug!(error = %e, "client went away before the response");
                }
            }
        });
    }
    Ok(())
}

fn handle<F: Fn(Incoming) -> Option<Reply>>(request: &mut Request, registry: &Registry, routes: &F) -> Reply {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').map(|(p, q)| (p.to_string(), q.to_string())).unwrap_or((url, String::new()));
    let method = request.method().clone();
    if method == Method::Get && path == "/metrics" {
        let mut text = String::new();
        return match prometheus_client::encoding::text::encode(&mut text, registry) {
            Ok(()) => Reply { status: 200, content_type: "text/plain; version=0.0.4", body: text.into_bytes() },
            Err(e) => Reply::error(500, format!("encode metrics: {e}")),
        };
    }
    let mut body = Vec::new();
    match request.as_reader().take(MAX_BODY as u64 + 1).read_to_end(&mut body) {
        Err(e) => Reply::error(400, format!("read the request body: {e}")),
        Ok(_) if body.len() > MAX_BODY => Reply::error(413, format!("request body is larger than {MAX_BODY} bytes")),
        Ok(_) => routes(Incoming { method, path, query, body }).unwrap_or_else(|| Reply::error(404, "no such page")),
    }
}

/// One `key=value` of a query string.
pub fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}
