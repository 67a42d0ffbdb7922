//! How the CLI reaches a master: credentials from `--config`/`FOGMESH_CONFIG`
//! (the `client.conf` that `fogmesh-master init` writes) or from
//! `--api`/`--token`/`--ca` (`FOGMESH_API`, `FOGMESH_TOKEN`, `FOGMESH_CA`),
//! and an HTTPS client that trusts only the cluster CA.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use fogmesh_common::tls::https_client_roots;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::datadir::ClientConfig;
use crate::model::ApiError;

#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Client credentials file written by `fogmesh-master init`.
    #[arg(long, global = true, env = "FOGMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Master API URL, e.g. https://127.0.0.1:7400 (overrides the config file).
    #[arg(long, global = true, env = "FOGMESH_API", value_name = "URL")]
    pub api: Option<String>,
    /// API token (overrides the config file).
    #[arg(long, global = true, env = "FOGMESH_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the cluster CA (overrides the config file).
    #[arg(long, global = true, env = "FOGMESH_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

pub struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

/// An error response of the API, with the ADT problems if any.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub body: ApiError,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.body.error, self.status)
    }
}

impl std::error::Error for ApiFailure {}

impl Connection {
    pub fn client(&self) -> Result<Client> {
        let file: Option<ClientConfig> = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("read client config {}", path.display()))?;
                Some(serde_json::from_str(&text).with_context(|| format!("{} is not a fogmesh client config", path.display()))?)
            }
            None => None,
        };
        let api = self.api.clone().or_else(|| file.as_ref().map(|f| f.api.clone()));
        let token = self.token.clone().or_else(|| file.as_ref().map(|f| f.token.clone()));
        let ca_pem = match &self.ca {
            Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("read CA file {}", path.display()))?),
            None => file.as_ref().map(|f| f.ca_pem.clone()),
        };
        let (Some(api), Some(token), Some(ca_pem)) = (api, token, ca_pem) else {
            bail!("no master to talk to: pass --config FILE (or set FOGMESH_CONFIG) with the client.conf from `fogmesh-master init`, or --api, --token and --ca");
        };
        let roots = https_client_roots(&ca_pem)?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // Rollout watches long-poll for up to 25 s.
            .timeout(std::time::Duration::from_secs(40))
            .build()
            .context("build the HTTPS client")?;
        Ok(Client { http, api: api.trim_end_matches('/').to_string(), token })
    }
}

impl Client {
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn send<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: &B) -> Result<T> {
        self.send_with(method, path, body, &[]).await
    }

    /// `send` with extra request headers (e.g. `If-Match`).
    pub async fn send_with<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: &B, headers: &[(&str, String)]) -> Result<T> {
        let response = self.request(method, path, Some(body), headers).await?;
        let response = check(response).await?;
        response.json().await.context("read the master's answer")
    }

    /// A form POST (the Prometheus API's way), answered with JSON.
    pub async fn post_form<T: DeserializeOwned>(&self, path: &str, form: &[(&str, String)]) -> Result<T> {
        let url = format!("{}{path}", self.api);
        let response = self.http.post(&url).bearer_auth(&self.token).form(form).send().await.with_context(|| format!("cannot reach the master at {}", self.api))?;
        let response = check(response).await?;
        response.json().await.context("read the master's answer")
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        let response = self.request(Method::DELETE, path, None::<&()>, &[]).await?;
        check(response).await.map(|_| ())
    }

    async fn call<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T> {
        let response = self.request(method, path, body, &[]).await?;
        let response = check(response).await?;
        response.json().await.context("read the master's answer")
    }

    async fn request<B: Serialize>(&self, method: Method, path: &str, body: Option<&B>, headers: &[(&str, String)]) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.api);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.with_context(|| format!("cannot reach the master at {}", self.api))
    }
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str::<ApiError>(&text).unwrap_or(ApiError { error: text, problems: vec![] });
    Err(ApiFailure { status, body }.into())
}
