//! The embedded MQTT broker (rumqttd), on loopback behind the master's MQTT
//! door (`gate`): it takes only clients with the master's per-start login,
//! which the door and the ingest use. Agents reach it only through the door,
//! which checks who they are and what they send.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use fogmesh_common::metrics::batch::MAX_BATCH_BYTES;
use rumqttc::mqttbytes::v4::Login;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts the broker on its own threads, on a free loopback port that only
/// `login` may use; returns that port's address.
pub fn start(login: &Login, max_connections: usize) -> Result<SocketAddr> {
    // rumqttd binds by itself: take a free port, then hand it over.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("find a free loopback port for the embedded MQTT broker")?;
    let server = ServerSettings {
        name: "fogmesh-mqtt".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_BATCH_BYTES + 4096,
            max_inflight_count: 256,
            auth: Some(HashMap::from([(login.username.clone(), login.password.clone())])),
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
        v4: Some(HashMap::from([("loopback".to_string(), server)])),
        ..Default::default()
    };
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
    tracing::debug!(%listen, "embedded MQTT broker starting on loopback");
    Ok(listen)
}
