//! What an agent publishes each collection interval, and how the master
//! acknowledges it. The payload is versioned and signed by the node's key,
//! so a batch cannot claim another node, whichever broker carried it.

use serde::{Deserialize, Serialize};

use super::Labels;
use crate::codec::{self, CodecError};

/// First bytes of every batch payload; the last one is the format version
/// (2: the signed batch is snappy-compressed; label sets repeat a lot).
pub const BATCH_MAGIC: &[u8; 4] = b"FMB2";
/// Largest payload accepted (a batch is one interval of one node).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchSample {
    pub labels: Labels,
    pub value: f64,
    pub ts_ms: i64,
}

/// One collection of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub node: String,
    /// Increases by one per batch, across agent restarts.
    pub seq: u64,
    /// When it was collected (unix ms).
    pub collected_ms: i64,
    pub samples: Vec<BatchSample>,
}

/// The master stored these batches of `node` durably: the agent may forget
/// them. Signed by the master's ingest key, so no other client of the
/// broker can make an agent drop batches the master never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    pub node: String,
    pub seqs: Vec<u64>,
}

/// First bytes of every ack payload.
pub const ACK_MAGIC: &[u8; 4] = b"FMA1";

/// A batch with the node's signature over its encoded bytes.
#[derive(Serialize, Deserialize)]
struct Signed {
    batch: Vec<u8>,
    signature: Vec<u8>,
}

/// MQTT topic a node publishes its batches on.
pub fn metrics_topic(node: &str) -> String {
    format!("fogmesh/v1/nodes/{node}/metrics")
}

/// MQTT topic the master acknowledges a node's batches on.
pub fn acks_topic(node: &str) -> String {
    format!("fogmesh/v1/nodes/{node}/acks")
}

/// The node name in a metrics topic, if it is one.
pub fn node_of_topic(topic: &str) -> Option<&str> {
    topic.strip_prefix("fogmesh/v1/nodes/")?.strip_suffix("/metrics").filter(|n| !n.is_empty() && !n.contains('/'))
}

/// The payload of a batch: magic, then the snappy-compressed encoded batch
/// and the node's signature over it.
pub fn encode_payload(batch: &Batch, sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>) -> Result<Vec<u8>, String> {
    let plain = codec::encode_record(batch).map_err(|e| e.to_string())?;
    let bytes = snap::raw::Encoder::new().compress_vec(&plain).map_err(|e| e.to_string())?;
    let out = seal(BATCH_MAGIC, bytes, sign)?;
    if out.len() > MAX_BATCH_BYTES {
        return Err(format!("batch of {} bytes exceeds the {MAX_BATCH_BYTES} byte limit", out.len()));
    }
    Ok(out)
}

/// `magic`, then `bytes` with their signature.
fn seal(magic: &[u8; 4], bytes: Vec<u8>, sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>) -> Result<Vec<u8>, String> {
    let signature = sign(&bytes)?;
    let mut out = magic.to_vec();
    out.extend(codec::encode_record(&Signed { batch: bytes, signature }).map_err(|e| e.to_string())?);
    Ok(out)
}

/// The signed bytes of a payload, once size, magic and signature checked out.
fn unseal(magic: &[u8; 4], payload: &[u8], verify: impl FnOnce(&[u8], &[u8]) -> bool) -> Result<Vec<u8>, PayloadError> {
    if payload.len() > MAX_BATCH_BYTES {
        return Err(PayloadError::TooLarge(payload.len()));
    }
    let Some(rest) = payload.strip_prefix(magic.as_slice()) else { return Err(PayloadError::NotABatch) };
    let signed: Signed = codec::decode_record(rest).map_err(|e: CodecError| PayloadError::Malformed(e.to_string()))?;
    if !verify(&signed.batch, &signed.signature) {
        return Err(PayloadError::BadSignature);
    }
    Ok(signed.batch)
}

/// Why a payload was refused.
#[derive(Debug, PartialEq)]
pub enum PayloadError {
    TooLarge(usize),
    NotABatch,
    Malformed(String),
    BadSignature,
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::TooLarge(n) => write!(f, "payload of {n} bytes exceeds the {MAX_BATCH_BYTES} byte limit"),
            PayloadError::NotABatch => f.write_str("not a fogmesh metrics batch (bad magic or version)"),
            PayloadError::Malformed(e) => write!(f, "malformed batch: {e}"),
            PayloadError::BadSignature => f.write_str("the signature does not match the node's certificate"),
        }
    }
}

