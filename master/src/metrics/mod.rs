//! Metrics on the master: the embedded MQTT broker, ingest of the agents'
//! signed batches into the time-series store, queries (PromQL, the
//! Prometheus HTTP API), the master's own metrics, and forwarding to an
//! external store with remote write.
//!
//! ```text
//! agent ──MQTT (TLS, node cert)──▶ gate ──▶ broker ──▶ ingest ──▶ tsdb (WAL, fsync) ──▶ ack ──▶ agent
//!                                                 └──▶ remote write (optional)
//! tsdb ◀── /api/v1/query* (PromQL) ◀── Grafana, `fogmesh metrics query`, scaling
//! ```

pub mod broker;
mod checkpoint;
pub mod chunk;
pub mod crl;
pub mod gate;
pub mod http;
pub mod ingest;
pub mod mosquitto;
pub mod own;
mod records;
pub mod remote_write;
pub mod tsdb;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fogmesh_common::metrics::batch::MqttUrl;
use fogmesh_common::pki::{cert_public_key, random_hex, NodeSigner};
use fogmesh_common::tls::{mqtt_client_config, mqtt_server_config};
use fogmesh_common::wire::MetricsSettings;
use rumqttc::mqttbytes::v4::Login;

use crate::cluster::Cluster;

/// How long the master's start waits for the metrics log to replay.
const REPLAY_PATIENCE: Duration = Duration::from_millis(250);

/// The master's certificate and key (server and client auth) and the
/// cluster CA: the broker's server identity, the ingest's client identity,
/// and the key that signs acks.
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A broker the master's ingest connects to.
#[derive(Clone)]
pub struct MqttEndpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The embedded broker's login (an external broker knows the master by its certificate).
    pub login: Option<Login>,
}

/// How metrics run on this master (from `fogmesh-master serve` flags).
#[derive(Clone, Debug)]
pub struct MetricsOptions {
    /// Where the embedded broker listens; `None` when an external broker is used.
    pub embedded_broker: Option<SocketAddr>,
    /// The broker URL agents (and, with an external broker, the master's
    /// ingest) connect to.
    pub agent_url: String,
    /// Default collection interval on agents.
    pub interval: Duration,
    pub retention: Duration,
    /// Series a node may have in the store; samples that would start more are refused.
    pub max_series_per_node: usize,
    /// A checkpoint is written when the log holds data older than this.
    pub checkpoint_every: Duration,
    pub remote_write: Option<String>,
    /// The CRL file an external broker reads, kept current.
    pub crl: Option<PathBuf>,
    /// Where the store keeps its log.
    pub dir: PathBuf,
}

/// Everything metrics-related the API needs.
pub struct Metrics {
    pub tsdb: Arc<tsdb::Tsdb>,
    pub counters: Arc<ingest::IngestCounters>,
    pub settings: MetricsSettings,
    pub remote: Option<Arc<remote_write::RemoteWriter>>,
    /// What the embedded broker's door refused (none with an external broker).
    pub gate: Option<Arc<gate::GateCounters>>,
    /// For the scaling gauges of `/metrics` (none in the benchmark).
    pub cluster: Option<Arc<Cluster>>,
}

/// What agents are told: the broker, the default interval, the key that
/// signs acks (the master's own).
pub fn agent_settings(files: &Credentials, options: &MetricsOptions) -> Result<MetricsSettings> {
    MqttUrl::parse(&options.agent_url).map_err(anyhow::Error::msg)?;
    let ack_key = cert_public_key(&files.cert_pem).context("read the master certificate's public key")?;
    Ok(MetricsSettings { mqtt_url: options.agent_url.clone(), interval_ms: options.interval.as_millis() as u64, ack_key })
}

