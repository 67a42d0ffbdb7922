//! Random input to the decoder never panics and never hangs.

use fogmesh_common::codec::{decode, encode, read_frame, CodecError, MAX_FRAME_BYTES};
use fogmesh_common::wire::{AgentMessage, MasterMessage};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build runtime: {e}"),
    }
}

/// Reads frames until the input ends or a frame is bad.
fn read_all(rt: &tokio::runtime::Runtime, bytes: &[u8]) {
    rt.block_on(async {
        let mut input = bytes;
        loop {
            match read_frame::<_, AgentMessage>(&mut input).await {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    // Errors must render; the Io variant cannot occur on a slice.
                    assert!(!e.to_string().is_empty());
                    assert!(!matches!(e, CodecError::Io(_)));
                    break;
                }
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<AgentMessage>(&bytes);
        let _ = decode::<MasterMessage>(&bytes);
    }

    #[test]
    fn read_frame_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        read_all(&runtime(), &bytes);
    }

    /// A plausible length prefix followed by random bytes reaches the decoder.
    #[test]
    fn read_frame_random_payload(payload in proptest::collection::vec(any::<u8>(), 1..512)) {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        read_all(&runtime(), &frame);
    }

    /// Valid messages with random bytes flipped.
    #[test]
    fn mutated_messages(pos in any::<usize>(), val in any::<u8>(), reason in ".{0,64}") {
        let msg = MasterMessage::Refused { reason, kind: fogmesh_common::wire::Refusal::Other };
        let mut bytes = match encode(&msg) {
            Ok(b) => b,
            Err(e) => panic!("encode: {e}"),
        };
        prop_assert!(bytes.len() <= MAX_FRAME_BYTES);
        let i = pos % bytes.len();
        bytes[i] = val;
        let _ = decode::<MasterMessage>(&bytes);
    }
}
