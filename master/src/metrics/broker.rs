//! The embedded MQTT broker (rumqttd): TLS under the cluster CA, and only
//! clients with a certificate the CA signed (agents, the master's ingest)
//! may connect. Which node a batch is from is checked by the master on the
//! batch's signature, not trusted from the topic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use fogmesh_common::metrics::batch::MAX_BATCH_BYTES;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

/// Starts the broker on its own threads; returns once it is listening.
pub fn start(listen: SocketAddr, ca_pem: &Path, cert_pem: &Path, key_pem: &Path, max_connections: usize) -> Result<()> {
    let server = ServerSettings {
        name: "fogmesh-mqtt".into(),
        listen,
        tls: Some(TlsConfig::Rustls {
            capath: Some(ca_pem.display().to_string()),
            certpath: cert_pem.display().to_string(),
            keypath: key_pem.display().to_string(),
        }),
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_BATCH_BYTES + 4096,
            max_inflight_count: 256,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 512,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("tls".to_string(), server)])),
        ..Default::default()
    };
    // Fail here, with the reason, rather than inside the broker's thread.
    std::net::TcpListener::bind(listen).with_context(|| format!("listen for MQTT on {listen}"))?;
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .context("start the MQTT broker thread")?;
    // The ingest connects (and reconnects) on its own once the broker listens.
    tracing::info!(%listen, "embedded MQTT broker starting (TLS, client certificates under the cluster CA)");
    Ok(())
}