impl Metrics {
    /// Opens the store (its log replays in the background: queries wait,
    /// ingest does not), starts the broker (if embedded), the ingest, the
    /// retention sweep and remote write.
    pub async fn start(cluster: Arc<Cluster>, files: &Credentials, options: MetricsOptions) -> Result<Arc<Metrics>> {
        let tsdb = tsdb::Tsdb::open_loading(&options.dir, options.retention)?;
        tsdb.set_max_series_per_node(options.max_series_per_node);
        // A short log is replayed before anything is served; a long one
        // goes on while the control plane serves.
        if !tsdb.wait_loaded(REPLAY_PATIENCE).await {
            tracing::info!(waited = ?REPLAY_PATIENCE, "metrics store still loading its log: serving the control plane meanwhile, queries and scaling wait for it");
        }
        let (endpoint, gate) = match options.embedded_broker {
            Some(listen) => {
                let (endpoint, counters) = start_embedded_broker(&cluster, files, listen, &options.dir).await?;
                (endpoint, Some(counters))
            }
            None => (endpoint(&options.agent_url, files)?, None),
        };
        if let Some(path) = &options.crl {
            tokio::spawn(crl::keep_current(cluster.clone(), path.clone()));
        }
        let signer = Arc::new(NodeSigner::from_key_pem(&files.key_pem).context("the master key cannot sign metric acks")?);
        let settings = cluster.config.metrics.clone();
        let remote = match &options.remote_write {
            Some(url) => Some(remote_write::RemoteWriter::start(url)?),
            None => None,
        };
        let counters = Arc::new(ingest::IngestCounters::default());
        let _ = cluster.ingest.set(counters.clone());
        tokio::spawn(ingest::run_forever(cluster.clone(), tsdb.clone(), endpoint, counters.clone(), signer, remote.clone()));
        tokio::spawn(expire_forever(tsdb.clone(), options.checkpoint_every));
        tracing::info!(agents_use = %options.agent_url, interval = ?options.interval, retention = ?options.retention, "metrics enabled");
        Ok(Arc::new(Metrics { tsdb, counters, settings, remote, gate, cluster: Some(cluster) }))
    }
}

/// rumqttd on loopback behind the door on `listen`; the ingest's endpoint
/// (the broker itself, with the login only this process knows).
async fn start_embedded_broker(cluster: &Arc<Cluster>, files: &Credentials, listen: SocketAddr, dir: &Path) -> Result<(MqttEndpoint, Arc<gate::GateCounters>)> {
    // Earlier versions gave rumqttd copies of the master's key here.
    let stale = dir.join("broker");
    if stale.exists() {
        std::fs::remove_dir_all(&stale).with_context(|| format!("remove the old broker key copies in {}", stale.display()))?;
        tracing::info!(dir = %stale.display(), "removed the copies of the master key an earlier version kept for its broker");
    }
    let login = Login::new("fogmesh-master", random_hex(32));
    let internal = broker::start(&login, 100_000)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen for MQTT on {listen}"))?;
    let tls = tokio_rustls::TlsAcceptor::from(mqtt_server_config(&files.ca_pem, &files.cert_pem, &files.key_pem)?);
    let counters = Arc::new(gate::GateCounters::default());
    let upstream = gate::Upstream { addr: internal, login: login.clone() };
    tokio::spawn(gate::serve(listener, tls, cluster.clone(), upstream, counters.clone()));
    tracing::info!(%listen, "embedded MQTT broker listening (TLS; a node's current certificate, its own client id and topics only)");
    let endpoint = MqttEndpoint { url: format!("mqtt://{internal}"), host: internal.ip().to_string(), port: internal.port(), tls: None, login: Some(login) };
    Ok((endpoint, counters))
}

/// The ingest's broker connection: TLS with the master's certificate
/// (which carries client auth) for `mqtts://`.
fn endpoint(url: &str, files: &Credentials) -> Result<MqttEndpoint> {
    let parsed = MqttUrl::parse(url).map_err(anyhow::Error::msg)?;
    let tls = if parsed.tls { Some(mqtt_client_config(&files.ca_pem, &files.cert_pem, &files.key_pem)?) } else { None };
    Ok(MqttEndpoint { url: url.to_string(), host: parsed.host, port: parsed.port, tls, login: None })
}

/// Every minute (or `checkpoint_every`, when shorter): drop what is past
/// the retention, then checkpoint the store when its log holds data older
/// than `checkpoint_every`, so a restart replays at most about that much.
async fn expire_forever(tsdb: Arc<tsdb::Tsdb>, checkpoint_every: Duration) {
    let mut tick = tokio::time::interval(checkpoint_every.clamp(Duration::from_secs(1), Duration::from_secs(60)));
    loop {
        tick.tick().await;
        let db = tsdb.clone();
        match tokio::task::spawn_blocking(move || db.expire()).await {
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "metrics retention sweep failed"),
            Err(e) => tracing::warn!(error = %e, "metrics retention sweep panicked"),
            Ok(Ok(())) => {}
        }
        let db = tsdb.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || db.checkpoint(checkpoint_every)).await {
            Ok(Ok(Some(done))) => tracing::info!(series = done.series, log_segments_removed = done.segments_removed, took = ?started.elapsed(), "metrics checkpoint written"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "metrics checkpoint failed: the log is kept and replayed at the next start"),
            Err(e) => tracing::warn!(error = %e, "metrics checkpoint panicked"),
        }
    }
}
