//! Frames on the wire between camera and receiver. Each frame is a JSON
//! header line followed by its JPEG bytes. Over TCP the header names the
//! frame's length; over UDP a frame travels as numbered chunks of at most
//! `UDP_CHUNK` bytes, each with its own header, and is reassembled by the
//! receiver (a frame missing a chunk is dropped, as UDP video is).

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Largest frame accepted: a 640 px JPEG is ~50-100 KB.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// Longest header line accepted.
const MAX_HEADER_BYTES: usize = 4096;
/// Payload bytes per UDP datagram (below the 64 KiB datagram limit).
pub const UDP_CHUNK: usize = 60_000;
/// How long an incomplete UDP frame waits for its missing chunks.
const UDP_REASSEMBLY_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    pub camera: String,
    pub seq: u64,
    /// When the camera took the frame (Unix ms).
    pub captured_ms: u64,
    /// Bytes of the whole frame.
    pub len: usize,
    /// UDP only: this datagram's chunk index and the frame's chunk count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<(u32, u32)>,
}

impl FrameHeader {
    /// The frame's name in the queue and in results: sortable by capture time.
    pub fn id(&self) -> String {
        format!("{:013}-{}-{:08}", self.captured_ms, self.camera, self.seq)
    }

    /// (captured ms, camera, seq) back from an [`id`](Self::id).
    pub fn parse_id(id: &str) -> Option<(u64, String, u64)> {
        let (captured, rest) = id.split_once('-')?;
        let (camera, seq) = rest.rsplit_once('-')?;
        Some((captured.parse().ok()?, camera.to_string(), seq.parse().ok()?))
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.len == 0 || self.len > MAX_FRAME_BYTES {
            bail!("frame {} is {} bytes; frames must be 1..={MAX_FRAME_BYTES} bytes", self.seq, self.len);
        }
        if self.camera.is_empty() || self.camera.len() > 64 || !self.camera.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("camera name {:?} must be 1-64 letters, digits, '-' or '_'", self.camera);
        }
        Ok(())
    }
}

/// Writes one frame to a TCP stream.
pub fn write_tcp(out: &mut impl Write, header: &FrameHeader, jpeg: &[u8]) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.write_all(jpeg)?;
    out.flush()
}

/// Reads the next frame from a TCP stream; `Ok(None)` when the peer closed
/// the connection between frames.
pub fn read_tcp(input: &mut impl BufRead) -> anyhow::Result<Option<(FrameHeader, Vec<u8>)>> {
    let mut line = Vec::new();
    let n = input.take(MAX_HEADER_BYTES as u64 + 1).read_until(b'\n', &mut line).context("read frame header")?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        bail!("frame header is longer than {MAX_HEADER_BYTES} bytes or cut short");
    }
    let header: FrameHeader = serde_json::from_slice(&line).context("frame header is not the expected JSON")?;
    header.check()?;
    let mut jpeg = vec![0; header.len];
    input.read_exact(&mut jpeg).with_context(|| format!("frame {} ends before its {} bytes", header.seq, header.len))?;
    Ok(Some((header, jpeg)))
}

/// The datagrams of one frame.
pub fn udp_datagrams(header: &FrameHeader, jpeg: &[u8]) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = jpeg.chunks(UDP_CHUNK).collect();
    let count = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let h = FrameHeader { chunk: Some((i as u32, count)), ..header.clone() };
            let mut d = serde_json::to_vec(&h).unwrap_or_default();
            d.push(b'\n');
            d.extend_from_slice(part);
            d
        })
        .collect()
}

/// Reassembles UDP frames from their chunks.
#[derive(Default)]
pub struct UdpReassembly {
    partial: HashMap<(String, u64), Partial>,
}

struct Partial {
    header: FrameHeader,
    chunks: Vec<Option<Vec<u8>>>,
    first_seen: Instant,
}

