//! The agent's on-disk queue of metric batches: store and forward.
//!
//! A batch counts as taken only once it is appended and fsynced here. It
//! leaves the queue only when the master has acknowledged it (the master
//! acks after its own durable write). A crash (kill -9, power loss) loses
//! nothing that was appended: on open, segments are scanned, a torn last
//! record is cut off, and everything left is sent again (the master drops
//! duplicates). Bounded by a size and an age cap: the oldest batches are
//! dropped first, and drops are counted.
//!
//! Layout: `DIR/seg-<first seq>.q` segment files of records
//! `[magic u32][len u32][crc32 u32][seq u64][collected_ms i64][payload]`
//! (little-endian), and `DIR/state` (`NEXT_SEQ DROPPED_TOTAL`), which keeps
//! the sequence counter going when every segment was acknowledged.
//! Records are appended in sequence order.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const MAGIC: u32 = 0x464d_5152; // "FMQR"
const HEADER: usize = 4 + 4 + 4 + 8 + 8;
/// A segment is closed after this many records or bytes.
const SEGMENT_RECORDS: usize = 64;
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Largest payload a record may hold.
const MAX_RECORD: usize = 2 * 1024 * 1024;

/// How much the queue may hold before it drops its oldest batches.
#[derive(Clone, Copy, Debug)]
pub struct QueueCap {
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Default for QueueCap {
    /// 256 MiB or a week of batches: days of metrics at the default interval.
    fn default() -> Self {
        QueueCap { max_bytes: 256 * 1024 * 1024, max_age: Duration::from_secs(7 * 24 * 3600) }
    }
}

struct Record {
    seq: u64,
    collected_ms: i64,
    offset: u64,
    len: u32,
}

struct Segment {
    path: PathBuf,
    records: Vec<Record>,
    bytes: u64,
}

/// What the queue holds, for the agent's own metrics and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub batches: u64,
    pub bytes: u64,
    pub dropped_total: u64,
    pub oldest_ms: Option<i64>,
}

pub struct MetricQueue {
    dir: PathBuf,
    segments: Vec<Segment>,
    acked: BTreeSet<u64>,
    next_seq: u64,
    dropped_total: u64,
    cap: QueueCap,
}

impl MetricQueue {
    /// Opens (or creates) the queue; a torn last record is cut off.
    pub fn open(dir: &Path, cap: QueueCap) -> Result<MetricQueue> {
        fogmesh_common::private_files::ensure_private_dir(dir).context("create the metric queue folder")?;
        let state = read_state(dir);
        let (mut next_seq, dropped_total) = state.unwrap_or((1, 0));
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seg-") && n.ends_with(".q")))
            .collect();
        paths.sort();
        let mut segments = Vec::new();
        for path in paths {
            let segment = scan(&path)?;
            if let Some(last) = segment.records.last() {
                next_seq = next_seq.max(last.seq + 1);
            }
            if segment.records.is_empty() {
                let _ = fs::remove_file(&path);
            } else {
                segments.push(segment);
            }
        }
        let fresh = state.is_none() && segments.is_empty();
        if fresh {
            // A new queue, or its folder was lost: start above anything sent
            // before (the time in microseconds), so an old ack never matches
            // a new batch.
            next_seq = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
        }
        let queue = MetricQueue { dir: dir.to_path_buf(), segments, acked: BTreeSet::new(), next_seq: next_seq.max(1), dropped_total, cap };
        if fresh {
            queue.write_state()?;
        }
        Ok(queue)
    }

