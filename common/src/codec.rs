//! Length-prefixed bincode frames: the one place that knows the wire encoding.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload, a
//! bincode 2 (serde mode, standard config) encoding of one message. Every
//! frame comes from the network, so the length is checked against
//! [`MAX_FRAME_BYTES`] before anything is allocated, and decoding is bounded
//! by the same limit so a hostile payload cannot make us allocate more.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload (without the 4-byte prefix) either side accepts or sends.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of the big-endian length prefix in front of every payload.
const PREFIX_BYTES: usize = 4;

/// Bytes pre-allocated for a payload before they arrive: a peer that
/// announces 4 MiB and then stalls must not cost us 4 MiB up front.
const INITIAL_READ_CAPACITY: usize = 64 * 1024;

/// The single bincode configuration of the protocol. The limit caps what
/// the decoder may claim for strings and sequences.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Why a message could not be encoded, framed or decoded.
#[derive(Debug)]
pub enum CodecError {
    /// The payload (announced or encoded) is larger than the limit.
    TooLarge { len: usize, max: usize },
    /// A frame announced zero bytes, or a payload was empty.
    Empty,
    /// The input ended in the middle of a frame or message.
    Truncated,
    /// The bytes are not a valid encoding of the expected message.
    Malformed(String),
    /// The underlying stream failed.
    Io(std::io::Error),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max} byte limit")
            }
            CodecError::Empty => f.write_str("empty frame"),
            CodecError::Truncated => f.write_str("input ended in the middle of a frame"),
            CodecError::Malformed(why) => write!(f, "malformed message: {why}"),
            CodecError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CodecError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            CodecError::Truncated
        } else {
            CodecError::Io(e)
        }
    }
}

/// Encodes one message as a frame payload (without the length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| CodecError::Malformed(format!("cannot encode: {e}")))?;
    if bytes.len() > MAX_FRAME_BYTES {
        // The peer would refuse it; fail here where the cause is visible.
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes one message from a whole payload. Trailing bytes are an error:
/// a payload is exactly one message, anything else means the peers disagree
/// about the format.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.is_empty() {
        return Err(CodecError::Empty);
    }
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let (msg, used) = bincode::serde::decode_from_slice(bytes, config()).map_err(|e| match e {
        bincode::error::DecodeError::UnexpectedEnd { .. } => CodecError::Truncated,
        other => CodecError::Malformed(other.to_string()),
    })?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(msg)
}

/// Writes one message as a length-prefixed frame and flushes the writer.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let payload = encode(msg)?;
    let len = u32::try_from(payload.len()).map_err(|_| CodecError::TooLarge {
        len: payload.len(),
        max: MAX_FRAME_BYTES,
    })?;
    // One buffer, one write: a QUIC stream then sends prefix and payload
    // together instead of a 4-byte packet first.
    let mut frame = Vec::with_capacity(PREFIX_BYTES + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    w.write_all(&frame).await.map_err(CodecError::Io)?;
    w.flush().await.map_err(CodecError::Io)?;
    Ok(())
}

/// Largest record a local store keeps: a node's whole desired state, which
/// may hold many apps (each of them within [`MAX_FRAME_BYTES`]).
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

fn record_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// Encodes a value for a local store (same format as frames, larger limit).
pub fn encode_record<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, record_config())
        .map_err(|e| CodecError::Malformed(format!("cannot encode: {e}")))?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(CodecError::TooLarge { len: bytes.len(), max: MAX_RECORD_BYTES });
    }
    Ok(bytes)
}

/// Decodes a whole store record; trailing bytes are an error.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_record_borrowed(bytes)
}

/// [`decode_record`] into a value that may borrow from `bytes` (e.g.
/// `&str` fields: no allocation per string).
pub fn decode_record_borrowed<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    if bytes.is_empty() {
        return Err(CodecError::Empty);
    }
    let (value, used) = bincode::serde::borrow_decode_from_slice(bytes, record_config()).map_err(|e| match e {
        bincode::error::DecodeError::UnexpectedEnd { .. } => CodecError::Truncated,
        other => CodecError::Malformed(other.to_string()),
    })?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!("{} trailing bytes after the record", bytes.len() - used)));
    }
    Ok(value)
}