impl UdpReassembly {
    /// Takes one datagram; returns the frame it completes, if any.
    pub fn take(&mut self, datagram: &[u8]) -> anyhow::Result<Option<(FrameHeader, Vec<u8>)>> {
        let split = datagram.iter().position(|b| *b == b'\n').filter(|p| *p <= MAX_HEADER_BYTES).context("datagram has no frame header line")?;
        let header: FrameHeader = serde_json::from_slice(&datagram[..split]).context("datagram header is not the expected JSON")?;
        header.check()?;
        let (index, count) = header.chunk.context("datagram header has no chunk index")?;
        let expected = header.len.div_ceil(UDP_CHUNK) as u32;
        if count != expected || index >= count {
            bail!("chunk {index}/{count} does not fit a frame of {} bytes", header.len);
        }
        let key = (header.camera.clone(), header.seq);
        let partial = self.partial.entry(key.clone()).or_insert_with(|| Partial {
            header: FrameHeader { chunk: None, ..header.clone() },
            chunks: vec![None; count as usize],
            first_seen: Instant::now(),
        });
        if partial.header.len != header.len {
            bail!("chunks of frame {} disagree on its length", header.seq);
        }
        partial.chunks[index as usize] = Some(datagram[split + 1..].to_vec());
        if partial.chunks.iter().any(Option::is_none) {
            return Ok(None);
        }
        let Some(done) = self.partial.remove(&key) else { return Ok(None) };
        let jpeg: Vec<u8> = done.chunks.into_iter().flatten().flatten().collect();
        if jpeg.len() != done.header.len {
            bail!("frame {} reassembled to {} bytes, its header says {}", done.header.seq, jpeg.len(), done.header.len);
        }
        Ok(Some((done.header, jpeg)))
    }

    /// Forgets frames that waited too long for a chunk; returns how many.
    pub fn expire(&mut self) -> usize {
        let before = self.partial.len();
        self.partial.retain(|_, p| p.first_seen.elapsed() < UDP_REASSEMBLY_WAIT);
        before - self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize) -> FrameHeader {
        FrameHeader { camera: "cam-1".into(), seq: 7, captured_ms: 1_700_000_000_000, len, chunk: None }
    }

    #[test]
    fn tcp_frames_round_trip_and_bad_headers_are_named() {
        let jpeg = vec![9u8; 1234];
        let mut wire = Vec::new();
        write_tcp(&mut wire, &header(jpeg.len()), &jpeg).unwrap();
        write_tcp(&mut wire, &header(jpeg.len()), &jpeg).unwrap();
        let mut input = std::io::BufReader::new(&wire[..]);
        for _ in 0..2 {
            let (h, body) = read_tcp(&mut input).unwrap().unwrap();
            assert_eq!((h.seq, body), (7, jpeg.clone()));
        }
        assert!(read_tcp(&mut input).unwrap().is_none());
        let h = header(1);
        assert_eq!(FrameHeader::parse_id(&h.id()), Some((h.captured_ms, "cam-1".into(), 7)), "{}", h.id());

        let err = read_tcp(&mut std::io::BufReader::new(&b"hello\n"[..])).unwrap_err();
        assert!(format!("{err:#}").contains("not the expected JSON"), "{err:#}");
        let huge = format!("{}\n", serde_json::to_string(&header(MAX_FRAME_BYTES + 1)).unwrap());
        let err = read_tcp(&mut std::io::BufReader::new(huge.as_bytes())).unwrap_err();
        assert!(format!("{err:#}").contains("frames must be"), "{err:#}");
        let cut = [serde_json::to_vec(&header(100)).unwrap(), b"\nshort".to_vec()].concat();
        let err = read_tcp(&mut std::io::BufReader::new(&cut[..])).unwrap_err();
        assert!(format!("{err:#}").contains("ends before its 100 bytes"), "{err:#}");
    }

    #[test]
    fn udp_frames_reassemble_in_any_order_and_incomplete_ones_expire() {
        let jpeg: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        let mut grams = udp_datagrams(&header(jpeg.len()), &jpeg);
        assert_eq!(grams.len(), 3);
        grams.reverse();
        let mut r = UdpReassembly::default();
        assert!(r.take(&grams[0]).unwrap().is_none());
        assert!(r.take(&grams[1]).unwrap().is_none());
        let (h, body) = r.take(&grams[2]).unwrap().unwrap();
        assert_eq!((h.chunk, body), (None, jpeg.clone()));

        assert!(r.take(&grams[0]).unwrap().is_none());
        assert_eq!(r.expire(), 0, "still within its wait");
        assert!(r.take(b"no header").is_err());
    }
}