    /// The sequence number the next batch gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a batch and fsyncs it; returns only once it is durable.
    pub fn append(&mut self, seq: u64, collected_ms: i64, payload: &[u8]) -> Result<()> {
        if seq < self.next_seq {
            bail!("batch {seq} is older than the queue's next sequence {}", self.next_seq);
        }
        if payload.len() > MAX_RECORD {
            bail!("batch of {} bytes exceeds the {MAX_RECORD} byte record limit", payload.len());
        }
        let rotate = self.segments.last().is_none_or(|s| s.records.len() >= SEGMENT_RECORDS || s.bytes >= SEGMENT_BYTES);
        if rotate {
            let path = self.dir.join(format!("seg-{seq:020}.q"));
            self.segments.push(Segment { path, records: Vec::new(), bytes: 0 });
        }
        let segment = self.segments.last_mut().context("a segment exists")?;
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&MAGIC.to_le_bytes());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(&collected_ms.to_le_bytes());
        record.extend_from_slice(payload);
        let mut file = fogmesh_common::private_files::private_options()
            .create(true)
            .append(true)
            .open(&segment.path)
            .with_context(|| format!("open {}", segment.path.display()))?;
        let offset = file.seek(SeekFrom::End(0))?;
        let written = file.write_all(&record).and_then(|_| file.sync_data());
        if let Err(e) = written {
            // Leave no half record behind: the disk may be full.
            let _ = file.set_len(offset);
            return Err(e).with_context(|| format!("append to {}", segment.path.display()));
        }
        if rotate {
            sync_dir(&self.dir);
        }
        segment.records.push(Record { seq, collected_ms, offset, len: payload.len() as u32 });
        segment.bytes = offset + record.len() as u64;
        self.next_seq = seq + 1;
        Ok(())
    }

    /// The payload of a batch still in the queue.
    pub fn read(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        for s in &self.segments {
            if let Some(r) = s.records.iter().find(|r| r.seq == seq) {
                let mut file = File::open(&s.path)?;
                file.seek(SeekFrom::Start(r.offset + HEADER as u64))?;
                let mut buf = vec![0; r.len as usize];
                file.read_exact(&mut buf)?;
                return Ok(Some(buf));
            }
        }
        Ok(None)
    }

    /// Batches not acknowledged yet, oldest first.
    pub fn unacked(&self) -> Vec<u64> {
        self.segments.iter().flat_map(|s| s.records.iter().map(|r| r.seq)).filter(|seq| !self.acked.contains(seq)).collect()
    }

    /// The master stored these: a segment goes once all its batches are acked.
    pub fn ack(&mut self, seqs: &[u64]) -> Result<()> {
        self.acked.extend(seqs.iter().copied());
        let last = self.segments.len().saturating_sub(1);
        let mut keep = Vec::with_capacity(self.segments.len());
        let mut removed = false;
        for (i, s) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            // The open segment stays until a newer one exists.
            let done = i < last && s.records.iter().all(|r| self.acked.contains(&r.seq));
            if done {
                for r in &s.records {
                    self.acked.remove(&r.seq);
                }
                fs::remove_file(&s.path).with_context(|| format!("remove {}", s.path.display()))?;
                removed = true;
            } else {
                keep.push(s);
            }
        }
        self.segments = keep;
        if removed {
            self.write_state()?;
        }
        Ok(())
    }

    /// Drops the oldest segments while the queue is over its cap; returns
    /// how many batches went.
    pub fn enforce_cap(&mut self, now_ms: i64) -> Result<u64> {
        let mut dropped = 0;
        loop {
            let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
            let too_old = self.segments.first().and_then(|s| s.records.first()).is_some_and(|r| now_ms - r.collected_ms > self.cap.max_age.as_millis() as i64);
            if self.segments.len() <= 1 || !(bytes > self.cap.max_bytes || too_old) {
                break;
            }
            let oldest = self.segments.remove(0);
            let unacked = oldest.records.iter().filter(|r| !self.acked.contains(&r.seq)).count() as u64;
            for r in &oldest.records {
                self.acked.remove(&r.seq);
            }
            fs::remove_file(&oldest.path).with_context(|| format!("remove {}", oldest.path.display()))?;
            dropped += unacked;
        }
        if dropped > 0 {
            self.dropped_total += dropped;
            tracing::warn!(dropped, total = self.dropped_total, "metric queue over its cap: dropped the oldest batches");
            self.write_state()?;
        }
        Ok(dropped)
    }

    pub fn stats(&self) -> QueueStats {
        let unacked = self.unacked();
        QueueStats {
            batches: unacked.len() as u64,
            bytes: self.segments.iter().map(|s| s.bytes).sum(),
            dropped_total: self.dropped_total,
            oldest_ms: self.segments.iter().flat_map(|s| &s.records).find(|r| !self.acked.contains(&r.seq)).map(|r| r.collected_ms),
        }
    }

    fn write_state(&self) -> Result<()> {
        let tmp = self.dir.join("state.tmp");
        let mut f = fogmesh_common::private_files::create_private(&tmp)?;
        f.write_all(format!("{} {}\n", self.next_seq, self.dropped_total).as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join("state"))?;
        sync_dir(&self.dir);
        Ok(())
    }
}