/// Checks size, magic and signature (with `verify(bytes, signature)`), then
/// decompresses (bounded) and decodes.
pub fn decode_payload(payload: &[u8], verify: impl FnOnce(&[u8], &[u8]) -> bool) -> Result<Batch, PayloadError> {
    let compressed = unseal(BATCH_MAGIC, payload, verify)?;
    let len = snap::raw::decompress_len(&compressed).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    if len > 16 * MAX_BATCH_BYTES {
        return Err(PayloadError::Malformed(format!("batch expands to {len} bytes")));
    }
    let plain = snap::raw::Decoder::new().decompress_vec(&compressed).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    codec::decode_record(&plain).map_err(|e: CodecError| PayloadError::Malformed(e.to_string()))
}

/// The payload of an ack: magic, then the encoded ack and the master's signature.
pub fn encode_ack(ack: &BatchAck, sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>) -> Result<Vec<u8>, String> {
    seal(ACK_MAGIC, codec::encode_record(ack).map_err(|e| e.to_string())?, sign)
}

/// Checks magic and signature, then decodes an ack.
pub fn decode_ack(payload: &[u8], verify: impl FnOnce(&[u8], &[u8]) -> bool) -> Result<BatchAck, PayloadError> {
    let bytes = unseal(ACK_MAGIC, payload, verify)?;
    codec::decode_record(&bytes).map_err(|e: CodecError| PayloadError::Malformed(e.to_string()))
}

/// A broker address: `mqtts://HOST:PORT` (TLS under the cluster CA, client
/// certificates) or `mqtt://HOST:PORT` (plain, for a broker on a trusted link).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl MqttUrl {
    pub fn parse(url: &str) -> Result<MqttUrl, String> {
        let (tls, rest, default_port) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r, 8883)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r, 1883)
        } else {
            return Err(format!("MQTT URL {url:?} must start with mqtts:// or mqtt://"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("MQTT URL {url:?}: port {p:?} is not a number from 1 to 65535"))?)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || rest.contains('/') {
            return Err(format!("MQTT URL {url:?} must be mqtts://HOST:PORT"));
        }
        Ok(MqttUrl { tls, host: host.to_string(), port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch { node: "n1".into(), seq: 7, collected_ms: 1000, samples: vec![BatchSample { labels: Labels::metric("up", &[]), value: 1.0, ts_ms: 1000 }] }
    }

    #[test]
    fn payloads_round_trip_and_refuse_garbage() {
        let p = encode_payload(&batch(), |b| Ok(b.iter().rev().cloned().collect())).unwrap();
        let ok = decode_payload(&p, |b, s| b.iter().rev().cloned().collect::<Vec<_>>() == s).unwrap();
        assert_eq!(ok, batch());
        assert_eq!(decode_payload(&p, |_, _| false), Err(PayloadError::BadSignature));
        assert_eq!(decode_payload(b"garbage", |_, _| true), Err(PayloadError::NotABatch));
        assert!(matches!(decode_payload(b"FMB2\xff\xff", |_, _| true), Err(PayloadError::Malformed(_))));
        assert_eq!(node_of_topic("fogmesh/v1/nodes/n-1/metrics"), Some("n-1"));
        assert_eq!(node_of_topic("fogmesh/v1/nodes/a/b/metrics"), None);
        let ack = BatchAck { node: "n1".into(), seqs: vec![1, 2] };
        let p = encode_ack(&ack, |b| Ok(b.to_vec())).unwrap();
        assert_eq!(decode_ack(&p, |b, s| b == s).unwrap(), ack);
        assert_eq!(decode_ack(&p, |_, _| false), Err(PayloadError::BadSignature));
    }

    #[test]
    fn mqtt_urls_parse_with_defaults_and_name_what_is_wrong() {
        assert_eq!(MqttUrl::parse("mqtts://10.0.0.1:8883").unwrap(), MqttUrl { tls: true, host: "10.0.0.1".into(), port: 8883 });
        assert_eq!(MqttUrl::parse("mqtt://broker").unwrap(), MqttUrl { tls: false, host: "broker".into(), port: 1883 });
        assert_eq!(MqttUrl::parse("mqtts://[::1]:9000").unwrap().host, "::1");
        assert!(MqttUrl::parse("http://x:1").unwrap_err().contains("mqtts://"));
        assert!(MqttUrl::parse("mqtts://x:port").unwrap_err().contains("\"port\""));
    }
}
