//! What an agent publishes each collection interval, and how the master
//! acknowledges it. The payload is versioned and signed by the node's key,
//! so a batch cannot claim another node, whichever broker carried it.

use serde::{Deserialize, Serialize};

use super::Labels;
use crate::codec::{self, CodecError};

/// First bytes of every batch payload; the last one is the format version.
pub const BATCH_MAGIC: &[u8; 4] = b"FMB1";
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

/// The master stored these batches durably: the agent may forget them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    pub seqs: Vec<u64>,
}

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

/// The payload of a batch: magic, then the encoded batch and its signature.
pub fn encode_payload(batch: &Batch, sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>) -> Result<Vec<u8>, String> {
    let bytes = codec::encode_record(batch).map_err(|e| e.to_string())?;
    let signature = sign(&bytes)?;
    let mut out = BATCH_MAGIC.to_vec();
    out.extend(codec::encode_record(&Signed { batch: bytes, signature }).map_err(|e| e.to_string())?);
    if out.len() > MAX_BATCH_BYTES {
        return Err(format!("batch of {} bytes exceeds the {MAX_BATCH_BYTES} byte limit", out.len()));
    }
    Ok(out)
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

/// Checks size, magic and signature (with `verify(bytes, signature)`), then decodes.
pub fn decode_payload(payload: &[u8], verify: impl FnOnce(&[u8], &[u8]) -> bool) -> Result<Batch, PayloadError> {
    if payload.len() > MAX_BATCH_BYTES {
        return Err(PayloadError::TooLarge(payload.len()));
    }
    let Some(rest) = payload.strip_prefix(BATCH_MAGIC.as_slice()) else { return Err(PayloadError::NotABatch) };
    let signed: Signed = codec::decode_record(rest).map_err(|e: CodecError| PayloadError::Malformed(e.to_string()))?;
    if !verify(&signed.batch, &signed.signature) {
        return Err(PayloadError::BadSignature);
    }
    codec::decode_record(&signed.batch).map_err(|e: CodecError| PayloadError::Malformed(e.to_string()))
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
        assert!(matches!(decode_payload(b"FMB1\xff\xff", |_, _| true), Err(PayloadError::Malformed(_))));
        assert_eq!(node_of_topic("fogmesh/v1/nodes/n-1/metrics"), Some("n-1"));
        assert_eq!(node_of_topic("fogmesh/v1/nodes/a/b/metrics"), None);
    }
}
