//! The framing the metrics log and its checkpoints share: each record is
//! a magic word, its length and its CRC-32, then its payload, so a torn
//! or damaged tail is found instead of read.

const HEADER: usize = 12;

/// `payload` framed as one record.
pub fn frame(magic: u32, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(payload.len() + HEADER);
    record.extend_from_slice(&magic.to_le_bytes());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// The payloads of the whole records at the start of `bytes`, and where
/// the first bad or incomplete one begins (`bytes.len()` when none is).
pub fn read_all(magic: u32, bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut payloads = Vec::new();
    let mut pos = 0;
    while pos + HEADER <= bytes.len() {
        let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let len = word(pos + 4) as usize;
        let end = pos + HEADER + len;
        if word(pos) != magic || end > bytes.len() || crc32fast::hash(&bytes[pos + HEADER..end]) != word(pos + 8) {
            break;
        }
        payloads.push(&bytes[pos + HEADER..end]);
        pos = end;
    }
    (payloads, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_up_to_a_torn_or_damaged_one() {
        let mut bytes = frame(7, b"one");
        bytes.extend(frame(7, b"two"));
        let whole = bytes.len();
        bytes.extend(&frame(7, b"three")[..10]);
        assert_eq!(read_all(7, &bytes), (vec![&b"one"[..], &b"two"[..]], whole));
        let mut damaged = frame(7, b"one");
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(read_all(7, &damaged), (vec![], 0));
        assert_eq!(read_all(8, &frame(7, b"one")), (vec![], 0), "another kind of record");
    }
}