/// Reads one frame and decodes it.
///
/// Returns `Ok(None)` when the stream ends cleanly before the first byte of
/// a frame (the peer finished), and [`CodecError::Truncated`] when it ends
/// inside one.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; PREFIX_BYTES];
    let mut filled = 0;
    while filled < PREFIX_BYTES {
        let n = r
            .read(&mut prefix[filled..])
            .await
            .map_err(CodecError::Io)?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(CodecError::Truncated)
            };
        }
        filled += n;
    }

    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > MAX_FRAME_BYTES {
        tracing::debug!(len, max = MAX_FRAME_BYTES, "refusing oversized frame");
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }

    // Grow with what actually arrives rather than trusting the prefix.
    let mut payload = Vec::with_capacity(len.min(INITIAL_READ_CAPACITY));
    let got = (&mut *r)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await
        .map_err(CodecError::Io)?;
    if got < len {
        return Err(CodecError::Truncated);
    }
    decode(&payload).map(Some)
}

/// Reads frames until the stream ends and hands each one to `tx`; a read
/// error is handed on too and ends the loop. `read_frame` is not
/// cancel-safe, so a peer that `select!`s over its stream runs this in a
/// task of its own.
pub async fn forward_frames<R, T>(mut r: R, tx: tokio::sync::mpsc::Sender<Result<T, CodecError>>)
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    loop {
        let item = match read_frame(&mut r).await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "7f3a0b1c.detector.1".into(),
            app_id: "app-7f3a".into(),
            app_name: "face-detect".into(),
            workload: "detector".into(),
            replica: 1,
            image: "fogmesh/face-detector:1.2".into(),
            command: vec!["/bin/detector".into()],
            args: vec!["--threshold".into(), "0.8".into()],
            env: vec![("MQTT_HOST".into(), "10.0.0.1".into())],
            ports: vec![
                PortSpec {
                    container_port: 8080,
                    host_port: Some(30080),
                    protocol: Protocol::Tcp,
                },
                PortSpec {
                    container_port: 5353,
                    host_port: None,
                    protocol: Protocol::Udp,
                },
            ],
            mounts: vec![
                MountSpec {
                    source: MountSource::HostPath("/var/lib/frames".into()),
                    target: "/frames".into(),
                },
                MountSpec {
                    source: MountSource::EmptyDir,
                    target: "/tmp".into(),
                },
                MountSpec {
                    source: MountSource::ConfigMap(vec![(
                        "model.yaml".into(),
                        "threshold: 0.8\n".into(),
                    )]),
                    target: "/etc/detector".into(),
                },
                MountSpec {
                    source: MountSource::Nfs {
                        server: "10.0.0.5".into(),
                        path: "/exports/models".into(),
                    },
                    target: "/models".into(),
                },
            ],
            cpu_millis: Some(500),
            memory_bytes: Some(256 * 1024 * 1024),
            privileged: false,
            host_network: false,
            working_dir: Some("/app".into()),
            labels: vec![("tier".into(), "fog".into())],
            liveness: Some(Probe {
                action: ProbeAction::Http { port: 8080, path: "/healthz".into() },
                initial_delay_ms: 1000,
                period_ms: 5000,
                timeout_ms: 1000,
                failure_threshold: 3,
                success_threshold: 1,
            }),
            readiness: Some(Probe {
                action: ProbeAction::Exec(vec!["/bin/true".into()]),
                initial_delay_ms: 0,
                period_ms: 1000,
                timeout_ms: 1000,
                failure_threshold: 1,
                success_threshold: 1,
            }),
            pod_network: None,
        }
    }

    fn agent_messages() -> Vec<AgentMessage> {
        vec![
            AgentMessage::Join(JoinRequest {
                protocol_version: PROTOCOL_VERSION,
                token: "fmj1.0011223344556677.00112233445566778899aabbccddeeff.ab".into(),
                csr_pem:
                    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                        .into(),
                name: Some("pi-kitchen".into()),
                public_ip: "192.0.2.10".into(),
                labels: vec![("site".into(), "kitchen".into())],
                replace: false,
            }),
            AgentMessage::Join(JoinRequest {
                protocol_version: PROTOCOL_VERSION,
                token: String::new(),
                csr_pem: String::new(),
                name: None,
                public_ip: "2001:db8::1".into(),
                labels: vec![],
                replace: true,
            }),
            AgentMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                node_name: "pi-kitchen".into(),
                public_ip: "192.0.2.10".into(),
                labels: vec![("arch".into(), "arm64".into())],
                capacity: Capacity {
                    cpus: 4,
                    memory_bytes: 4 << 30,
                    disk_bytes: 64 << 30,
                    arch: "aarch64".into(),
                    os: "linux".into(),
                },
                runtime_version: "docker 20.10.24".into(),
                agent_version: "0.1.0".into(),
                acked_generation: 42,
            }),
            AgentMessage::Heartbeat,
            AgentMessage::Ack {
                generation: u64::MAX,
            },
            AgentMessage::Status(NodeStatus {
                generation: 42,
                containers: [
                    ContainerState::Running,
                    ContainerState::Starting,
                    ContainerState::Exited,
                    ContainerState::Failed,
                ]
                .into_iter()
                .enumerate()
                .map(|(i, state)| ContainerStatus {
                    name: format!("7f3a0b1c.detector.{i}"),
                    app_id: "7f3a0b1c".into(),
                    workload: "detector".into(),
                    state,
                    spec_hash: "ab".repeat(32),
                    running_spec: (i > 0).then(|| "cd".repeat(32)),
                    ready: (i == 1).then_some(false),
                    restarts: i as u32,
                    last_error: (state == ContainerState::Failed)
                        .then(|| "image fogmesh/x:1 is not on this node".into()),
                })
                .collect(),
                conditions: vec![Condition {
                    kind: "StoreWriteFailed".into(),
                    message: "No space left on device".into(),
                    since_ms: 1_700_000_000_000,
                }],
            }),
            AgentMessage::ScalingReport(vec![LocalDecision {
                app_id: "7f3a0b1c".into(),
                workload: "web".into(),
                key: "scale#2/web".into(),
                label: "scale #2".into(),
                at_ms: 1_700_000_000_000,
                from: 1,
                to: 3,
                printed: vec!["load 0.93".into()],
                readings_json: "{\"LOAD\":0.93}".into(),
                message: String::new(),
                failed: false,
            }]),
        ]
    }

    fn master_messages() -> Vec<MasterMessage> {
        vec![
            MasterMessage::Joined(JoinResponse {
                node_name: "pi-kitchen".into(),
                cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into(),
                metrics: MetricsSettings { mqtt_url: "mqtts://203.0.113.5:8883".into(), interval_ms: 15_000, ack_key: vec![4, 1, 2] },
            }),
            MasterMessage::Metrics(MetricsSettings { mqtt_url: "mqtt://broker:1883".into(), interval_ms: 1_000, ack_key: vec![] }),
            MasterMessage::Welcome {
                node_name: "pi-kitchen".into(),
                heartbeat_interval_ms: 5000,
            },
            MasterMessage::Refused {
                reason: "agent speaks protocol 2, master speaks 1".into(),
                kind: Refusal::Other,
            },
            MasterMessage::Refused {
                reason: "revoked".into(),
                kind: Refusal::Revoked,
            },
            MasterMessage::DesiredApp {
                generation: 43,
                app: AppDesired {
                    app_id: "7f3a0b1c".into(),
                    containers: vec![spec(), spec()],
                    metrics: Some(AppMetrics {
                        app_id: "7f3a0b1c".into(),
                        scrapes: vec![
                            ScrapeTarget { source: "fog-node:9100".into(), address: ScrapeAddress::Local { port: 9100 }, path: "/metrics".into() },
                            ScrapeTarget { source: "web:8080".into(), address: ScrapeAddress::Container { key: "7f3a0b1c.web.1".into(), port: 8080 }, path: "/metrics".into() },
                            ScrapeTarget { source: "10.0.0.9:9117".into(), address: ScrapeAddress::Host("10.0.0.9:9117".into()), path: "/metrics".into() },
                        ],
                        interval_ms: Some(5_000),
                    }),
                    policies: vec![LocalPolicy {
                        app_id: "7f3a0b1c".into(),
                        workload: "web".into(),
                        key: "scale#2/web".into(),
                        label: "scale #2".into(),
                        plan_json: "{\"nodes\":[]}".into(),
                        replicas: 2,
                    }],
                },
            },
            MasterMessage::DesiredDone {
                generation: 43,
                apps: 1,
            },
            MasterMessage::ScalingReportTaken { up_to_ms: 1_700_000_000_000 },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in agent_messages() {
            let bytes = encode(&msg).expect("encode");
            assert_eq!(decode::<AgentMessage>(&bytes).expect("decode"), msg);
        }
        for msg in master_messages() {
            let bytes = encode(&msg).expect("encode");
            assert_eq!(decode::<MasterMessage>(&bytes).expect("decode"), msg);
        }
    }

    #[tokio::test]
    async fn frames_round_trip_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let sent = agent_messages();
        for msg in &sent {
            write_frame(&mut a, msg).await.expect("write");
        }
        drop(a);
        let mut got = Vec::new();
        while let Some(msg) = read_frame::<_, AgentMessage>(&mut b).await.expect("read") {
            got.push(msg);
        }
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        let mut input: &[u8] = &[];
        let got = read_frame::<_, AgentMessage>(&mut input)
            .await
            .expect("read");
        assert!(got.is_none());
    }

    #[tokio::test]
    async fn oversized_prefix_is_refused_before_reading_payload() {
        // Only the prefix is present: if the reader tried to allocate and
        // read the payload it would report Truncated instead.
        let len = (MAX_FRAME_BYTES + 1) as u32;
        let mut input: &[u8] = &len.to_be_bytes();
        let err = read_frame::<_, AgentMessage>(&mut input).await.unwrap_err();
        match err {
            CodecError::TooLarge { len: l, max } => {
                assert_eq!(l, MAX_FRAME_BYTES + 1);
                assert_eq!(max, MAX_FRAME_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let mut input: &[u8] = &u32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame::<_, AgentMessage>(&mut input).await,
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn too_large_message() {
        let e = CodecError::TooLarge {
            len: 5_000_000,
            max: MAX_FRAME_BYTES,
        };
        assert_eq!(
            e.to_string(),
            "frame of 5000000 bytes exceeds the 4194304 byte limit"
        );
        let huge = MasterMessage::Refused {
            reason: "x".repeat(MAX_FRAME_BYTES),
            kind: Refusal::Other,
        };
        assert!(matches!(encode(&huge), Err(CodecError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn zero_length_frame_is_an_error() {
        let mut input: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame::<_, AgentMessage>(&mut input).await,
            Err(CodecError::Empty)
        ));
        assert!(matches!(
            decode::<AgentMessage>(&[]),
            Err(CodecError::Empty)
        ));
    }

    #[tokio::test]
    async fn garbage_payload_is_malformed() {
        // Variant index 200 does not exist in AgentMessage.
        let payload = [200u8, 1, 2, 3];
        assert!(matches!(
            decode::<AgentMessage>(&payload),
            Err(CodecError::Malformed(_))
        ));
        let frame = frame_of(&payload);
        let mut input: &[u8] = &frame;
        assert!(matches!(
            read_frame::<_, AgentMessage>(&mut input).await,
            Err(CodecError::Malformed(_))
        ));
        // A string that is not UTF-8.
        let bad_utf8 = encode(&MasterMessage::Refused {
            reason: "ab".into(),
            kind: Refusal::Other,
        })
        .expect("encode");
        let mut bad = bad_utf8.clone();
        // The last string byte sits before the one-byte `kind`.
        let last = bad.len() - 2;
        bad[last] = 0xff;
        assert!(matches!(
            decode::<MasterMessage>(&bad),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn string_length_beyond_limit_is_refused_without_allocating() {
        // Refused { reason } with a u64 length claim of 2^40 bytes.
        let mut payload = encode(&MasterMessage::Refused {
            reason: String::new(),
            kind: Refusal::Other,
        })
        .expect("encode");
        payload.truncate(payload.len() - 2); // the zero length and the kind
        payload.push(253); // varint marker for u64
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        payload.push(0);
        assert!(decode::<MasterMessage>(&payload).is_err());
    }

    #[tokio::test]
    async fn truncated_frames() {
        let mut frame = Vec::new();
        write_frame(&mut frame, &AgentMessage::Ack { generation: 7 })
            .await
            .expect("write");
        // Cut inside the prefix and inside the payload.
        for cut in [1, 3, frame.len() - 1] {
            let mut input: &[u8] = &frame[..cut];
            assert!(
                matches!(
                    read_frame::<_, AgentMessage>(&mut input).await,
                    Err(CodecError::Truncated)
                ),
                "cut at {cut}"
            );
        }
        // A payload that ends before the message does.
        let payload = encode(&MasterMessage::Refused {
            reason: "a long enough reason".into(),
            kind: Refusal::Other,
        })
        .expect("encode");
        assert!(matches!(
            decode::<MasterMessage>(&payload[..payload.len() - 3]),
            Err(CodecError::Truncated)
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut payload = encode(&AgentMessage::Heartbeat).expect("encode");
        payload.push(0);
        match decode::<AgentMessage>(&payload) {
            Err(CodecError::Malformed(why)) => assert!(why.contains("trailing"), "{why}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn trailing_bytes_inside_a_frame_are_rejected() {
        let mut payload = encode(&AgentMessage::Heartbeat).expect("encode");
        payload.extend_from_slice(&[1, 2]);
        let frame = frame_of(&payload);
        let mut input: &[u8] = &frame;
        assert!(matches!(
            read_frame::<_, AgentMessage>(&mut input).await,
            Err(CodecError::Malformed(_))
        ));
    }

    /// A frame as it goes on the wire: big-endian length, then the payload.
    fn frame_of(payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame
    }
}