/// `(next sequence, drops so far)`, if the queue has a state file.
fn read_state(dir: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(dir.join("state")).ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
    Some((parts.next().flatten()?, parts.next().flatten().unwrap_or(0)))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Reads a segment's records; cuts the file after the last whole, valid one.
fn scan(path: &Path) -> Result<Segment> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos + HEADER <= bytes.len() {
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let len = word(pos + 4) as usize;
        if word(pos) != MAGIC || len > MAX_RECORD || pos + HEADER + len > bytes.len() {
            break;
        }
        let payload = &bytes[pos + HEADER..pos + HEADER + len];
        if crc32fast::hash(payload) != word(pos + 8) {
            break;
        }
        let seq = u64::from_le_bytes(bytes[pos + 12..pos + 20].try_into().unwrap_or([0; 8]));
        let collected_ms = i64::from_le_bytes(bytes[pos + 20..pos + 28].try_into().unwrap_or([0; 8]));
        records.push(Record { seq, collected_ms, offset: pos as u64, len: len as u32 });
        pos += HEADER + len;
    }
    if pos < bytes.len() {
        tracing::warn!(file = %path.display(), kept = pos, lost = bytes.len() - pos, "metric queue segment ends in a torn record: cut off");
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(pos as u64)?;
        f.sync_all()?;
    }
    Ok(Segment { path: path.to_path_buf(), records, bytes: pos as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue folder whose sequence counter stands at 1.
    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fm-queue-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("state"), "1 0\n").unwrap();
        d
    }

    #[test]
    fn a_queue_without_state_starts_above_any_earlier_sequence() {
        let d = std::env::temp_dir().join(format!("fm-queue-fresh-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
        let q = MetricQueue::open(&d, QueueCap::default()).unwrap();
        assert!(q.next_seq() >= before, "a lost queue must not reuse sequence numbers an old ack could match");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_queue_with_batches_but_no_state_file_counts_on_from_its_batches() {
        // The state file is written only when segments go; a kill -9 before
        // that must not make the sequence jump (it did: a gap in the batches).
        let d = dir("nostate");
        let mut q = MetricQueue::open(&d, QueueCap::default()).unwrap();
        for seq in 1..=3 {
            q.append(seq, 0, b"b").unwrap();
        }
        drop(q);
        fs::remove_file(d.join("state")).unwrap();
        assert_eq!(MetricQueue::open(&d, QueueCap::default()).unwrap().next_seq(), 4);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn appends_survive_reopen_and_acks_remove_whole_segments() {
        let d = dir("reopen");
        let mut q = MetricQueue::open(&d, QueueCap::default()).unwrap();
        for seq in 1..=150 {
            q.append(seq, seq as i64 * 1000, format!("batch {seq}").as_bytes()).unwrap();
        }
        drop(q);
        let mut q = MetricQueue::open(&d, QueueCap::default()).unwrap();
        assert_eq!(q.unacked().len(), 150);
        assert_eq!(q.read(77).unwrap().unwrap(), b"batch 77");
        assert_eq!(q.next_seq(), 151);
        q.ack(&(1..=70).collect::<Vec<_>>()).unwrap();
        assert_eq!(q.unacked().first(), Some(&71), "segment 1 (1..=64) is gone, 65..=70 wait for their segment");
        assert_eq!(fs::read_dir(&d).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("seg-")).count(), 2);
        q.ack(&(71..=150).collect::<Vec<_>>()).unwrap();
        drop(q);
        let q = MetricQueue::open(&d, QueueCap::default()).unwrap();
        assert_eq!(q.next_seq(), 151, "the counter survives an emptied queue");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_rest_kept() {
        let d = dir("torn");
        let mut q = MetricQueue::open(&d, QueueCap::default()).unwrap();
        q.append(1, 1, b"first").unwrap();
        q.append(2, 2, b"second").unwrap();
        let seg = q.segments[0].path.clone();
        drop(q);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let mut q = MetricQueue::open(&d, QueueCap::default()).unwrap();
        assert_eq!(q.unacked(), vec![1]);
        q.append(2, 2, b"second again").unwrap();
        assert_eq!(q.read(2).unwrap().unwrap(), b"second again");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn over_the_cap_the_oldest_go_first_and_are_counted() {
        let d = dir("cap");
        let cap = QueueCap { max_bytes: 10_000, max_age: Duration::from_secs(3600) };
        let mut q = MetricQueue::open(&d, cap).unwrap();
        for seq in 1..=200 {
            q.append(seq, 0, &[7u8; 100]).unwrap();
        }
        let dropped = q.enforce_cap(0).unwrap();
        assert!(dropped >= 64 && q.stats().bytes <= 10_000 + 64 * 128, "dropped {dropped}, {:?}", q.stats());
        assert_eq!(q.stats().dropped_total, dropped);
        assert!(q.unacked()[0] > 64, "the oldest went");
        assert_eq!(*q.unacked().last().unwrap(), 200, "the newest stay");
        // Age: everything older than the cap goes (but the open segment).
        let aged = q.enforce_cap(10_000_000).unwrap();
        assert!(aged > 0);
        drop(q);
        assert_eq!(MetricQueue::open(&d, cap).unwrap().stats().dropped_total, dropped + aged, "drops are remembered");
        let _ = fs::remove_dir_all(&d);
    }
}
