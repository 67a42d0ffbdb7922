//! The master's embedded time-series store.
//!
//! Durability: every ingested batch is appended to a write-ahead log and
//! fsynced (group commit: concurrent batches share a flush) before
//! [`Tsdb::append`] returns, so an agent is acked only for what survives a
//! crash. The log rotates into segments; a segment older than the
//! retention is deleted whole. After a rotation the index is written out as
//! a checkpoint (see `checkpoint`) and the segments it holds are deleted,
//! so a start reads the checkpoint and replays only the log after it.
//! A replay stops reading a segment at a torn record, so a write that fails
//! part-way (a full disk) is cut off before the next append, and so is what
//! a failed sync may have lost (its appends fail; agents send them again).
//!
//! Start: the master opens the store with [`Tsdb::open_loading`], which
//! returns at once and replays the log on a thread of its own (the log of
//! hours of a fleet's metrics takes minutes, and the control plane must not
//! wait for it). Until the replay is done the store is `loading`: queries
//! are refused (see [`SeriesSource::unavailable`]) rather than answered from
//! part of the data, and appends are logged and acked as always but held
//! back from the index, then applied after the replayed samples.
//!
//! Memory: per series, Gorilla-compressed chunks of 120 samples plus a small
//! buffer of samples that arrived out of order (late batches replayed by an
//! agent after an outage, at their original times), merged into the chunks
//! when it grows. Samples older than the retention are dropped, and a
//! series keeps at most `MAX_CHUNKS_PER_SERIES` chunks.
//!
//! Limits: a node (its `node` label) starts at most
//! [`Tsdb::max_series_per_node`] series; the index keeps a count per node,
//! so the check costs a map lookup. Samples stamped more than
//! [`MAX_AHEAD`] ahead of the clock are refused (they would outlive the
//! retention by as far). [`Tsdb::append`] says what it refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fogmesh_common::codec;
use fogmesh_common::metrics::{Labels, MatchOp, Matcher, Sample, Series, SeriesSource, METRIC_NAME};
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::chunk::Chunk;
use super::records;
use crate::flusher::GroupFlusher;

/// Out-of-order samples kept aside before they are merged into the chunks.
const OOO_MERGE_AT: usize = 256;
/// Most sealed chunks a series keeps (120 samples each: 6 h at 1 s), so a
/// series sent far faster than planned cannot take unbounded memory; the
/// oldest go first.
const MAX_CHUNKS_PER_SERIES: usize = 180;
/// A log segment is closed after this long or this size.
const SEGMENT_MS: i64 = 10 * 60 * 1000;
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const WAL_MAGIC: u32 = 0x464d_5753; // "FMWS": snappy-compressed records
/// Series a node may have unless told otherwise (`--max-series-per-node`).
pub const DEFAULT_MAX_SERIES_PER_NODE: usize = 10_000;
/// Samples stamped further ahead of the master's clock are refused: from a
/// node whose clock is far ahead, they would outlive the retention by as
/// far, and a series' head would sit in the future (so later, correct
/// samples would all be kept aside as late).
pub const MAX_AHEAD: Duration = Duration::from_secs(10 * 60);

/// A sample as the store takes it: its series, time (unix ms) and value.
pub type StoredSample = (Labels, i64, f64);

/// One logged write: a batch's samples.
#[derive(Serialize, Deserialize)]
struct WalEntry {
    samples: Vec<StoredSample>,
}

/// A [`StoredSample`] read in place: its label pairs borrow from the record.
type SampleRef<'a> = (Vec<(&'a str, &'a str)>, i64, f64);

/// A [`WalEntry`] read in place.
#[derive(Deserialize)]
struct WalEntryRef<'a> {
    #[serde(borrow)]
    samples: Vec<SampleRef<'a>>,
}

/// A label set borrowed from a log record. Hashes like the [`Labels`] with
/// the same pairs (both hash as a slice of string pairs), so the index can
/// be searched without building one.
#[derive(Hash)]
struct LabelsRef<'r, 'a>(&'r [(&'a str, &'a str)]);

impl hashbrown::Equivalent<Labels> for LabelsRef<'_, '_> {
    fn equivalent(&self, key: &Labels) -> bool {
        key.len() == self.0.len() && key.iter().zip(self.0).all(|((k, v), (a, b))| k == *a && v == *b)
    }
}

/// The segment being written.
struct Segment {
    file: File,
    path: PathBuf,
    /// Its start (unix ms), as in its name.
    start: i64,
    /// Bytes of whole records: where the next one goes.
    len: u64,
    /// Bytes a sync found on disk.
    synced: u64,
    /// The file may hold bytes past `len` (a write failed part-way, or a
    /// sync failed) that could not be cut off yet: nothing is appended
    /// until they are, or a replay would stop at them.
    torn: bool,
}

impl Segment {
    /// Cuts the file back to its last whole record.
    fn cut_back(&mut self) -> Result<()> {
        self.file
            .set_len(self.len)
            .with_context(|| format!("cut the metrics log {} back to its last whole record (byte {})", self.path.display(), self.len))?;
        self.torn = false;
        Ok(())
    }
}

#[derive(Default)]
struct WalState {
    segment: Option<Segment>,
    /// Bumped when records not yet known to be on disk are cut off: an
    /// append whose record was written before a bump is not stored.
    cuts: u64,
}

impl WalState {
    /// A sync of segment `start` found everything up to `len` on disk
    /// (unless records were cut meanwhile: then `len` may be gone).
    fn synced(&mut self, start: i64, len: u64, cuts: u64) {
        if self.cuts != cuts {
            return;
        }
        if let Some(s) = self.segment.as_mut().filter(|s| s.start == start) {
            s.synced = s.synced.max(len.min(s.len));
        }
    }

    /// A sync of segment `start` failed: what was written since the last
    /// good sync may not be on disk, whatever a later sync says (Linux
    /// reports a lost write-back once), and a hole there would stop a
    /// replay before every later record. So it is cut off, and the appends
    /// that wrote it fail (their agents send them again).
    fn sync_failed(&mut self, start: i64) {
        self.cuts += 1;
        if let Some(s) = self.segment.as_mut().filter(|s| s.start == start && s.len > s.synced) {
            s.len = s.synced;
            s.torn = true;
            if let Err(e) = s.cut_back() {
                tracing::error!(error = %format!("{e:#}"), "metrics log appends are refused until it can be cut back");
            }
        }
    }
}

/// Where a record went: whether it is still there after the flush.
#[must_use]
struct Written {
    cuts: u64,
}

/// Disk faults a test injects where it cannot fill a real disk.
#[cfg(test)]
#[derive(Default)]
struct Faults {
    /// Bytes the disk still takes: a write past them writes what fits and
    /// fails as a full disk does.
    space: Option<u64>,
    /// Syncs fail (as after a lost write-back).
    fail_syncs: bool,
}

struct Wal {
    dir: PathBuf,
    current: Arc<Mutex<WalState>>,
    flusher: GroupFlusher,
    /// No new segment starts before this: after the last segment and the
    /// newest checkpoint's cut of an earlier run, even if the clock went
    /// back since (a segment named before the cut would be taken as held
    /// by the checkpoint, and skipped).
    floor_ms: i64,
    #[cfg(test)]
    faults: Arc<Mutex<Faults>>,
}

impl Wal {
    fn open(dir: &Path) -> Result<Wal> {
        let current: Arc<Mutex<WalState>> = Arc::default();
        #[cfg(test)]
        let faults: Arc<Mutex<Faults>> = Arc::default();
        let syncing = current.clone();
        #[cfg(test)]
        let sync_faults = faults.clone();
        let flusher = GroupFlusher::start("tsdb-wal", move || {
            // Sync a clone of the handle so appends need not wait for the disk.
            let taken = {
                let state = syncing.lock().unwrap_or_else(|e| e.into_inner());
                match &state.segment {
                    Some(s) => Some((s.file.try_clone()?, s.start, s.len, state.cuts, s.path.clone())),
                    None => None,
                }
            };
            let Some((file, start, len, cuts, path)) = taken else { return Ok(()) };
            #[cfg(test)]
            let result = if sync_faults.lock().unwrap_or_else(|e| e.into_inner()).fail_syncs { Err(std::io::Error::other("injected sync failure")) } else { file.sync_data() };
            #[cfg(not(test))]
            let result = file.sync_data();
            let mut state = syncing.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(()) => {
                    state.synced(start, len, cuts);
                    Ok(())
                }
                Err(e) => {
                    state.sync_failed(start);
                    Err(e).with_context(|| format!("sync the metrics log {}", path.display()))
                }
            }
        })?;
        let last_segment = segments(dir)?.last().and_then(|p| segment_start(p));
        let floor_ms = last_segment.max(checkpoint::newest_cut(dir)?).map_or(i64::MIN, |t| t + 1);
        Ok(Wal {
            dir: dir.to_path_buf(),
            current,
            flusher,
            floor_ms,
            #[cfg(test)]
            faults,
        })
    }

    fn state(&self) -> MutexGuard<'_, WalState> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes an entry's payload (see [`compress_entry`]); durable once
    /// `flush` returned and [`Wal::kept`] says it is still there.
    fn write(&self, payload: &[u8], now_ms: i64) -> Result<Written> {
        let record = records::frame(WAL_MAGIC, payload);
        let mut state = self.state();
        if let Some(s) = state.segment.as_mut().filter(|s| s.torn) {
            s.cut_back().context("the metrics log holds a torn record; no append until it is cut off")?;
        }
        let rotate = state.segment.as_ref().is_none_or(|s| now_ms - s.start > SEGMENT_MS || s.len > SEGMENT_BYTES);
        if rotate {
            self.open_segment(&mut state, now_ms)?;
        }
        let cuts = state.cuts;
        let segment = state.segment.as_mut().context("a log segment is open")?;
        if let Err(e) = self.write_record(&mut segment.file, &record) {
            // A full disk may have taken part of the record: cut it off
            // now, or the next record would land after it, and a replay
            // (which stops at a torn record) would drop every later one.
            segment.torn = true;
            if let Err(cut) = segment.cut_back() {
                tracing::error!(error = %format!("{cut:#}"), "metrics log appends are refused until it can be cut back");
            }
            return Err(e).with_context(|| format!("append to the metrics log {}", segment.path.display()));
        }
        segment.len += record.len() as u64;
        Ok(Written { cuts })
    }

    fn write_record(&self, file: &mut File, record: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        {
            let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(space) = faults.space.as_mut() {
                let fits = (*space).min(record.len() as u64);
                *space -= fits;
                if fits < record.len() as u64 {
                    file.write_all(&record[..fits as usize])?;
                    return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "injected: no space left on device"));
                }
            }
        }
        file.write_all(record)
    }

    /// Whether a record `write` wrote is still in the log (after its flush).
    fn kept(&self, written: Written) -> Result<()> {
        if self.state().cuts != written.cuts {
            anyhow::bail!("the metrics log was cut back after a failed sync; the batch was not stored");
        }
        Ok(())
    }

    /// Ends the current segment (if any) and starts one at `now_ms`, or
    /// just after the current one's start; returns the new one's start.
    fn open_segment(&self, state: &mut WalState, now_ms: i64) -> Result<i64> {
        let start = match state.segment.as_ref() {
            Some(old) => {
                if let Err(e) = old.file.sync_data() {
                    let (start, path) = (old.start, old.path.clone());
                    state.sync_failed(start);
                    return Err(e).with_context(|| format!("sync the metrics log {}", path.display()));
                }
                now_ms.max(old.start + 1)
            }
            None => now_ms.max(self.floor_ms),
        };
        let path = self.dir.join(format!("wal-{start:015}.log"));
        let file = fogmesh_common::private_files::private_options().create(true).append(true).open(&path).with_context(|| format!("open {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("read the size of {}", path.display()))?.len();
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        state.segment = Some(Segment { file, path, start, len, synced: 0, torn: false });
        Ok(start)
    }

    /// Starts a new segment now: everything logged so far is in the
    /// segments before the returned start.
    fn cut(&self, now_ms: i64) -> Result<i64> {
        let mut state = self.state();
        self.open_segment(&mut state, now_ms)
    }

    async fn flush(&self) -> Result<()> {
        self.flusher.flush().await
    }

    /// Every entry of `paths` (segments, oldest first); a torn tail is cut
    /// off. `done` hears of each segment read.
    fn replay(paths: &[PathBuf], mut each: impl FnMut(WalEntryRef<'_>), mut done: impl FnMut(usize)) -> Result<usize> {
        let mut n = 0;
        for (i, path) in paths.iter().enumerate() {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let (payloads, pos) = records::read_all(WAL_MAGIC, &bytes);
            for payload in payloads {
                match read_entry(payload, &mut each) {
                    Ok(()) => n += 1,
                    Err(e) => tracing::warn!(file = %path.display(), error = %e, "skipping an undecodable metrics log record"),
                }
            }
            if pos < bytes.len() {
                tracing::warn!(file = %path.display(), lost = bytes.len() - pos, "metrics log ends in a torn record: cut off");
                OpenOptions::new().write(true).open(path)?.set_len(pos as u64)?;
            }
            done(i + 1);
        }
        Ok(n)
    }

    /// Deletes the segments that start before `cut_ms` (a checkpoint holds
    /// their samples).
    fn drop_covered(&self, cut_ms: i64) -> Result<usize> {
        let covered: Vec<PathBuf> = segments(&self.dir)?.into_iter().filter(|p| segment_start(p).is_some_and(|start| start < cut_ms)).collect();
        for path in &covered {
            fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(covered.len())
    }

    /// Deletes whole segments that ended before `cutoff_ms`.
    fn drop_before(&self, cutoff_ms: i64) -> Result<usize> {
        let all = segments(&self.dir)?;
        let mut dropped = 0;
        // A segment's data ends where the next one starts.
        for pair in all.windows(2) {
            if segment_start(&pair[1]).is_some_and(|next| next < cutoff_ms) {
                fs::remove_file(&pair[0])?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }
}

/// An entry as the log keeps it: bincode, snappy-compressed (label sets
/// repeat in every entry: snappy takes most of that out).
fn compress_entry(entry: &WalEntry) -> Result<Vec<u8>> {
    snap::raw::Encoder::new().compress_vec(&codec::encode_record(entry)?).context("compress a metrics log record")
}

/// Hands a logged entry to `each`, its labels borrowed from the record.
fn read_entry(payload: &[u8], each: &mut impl FnMut(WalEntryRef<'_>)) -> Result<(), String> {
    let record = snap::raw::Decoder::new().decompress_vec(payload).map_err(|e| e.to_string())?;
    each(codec::decode_record_borrowed::<WalEntryRef>(&record).map_err(|e| e.to_string())?);
    Ok(())
}

fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| segment_start(p).is_some())
        .collect();
    paths.sort();
    Ok(paths)
}

fn segment_start(path: &Path) -> Option<i64> {
    path.file_name()?.to_str()?.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()
}

#[derive(Default, Serialize, Deserialize)]
pub(super) struct SeriesData {
    labels: Labels,
    sealed: Vec<Chunk>,
    head: Chunk,
    /// Samples older than the head's last one, sorted by time.
    late: Vec<Sample>,
}

impl SeriesData {
    fn append(&mut self, ts: i64, value: f64) {
        if self.head.is_empty() && self.sealed.last().is_none_or(|c| ts > c.last_ts()) || !self.head.is_empty() && ts > self.head.last_ts() {
            if self.head.is_full() {
                self.seal();
            }
            self.head.push(ts, value);
            return;
        }
        if self.chunks_hold(ts) {
            return; // a duplicate: the first write wins
        }
        match self.late.binary_search_by_key(&ts, |s| s.ts_ms) {
            Ok(_) => {} // a duplicate: the first write wins
            Err(i) => self.late.insert(i, Sample { ts_ms: ts, value }),
        }
        if self.late.len() >= OOO_MERGE_AT {
            self.compact();
        }
    }

    /// Whether a chunk already has a sample at `ts`.
    fn chunks_hold(&self, ts: i64) -> bool {
        self.sealed.iter().chain(std::iter::once(&self.head)).any(|c| c.holds(ts))
    }

    /// Samples in `[start, end]`, time ordered, one per time stamp.
    fn range(&self, start: i64, end: i64) -> Vec<Sample> {
        let mut out: Vec<Sample> = Vec::new();
        for c in self.sealed.iter().chain(std::iter::once(&self.head)) {
            if c.is_empty() || c.last_ts() < start || c.first_ts() > end {
                continue;
            }
            out.extend(c.iter().skip_while(|(t, _)| *t < start).take_while(|(t, _)| *t <= end).map(|(ts_ms, value)| Sample { ts_ms, value }));
        }
        let late = self.late.iter().filter(|s| s.ts_ms >= start && s.ts_ms <= end);
        if self.late.is_empty() {
            return out;
        }
        merge(out, late.copied().collect())
    }

    /// Rewrites the chunks with the late samples merged in.
    fn compact(&mut self) {
        let all = self.range(i64::MIN, i64::MAX);
        self.sealed.clear();
        self.head = Chunk::default();
        self.late.clear();
        for s in all {
            if self.head.is_full() {
                self.seal();
            }
            self.head.push(s.ts_ms, s.value);
        }
    }

    /// The head becomes a sealed chunk; past the cap the oldest chunk goes.
    fn seal(&mut self) {
        self.sealed.push(std::mem::take(&mut self.head));
        if self.sealed.len() > MAX_CHUNKS_PER_SERIES {
            let dropped = self.sealed.remove(0);
            tracing::debug!(series = %self.labels, samples = dropped.len(), "series over its memory cap: oldest chunk dropped");
        }
    }

    /// Drops what ended before `cutoff`; returns whether nothing is left.
    fn expire(&mut self, cutoff: i64) -> bool {
        self.sealed.retain(|c| c.last_ts() >= cutoff);
        self.late.retain(|s| s.ts_ms >= cutoff);
        if !self.head.is_empty() && self.head.last_ts() < cutoff {
            self.head = Chunk::default();
        }
        self.sealed.is_empty() && self.head.is_empty() && self.late.is_empty()
    }

    pub(super) fn samples(&self) -> usize {
        self.sealed.iter().map(Chunk::len).sum::<usize>() + self.head.len() + self.late.len()
    }

    pub(super) fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Whether a series read from a checkpoint holds together.
    pub(super) fn is_sound(&self) -> bool {
        self.sealed.iter().chain(std::iter::once(&self.head)).all(Chunk::is_sound) && self.late.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms)
    }

    fn bytes(&self) -> usize {
        self.sealed.iter().map(Chunk::bytes).sum::<usize>() + self.head.bytes() + self.late.len() * std::mem::size_of::<Sample>()
    }
}

/// Two time-ordered lists into one; on equal time stamps the first list wins.
fn merge(a: Vec<Sample>, b: Vec<Sample>) -> Vec<Sample> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let take_a = j >= b.len() || (i < a.len() && a[i].ts_ms <= b[j].ts_ms);
        if take_a {
            if j < b.len() && a[i].ts_ms == b[j].ts_ms {
                j += 1;
            }
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out
}

#[derive(Default)]
struct Index {
    series: Vec<SeriesData>,
    by_labels: hashbrown::HashMap<Labels, usize>,
    /// `__name__` value -> series ids.
    by_name: HashMap<String, Vec<usize>>,
    /// Per series: whether it counts against its node's cap. Series keep
    /// their place when retention empties them (see `checkpoint_now`), so
    /// an emptied one stops counting, and counts again when it gets a
    /// sample (or is admitted for one).
    counted: Vec<bool>,
    /// `node` label value -> series counted: what the cap is checked against.
    per_node: HashMap<String, usize>,
}

impl Index {
    fn insert(&mut self, labels: Labels, ts: i64, value: f64) {
        let id = match self.by_labels.get(&labels) {
            Some(id) => *id,
            None => self.add_series(SeriesData { labels, ..Default::default() }),
        };
        self.append_to(id, ts, value);
    }

    fn append_to(&mut self, id: usize, ts: i64, value: f64) {
        self.series[id].append(ts, value);
        self.count(id, true);
    }

    /// Registers a series not in the index yet; returns its id.
    fn add_series(&mut self, series: SeriesData) -> usize {
        let id = self.series.len();
        self.by_name.entry(series.labels.name().unwrap_or("").to_string()).or_default().push(id);
        self.by_labels.insert(series.labels.clone(), id);
        self.series.push(series);
        self.counted.push(false);
        self.count(id, true);
        id
    }

    /// Whether series `id` counts against its node's cap.
    fn count(&mut self, id: usize, counted: bool) {
        if self.counted[id] == counted {
            return;
        }
        self.counted[id] = counted;
        let node = self.series[id].labels.get("node").unwrap_or("");
        if counted {
            *self.per_node.entry(node.to_string()).or_default() += 1;
        } else if let Some(n) = self.per_node.get_mut(node) {
            *n = n.saturating_sub(1);
        }
    }

    /// Series of `node` that count against its cap.
    fn series_of(&self, node: &str) -> usize {
        self.per_node.get(node).copied().unwrap_or(0)
    }

    /// The series a sample of `labels` goes to, if its node may have it:
    /// one the index counts, or a new one while the node has fewer than
    /// `cap`. A new series is registered (and counted) at once, so two
    /// batches of a node in flight cannot both take its last place.
    fn admit(&mut self, labels: &Labels, cap: usize) -> Option<usize> {
        let found = self.by_labels.get(labels).copied();
        if let Some(id) = found.filter(|&id| self.counted[id]) {
            return Some(id);
        }
        if self.series_of(labels.get("node").unwrap_or("")) >= cap {
            return None;
        }
        match found {
            Some(id) => {
                self.count(id, true);
                Some(id)
            }
            None => Some(self.add_series(SeriesData { labels: labels.clone(), ..Default::default() })),
        }
    }

    /// Drops what is past `cutoff`; an emptied series stops counting.
    fn expire(&mut self, cutoff: i64) {
        for id in 0..self.series.len() {
            if self.series[id].expire(cutoff) {
                self.count(id, false);
            }
        }
    }

    /// [`Index::insert`] from borrowed labels (a log replay): allocates
    /// only for a series not seen before.
    fn insert_borrowed(&mut self, pairs: &[(&str, &str)], ts: i64, value: f64) {
        match self.by_labels.get(&LabelsRef(pairs)) {
            Some(&id) => self.append_to(id, ts, value),
            None => self.insert(Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()), ts, value),
        }
    }

    /// An index of the series of a checkpoint, without what is past `cutoff`.
    fn from_series(series: Vec<SeriesData>, cutoff: i64) -> Index {
        let mut index = Index::default();
        for mut s in series {
            if !s.expire(cutoff) && !index.by_labels.contains_key(&s.labels) {
                index.add_series(s);
            }
        }
        index
    }

    fn candidates(&self, matchers: &[Matcher]) -> Vec<usize> {
        match matchers.iter().find(|m| m.name == METRIC_NAME && m.op == MatchOp::Equal) {
            Some(m) => self.by_name.get(&m.value).cloned().unwrap_or_default(),
            None => (0..self.series.len()).collect(),
        }
    }
}

/// Sizes of the store, for `/metrics` and the benchmark.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TsdbStats {
    pub series: usize,
    pub samples: usize,
    pub bytes: usize,
}

pub struct Tsdb {
    index: RwLock<Index>,
    /// `Some` while the log of the last run is being replayed. Lock order:
    /// this, then `index`.
    loading: Mutex<Option<Loading>>,
    /// Becomes true when the replay is done.
    loaded: tokio::sync::watch::Sender<bool>,
    wal: Wal,
    retention: Duration,
    /// Held shared by an append from its log write until its samples are
    /// in the index, and exclusively by a checkpoint while it cuts the log:
    /// at the cut, every sample logged before it is in the index.
    appending: tokio::sync::RwLock<()>,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
    max_series_per_node: AtomicUsize,
}

/// What [`Tsdb::append`] did with a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Appended {
    pub stored: usize,
    /// Stamped more than [`MAX_AHEAD`] ahead of the store's clock.
    pub refused_future: usize,
    /// Would have started a series past the node's cap.
    pub refused_series_limit: usize,
    /// Positions (in the batch) of the refused samples, ascending.
    pub refused: Vec<usize>,
}

/// What a checkpoint wrote and freed.
#[derive(Debug)]
pub struct CheckpointDone {
    pub series: u64,
    pub segments_removed: usize,
}

/// The replay of the log at start, as it goes.
struct Loading {
    segments: usize,
    segments_read: usize,
    /// Appends logged meanwhile, applied after the replayed samples; kept
    /// as logged (compressed, about 17 bytes a sample): a long replay at a
    /// fleet's ingest rate holds millions.
    held: Vec<Vec<u8>>,
}

/// Reads the newest checkpoint and replays the `segments` after it into a
/// new index, keeping what is within the retention.
fn replay_index(dir: &Path, segments: &[PathBuf], retention: Duration, done: impl FnMut(usize)) -> (Index, Result<usize>) {
    let cutoff = now_ms() - retention.as_millis() as i64;
    let (mut index, cut_ms) = match checkpoint::load_newest(dir) {
        Ok(Some(loaded)) => {
            tracing::info!(file = %loaded.path.display(), series = loaded.series.len(), "metrics checkpoint read");
            (Index::from_series(loaded.series, cutoff), loaded.cut_ms)
        }
        Ok(None) => (Index::default(), i64::MIN),
        Err(e) => {
            // Its segments are gone: what it held is lost, the log after it is not.
            tracing::error!(error = %format!("{e:#}"), "the metrics checkpoint cannot be read: replaying the log only");
            (Index::default(), i64::MIN)
        }
    };
    let after: Vec<PathBuf> = segments.iter().filter(|p| segment_start(p).is_some_and(|start| start >= cut_ms)).cloned().collect();
    let entries = Wal::replay(
        &after,
        |entry| {
            for (labels, ts, value) in entry.samples {
                if ts >= cutoff {
                    index.insert_borrowed(&labels, ts, value);
                }
            }
        },
        done,
    );
    (index, entries)
}

impl Tsdb {
    /// A store over `index`; `loaded` until a `loading` replay ends.
    fn new(index: Index, loading: Option<Loading>, wal: Wal, retention: Duration) -> Tsdb {
        Tsdb {
            index: RwLock::new(index),
            loaded: tokio::sync::watch::Sender::new(loading.is_none()),
            loading: Mutex::new(loading),
            wal,
            retention,
            appending: Default::default(),
            checkpointing: Default::default(),
            max_series_per_node: AtomicUsize::new(DEFAULT_MAX_SERIES_PER_NODE),
        }
    }

    /// Opens the store in `dir`, replaying its log before it returns.
    pub fn open(dir: &Path, retention: Duration) -> Result<Arc<Tsdb>> {
        fogmesh_common::private_files::ensure_private_dir(dir)?;
        let (index, entries) = replay_index(dir, &segments(dir)?, retention, |_| {});
        let entries = entries?;
        let tsdb = Tsdb::new(index, None, Wal::open(dir)?, retention);
        let stats = tsdb.stats();
        tracing::info!(entries, series = stats.series, samples = stats.samples, "metrics store opened");
        Ok(Arc::new(tsdb))
    }

    /// Opens the store in `dir` at once and replays its log on a thread of
    /// its own; the store is `loading` until that is done.
    pub fn open_loading(dir: &Path, retention: Duration) -> Result<Arc<Tsdb>> {
        fogmesh_common::private_files::ensure_private_dir(dir)?;
        // Only what is there now: appends from here on go to new segments.
        let old = segments(dir)?;
        let loading = Loading { segments: old.len(), segments_read: 0, held: Vec::new() };
        let tsdb = Arc::new(Tsdb::new(Index::default(), Some(loading), Wal::open(dir)?, retention));
        let db = tsdb.clone();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("tsdb-replay".into())
            .spawn(move || {
                let started = Instant::now();
                let (index, entries) = replay_index(&dir, &old, retention, |read| {
                    if let Some(l) = db.loading_guard().as_mut() {
                        l.segments_read = read;
                    }
                });
                let entries = entries.unwrap_or_else(|e| {
                    tracing::error!(error = %format!("{e:#}"), "metrics log replay stopped: serving what was read and every new sample");
                    0
                });
                db.finish_loading(index);
                let stats = db.stats();
                tracing::info!(entries, series = stats.series, samples = stats.samples, took = ?started.elapsed(), "metrics store opened");
            })
            .context("start the metrics log replay")?;
        Ok(tsdb)
    }

    /// Waits up to `patience` for the replay; whether it is done.
    pub async fn wait_loaded(&self, patience: Duration) -> bool {
        let mut loaded = self.loaded.subscribe();
        let done = tokio::time::timeout(patience, loaded.wait_for(|done| *done)).await.is_ok();
        done
    }

    fn loading_guard(&self) -> MutexGuard<'_, Option<Loading>> {
        self.loading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The replayed index takes over, then the appends held meanwhile.
    fn finish_loading(&self, replayed: Index) {
        let mut loading = self.loading_guard();
        let held = loading.take().map(|l| l.held).unwrap_or_default();
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        *index = replayed;
        for payload in held {
            let applied = read_entry(&payload, &mut |entry| {
                for (labels, ts, value) in entry.samples {
                    index.insert_borrowed(&labels, ts, value);
                }
            });
            if let Err(e) = applied {
                tracing::error!(error = %e, "a held metrics batch could not be read back; it is in the log and returns at the next start");
            }
        }
        self.loaded.send_replace(true);
    }

    /// Stores samples durably: they are logged and fsynced before this
    /// returns, then queryable (once the store has loaded). Samples past
    /// the retention are dropped; samples stamped more than
    /// [`MAX_AHEAD`] ahead of this clock, and samples that would start a
    /// series past their node's cap ([`Tsdb::set_max_series_per_node`]),
    /// are refused: the rest are stored, and the answer says what was not.
    pub async fn append(&self, samples: Vec<StoredSample>) -> Result<Appended> {
        let _appending = self.appending.read().await;
        let now = now_ms();
        let cutoff = now - self.retention.as_millis() as i64;
        let ahead = now.saturating_add(MAX_AHEAD.as_millis() as i64);
        let mut appended = Appended::default();
        let mut kept = Vec::with_capacity(samples.len());
        for (i, sample) in samples.into_iter().enumerate() {
            if sample.1 < cutoff {
                continue;
            }
            if sample.1 > ahead {
                appended.refused_future += 1;
                appended.refused.push(i);
                continue;
            }
            kept.push((i, sample));
        }
        // The cap is checked against the index; while the log replays the
        // counts are not known yet, and the cap is not checked.
        let ids = {
            let loading = self.loading_guard();
            if loading.is_some() {
                None
            } else {
                let cap = self.max_series_per_node();
                let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
                let mut ids = Vec::with_capacity(kept.len());
                kept.retain(|(i, (labels, _, _))| match index.admit(labels, cap) {
                    Some(id) => {
                        ids.push(id);
                        true
                    }
                    None => {
                        appended.refused_series_limit += 1;
                        appended.refused.push(*i);
                        false
                    }
                });
                Some(ids)
            }
        };
        appended.refused.sort_unstable();
        appended.stored = kept.len();
        if kept.is_empty() {
            return Ok(appended);
        }
        let entry = WalEntry { samples: kept.into_iter().map(|(_, sample)| sample).collect() };
        let payload = compress_entry(&entry)?;
        let written = self.wal.write(&payload, now)?;
        self.wal.flush().await?;
        self.wal.kept(written)?;
        // Held under the loading lock, so a replay finishing now cannot
        // replace the index between the check and the insert.
        let mut loading = self.loading_guard();
        if let Some(l) = loading.as_mut() {
            l.held.push(payload);
            return Ok(appended);
        }
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        match ids {
            // Admitted into this index: it is not replaced once loaded.
            Some(ids) => {
                for ((_, ts, value), id) in entry.samples.into_iter().zip(ids) {
                    index.append_to(id, ts, value);
                }
            }
            None => {
                for (labels, ts, value) in entry.samples {
                    index.insert(labels, ts, value);
                }
            }
        }
        Ok(appended)
    }

    /// At most `max` series per node (by the `node` label) from now on; a
    /// node over it (a lower cap, or a replayed log) keeps its series but
    /// starts no new one until retention empties some.
    pub fn set_max_series_per_node(&self, max: usize) {
        self.max_series_per_node.store(max, Ordering::Relaxed);
    }

    pub fn max_series_per_node(&self) -> usize {
        self.max_series_per_node.load(Ordering::Relaxed)
    }

    /// Series of `node` that count against its cap (those with samples,
    /// and those just admitted for some).
    pub fn series_of_node(&self, node: &str) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).series_of(node)
    }

    /// Drops samples and log segments older than the retention (not while
    /// the log is being replayed).
    pub fn expire(&self) -> Result<()> {
        if self.loading_guard().is_some() {
            return Ok(());
        }
        let cutoff = now_ms() - self.retention.as_millis() as i64;
        self.index.write().unwrap_or_else(|e| e.into_inner()).expire(cutoff);
        let dropped = self.wal.drop_before(cutoff)?;
        if dropped > 0 {
            tracing::debug!(dropped, "metrics log segments past the retention removed");
        }
        Ok(())
    }

    /// Writes the index out as a checkpoint and removes the log segments
    /// it holds, when the log holds data logged more than `every` ago (an
    /// idle store's empty segment does not count). Blocking; not while the
    /// log is being replayed.
    pub fn checkpoint(&self, every: Duration) -> Result<Option<CheckpointDone>> {
        let log = segments(&self.wal.dir)?;
        let oldest = log.first().and_then(|p| segment_start(p));
        let logged = log.iter().any(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0));
        if !logged || oldest.is_none_or(|start| start > now_ms() - every.as_millis() as i64) {
            return Ok(None);
        }
        self.checkpoint_now()
    }

    /// [`Tsdb::checkpoint`] whatever the log's length (the benchmark's).
    pub fn checkpoint_now(&self) -> Result<Option<CheckpointDone>> {
        let Ok(_only) = self.checkpointing.try_lock() else {
            return Ok(None);
        };
        if self.loading_guard().is_some() {
            return Ok(None);
        }
        let cut_ms = {
            let _no_append_in_flight = self.appending.blocking_write();
            self.wal.cut(now_ms())?
        };
        let mut writer = checkpoint::Writer::create(&self.wal.dir, cut_ms)?;
        let mut next = 0;
        loop {
            // A record at a time under the read lock: appends wait only
            // for one. Series only grow in number and keep their place.
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            let end = (next + checkpoint::SERIES_PER_RECORD).min(index.series.len());
            if next >= end {
                break;
            }
            writer.add(index.series[next..end].iter())?;
            next = end;
        }
        let series = writer.commit()?;
        let segments_removed = self.wal.drop_covered(cut_ms)?;
        Ok(Some(CheckpointDone { series, segments_removed }))
    }

    pub fn stats(&self) -> TsdbStats {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        TsdbStats {
            series: index.series.iter().filter(|s| s.samples() > 0).count(),
            samples: index.series.iter().map(SeriesData::samples).sum(),
            bytes: index.series.iter().map(SeriesData::bytes).sum(),
        }
    }

    /// Label names that occur in series matching `matchers` (all when empty).
    pub fn label_names(&self, matchers: &[Matcher]) -> Vec<String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut names = BTreeSet::new();
        for id in index.candidates(matchers) {
            let s = &index.series[id];
            if s.samples() > 0 && matchers.iter().all(|m| m.matches(&s.labels)) {
                names.extend(s.labels.iter().map(|(k, _)| k.to_string()));
            }
        }
        names.into_iter().collect()
    }

    /// Values of one label across series matching `matchers`.
    pub fn label_values(&self, name: &str, matchers: &[Matcher]) -> Vec<String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut values = BTreeSet::new();
        for id in index.candidates(matchers) {
            let s = &index.series[id];
            if s.samples() > 0 && matchers.iter().all(|m| m.matches(&s.labels)) {
                if let Some(v) = s.labels.get(name) {
                    values.insert(v.to_string());
                }
            }
        }
        values.into_iter().collect()
    }

    /// Label sets of the series with samples in `[start, end]`.
    pub fn series_labels(&self, matchers: &[Matcher], start: i64, end: i64) -> Vec<Labels> {
        self.select(matchers, start, end).into_iter().map(|s| s.labels).collect()
    }

    /// Samples per metric name, for `/metrics`.
    pub fn counts_by_name(&self) -> BTreeMap<String, usize> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.by_name.iter().map(|(n, ids)| (n.clone(), ids.len())).collect()
    }
}

impl SeriesSource for Tsdb {
    fn unavailable(&self) -> Option<String> {
        self.loading_guard().as_ref().map(|l| {
            format!("the metrics store is loading its log ({} of {} segments read); ask again shortly", l.segments_read, l.segments)
        })
    }

    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<Series> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for id in index.candidates(matchers) {
            let s = &index.series[id];
            if !matchers.iter().all(|m| m.matches(&s.labels)) {
                continue;
            }
            let samples = s.range(start_ms, end_ms);
            if !samples.is_empty() {
                out.push(Series { labels: s.labels.clone(), samples });
            }
        }
        out
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fm-tsdb-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn up(node: &str) -> Labels {
        Labels::metric("up", &[("node", node)])
    }

    #[tokio::test]
    async fn late_and_duplicate_samples_land_in_order_and_survive_a_restart() {
        let d = dir("restart");
        let now = now_ms();
        let db = Tsdb::open(&d, Duration::from_secs(3600)).unwrap();
        // The present first, then a replayed backlog, then a duplicate.
        db.append(vec![(up("a"), now, 10.0)]).await.unwrap();
        db.append((1..=300).map(|i| (up("a"), now - 1000 * (301 - i), i as f64)).collect()).await.unwrap();
        db.append(vec![(up("a"), now - 1000 * 100, 999.0)]).await.unwrap();
        let check = |db: &Tsdb| {
            let got = db.select(&[Matcher::new("node", MatchOp::Equal, "a").unwrap()], now - 400_000, now);
            assert_eq!(got.len(), 1);
            let s = &got[0].samples;
            assert_eq!(s.len(), 301);
            assert!(s.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms), "time ordered");
            assert_eq!(s[200].value, 201.0, "the first write of a time stamp wins");
            assert_eq!(s[300].value, 10.0);
        };
        check(&db);
        drop(db);
        let db = Tsdb::open(&d, Duration::from_secs(3600)).unwrap();
        check(&db);
        let st = db.stats();
        assert_eq!((st.series, st.samples), (1, 301));
        assert_eq!(db.label_values("node", &[]), vec!["a".to_string()]);
        let _ = fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_store_loading_its_log_refuses_queries_and_keeps_appends_for_after() {
        let d = dir("loading");
        let now = now_ms();
        let old = |i: i64| now - 3_600_000 + i * 10;
        {
            // A log long enough to take a while to replay.
            let db = Tsdb::open(&d, Duration::from_secs(7200)).unwrap();
            for batch in 0..100 {
                let samples = (0..2000).map(|i| (Labels::metric("m", &[("n", &(i % 50).to_string())]), old(batch * 2000 + i), 1.0)).collect();
                db.append(samples).await.unwrap();
            }
        }
        let db = Tsdb::open_loading(&d, Duration::from_secs(7200)).unwrap();
        let why = db.unavailable().expect("loading right after open");
        assert!(why.contains("loading its log") && why.contains("segments read"), "{why}");
        db.expire().expect("a sweep while loading leaves the log alone");
        // Logged and acked now, in the index after the replayed samples.
        db.append(vec![(Labels::metric("m", &[("n", "0")]), now, 7.0)]).await.unwrap();
        assert!(db.wait_loaded(Duration::from_secs(60)).await);
        assert_eq!(db.unavailable(), None);
        assert_eq!(db.stats().samples, 200_001);
        let got = db.select(&[Matcher::new("n", MatchOp::Equal, "0").unwrap()], 0, i64::MAX);
        assert_eq!(got[0].samples.len(), 4001);
        assert_eq!(got[0].samples.last().map(|s| (s.ts_ms, s.value)), Some((now, 7.0)));
        drop(db);
        // And the held append was logged: it is there after another start.
        let db = Tsdb::open(&d, Duration::from_secs(7200)).unwrap();
        assert_eq!(db.stats().samples, 200_001);
        let _ = fs::remove_dir_all(&d);
    }

    fn files(d: &Path, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(d).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(prefix)).collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_takes_the_place_of_the_log_it_holds() {
        let d = dir("checkpoint");
        let now = now_ms();
        let keep = Duration::from_secs(3600);
        let db = Tsdb::open(&d, keep).unwrap();
        let checkpoint = |db: &Arc<Tsdb>| {
            let db = db.clone();
            tokio::task::spawn_blocking(move || db.checkpoint(Duration::from_millis(500)).unwrap())
        };
        assert!(checkpoint(&db).await.unwrap().is_none(), "nothing to take while the log is empty");
        // In order, then a late backlog (kept aside from the chunks), in
        // two segments; then more after the checkpoint.
        db.append((0..300).map(|i| (up("a"), now - 300_000 + i * 1000, i as f64)).collect()).await.unwrap();
        db.wal.cut(now_ms()).unwrap();
        db.append((0..100).map(|i| (up("b"), now - 400_000 + i * 2000 + 1, 1.0)).collect()).await.unwrap();
        db.append((0..10).map(|i| (up("a"), now - 350_000 + i * 1000, -1.0)).collect()).await.unwrap();
        assert!(checkpoint(&db).await.unwrap().is_none(), "nothing logged 500 ms ago yet");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let done = checkpoint(&db).await.unwrap().expect("a checkpoint");
        assert_eq!((done.series, done.segments_removed), (2, 2));
        db.append(vec![(up("c"), now, 3.0)]).await.unwrap();
        let before = db.select(&[], 0, i64::MAX);
        drop(db);
        assert_eq!(files(&d, "checkpoint-").len(), 1);
        assert_eq!(files(&d, "wal-").len(), 1, "only the segment after the cut is left");

        let db = Tsdb::open(&d, keep).unwrap();
        assert_eq!(db.select(&[], 0, i64::MAX), before, "a restart reads the checkpoint and the log after it");
        assert_eq!(db.stats().samples, 411);
        drop(db);
        let db = Tsdb::open_loading(&d, keep).unwrap();
        assert!(db.wait_loaded(Duration::from_secs(30)).await);
        assert_eq!(db.select(&[], 0, i64::MAX), before);
        drop(db);

        // A crash while writing the next one leaves a .tmp: it is ignored
        // and removed.
        fs::write(d.join("checkpoint-999999999999999.tmp"), b"half a checkpoint").unwrap();
        let db = Tsdb::open(&d, keep).unwrap();
        assert_eq!(db.select(&[], 0, i64::MAX), before);
        assert!(files(&d, "checkpoint-").iter().all(|n| n.ends_with(".bin")));
        drop(db);

        // A damaged checkpoint is reported and the log after it still read.
        let cp = d.join(&files(&d, "checkpoint-")[0]);
        let mut bytes = fs::read(&cp).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(&cp, bytes).unwrap();
        let db = Tsdb::open(&d, keep).unwrap();
        let left = db.select(&[], 0, i64::MAX);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].labels, up("c"));
        let _ = fs::remove_dir_all(&d);
    }

    /// A checkpoint written by a clock that has gone back since (NTP, a
    /// new battery): the log written after it must still count as after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_after_a_checkpoint_from_a_clock_ahead_is_kept() {
        let d = dir("checkpoint-clock");
        let now = now_ms();
        let keep = Duration::from_secs(3600);
        let db = Tsdb::open(&d, keep).unwrap();
        db.append(vec![(up("a"), now - 1000, 1.0)]).await.unwrap();
        {
            let mut ahead = checkpoint::Writer::create(&d, now + 3_600_000).unwrap();
            ahead.add(db.index.read().unwrap().series.iter()).unwrap();
            ahead.commit().unwrap();
        }
        drop(db);
        let db = Tsdb::open(&d, keep).unwrap();
        db.append(vec![(up("b"), now, 2.0)]).await.unwrap();
        drop(db);
        let db = Tsdb::open(&d, keep).unwrap();
        let names: Vec<Labels> = db.select(&[], 0, i64::MAX).into_iter().map(|s| s.labels).collect();
        assert_eq!(names, vec![up("a"), up("b")], "the sample logged after the checkpoint is kept");
        let _ = fs::remove_dir_all(&d);
    }

    /// Appends racing checkpoints (each one cutting the log and removing
    /// what it covers) lose nothing: every acked sample is there after a
    /// restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_racing_checkpoints_lose_nothing() {
        let d = dir("checkpoint-race");
        let now = now_ms();
        let keep = Duration::from_secs(3600);
        let db = Tsdb::open(&d, keep).unwrap();
        // Many appends in flight at every cut, as under a fleet's ingest.
        let writers: Vec<_> = (0..16i64)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    for batch in 0..50i64 {
                        let samples = (0..25).map(|i| (Labels::metric("m", &[("n", &w.to_string())]), now - 1_000_000 + batch * 25 + i, 1.0)).collect();
                        db.append(samples).await.unwrap();
                    }
                })
            })
            .collect();
        let mut taken = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            let db = db.clone();
            let done = tokio::task::spawn_blocking(move || db.checkpoint_now().unwrap())
            .await
            .unwrap();
            taken += usize::from(done.is_some());
        }
        for w in writers {
            w.await.unwrap();
        }
        assert!(taken > 1, "checkpoints ran while appending ({taken})");
        drop(db);
        let db = Tsdb::open(&d, keep).unwrap();
        assert_eq!(db.stats().samples, 20_000, "after {taken} checkpoints");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn appends_in_any_order_read_back_sorted_and_complete() {
        // A scrambled order (as concurrent ingest and replayed backlogs give).
        let n = 1000i64;
        let mut order: Vec<i64> = (0..n).collect();
        let mut x: u64 = 42;
        for i in (1..order.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (x >> 33) as usize % (i + 1));
        }
        let mut s = SeriesData::default();
        for &i in &order {
            s.append(i * 15_000, i as f64 * 0.5);
        }
        let got = s.range(i64::MIN, i64::MAX);
        assert_eq!(got.len(), n as usize);
        assert_eq!(s.samples(), n as usize);
        for (i, sample) in got.iter().enumerate() {
            assert_eq!((sample.ts_ms, sample.value), (i as i64 * 15_000, i as f64 * 0.5));
        }
        assert_eq!(s.range(15_000 * 10, 15_000 * 20).len(), 11);
    }

    #[test]
    fn a_series_memory_is_capped_oldest_first() {
        let mut s = SeriesData::default();
        let n = (MAX_CHUNKS_PER_SERIES + 3) * 120;
        for i in 0..n as i64 {
            s.append(i * 1000, i as f64);
        }
        assert!(s.sealed.len() <= MAX_CHUNKS_PER_SERIES);
        let kept = s.range(i64::MIN, i64::MAX);
        assert_eq!(kept.last().map(|x| x.value), Some((n - 1) as f64), "the newest stay");
        assert!(kept[0].ts_ms > 0, "the oldest went");
    }

    #[tokio::test]
    async fn retention_drops_old_samples() {
        let d = dir("retention");
        let now = now_ms();
        let db = Tsdb::open(&d, Duration::from_secs(60)).unwrap();
        db.append(vec![(up("a"), now - 120_000, 1.0), (up("a"), now, 2.0)]).await.unwrap();
        let got = db.select(&[], 0, i64::MAX);
        assert_eq!(got[0].samples.len(), 1, "older than the retention at write time");
        let _ = fs::remove_dir_all(&d);
    }
    /// `n` samples of new series whose label values do not compress, so a
    /// batch takes a few KiB of log.
    fn noisy_batch(seed: u64, n: usize, ts: i64) -> Vec<StoredSample> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|_| {
                let id: String = (0..4).map(|_| format!("{:016x}", next())).collect();
                (Labels::metric("noise", &[("id", &id)]), ts, (next() >> 11) as f64)
            })
            .collect()
    }

    /// A disk that fills up: a 64 KiB tmpfs mounted on the test's folder
    /// (short writes and ENOSPC from the kernel), or, where mounting is
    /// not allowed, the same faults injected into the log's writes.
    enum SmallDisk {
        Tmpfs(PathBuf),
        Injected,
    }

    impl SmallDisk {
        fn mount(dir: &Path) -> SmallDisk {
            fs::create_dir_all(dir).unwrap();
            let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(dir).status().is_ok_and(|s| s.success());
            if mounted {
                SmallDisk::Tmpfs(dir.to_path_buf())
            } else {
                eprintln!("cannot mount a tmpfs on {} (not root?): injecting the full disk into the log's writes instead", dir.display());
                SmallDisk::Injected
            }
        }

        /// Fills the disk but for one page.
        fn fill(&self, db: &Tsdb) {
            match self {
                SmallDisk::Tmpfs(dir) => {
                    let mut filler = File::create(dir.join("filler")).unwrap();
                    let page = [0u8; 4096];
                    while filler.write_all(&page).is_ok() {}
                    let len = filler.metadata().unwrap().len();
                    filler.set_len(len.saturating_sub(4096)).unwrap();
                }
                SmallDisk::Injected => db.wal.faults.lock().unwrap().space = Some(4096),
            }
        }

        fn free(&self, db: &Tsdb) {
            match self {
                SmallDisk::Tmpfs(dir) => fs::remove_file(dir.join("filler")).unwrap(),
                SmallDisk::Injected => db.wal.faults.lock().unwrap().space = None,
            }
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            if let SmallDisk::Tmpfs(dir) = self {
                // The log's flusher thread lets go of its file within half a second of the store.
                for _ in 0..50 {
                    let quiet = std::process::Command::new("umount").arg(&*dir).stderr(std::process::Stdio::null()).status();
                    if quiet.is_ok_and(|s| s.success()) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = std::process::Command::new("umount").arg("-l").arg(&*dir).status();
            }
        }
    }

    /// Every sample of `acked` is in `db`, and nothing else.
    fn assert_holds_exactly(db: &Tsdb, acked: &[StoredSample]) {
        let stored: HashMap<Labels, Vec<Sample>> = db.select(&[], 0, i64::MAX).into_iter().map(|s| (s.labels, s.samples)).collect();
        for (labels, ts, value) in acked {
            let found = stored.get(labels).is_some_and(|samples| samples.iter().any(|s| s.ts_ms == *ts && s.value == *value));
            assert!(found, "an acknowledged sample of {labels} is missing after a restart ({} series of {} stored)", stored.len(), acked.len());
        }
        assert_eq!(db.stats().samples, acked.len(), "only what was acknowledged is stored");
    }

    /// A full disk tears a log write part-way; the log cuts the torn bytes
    /// off before the next append, so a restart replays every record
    /// acknowledged after it (a replay stops at a torn record).
    #[tokio::test]
    async fn a_torn_log_write_on_a_full_disk_is_cut_off_before_the_next_append() {
        let d = dir("torn");
        let disk = SmallDisk::mount(&d);
        let store = d.join("store");
        let keep = Duration::from_secs(3600);
        let now = now_ms();
        let db = Tsdb::open(&store, keep).unwrap();
        let mut acked: Vec<StoredSample> = Vec::new();
        let mut seed = 0;
        let mut batch = || {
            seed += 1;
            noisy_batch(seed, 30, now)
        };
        let first = batch();
        db.append(first.clone()).await.unwrap();
        acked.extend(first);
        disk.fill(&db);
        // Appends fit until one does not: it is written in part and fails.
        let mut refused = 0;
        while refused < 2 {
            let samples = batch();
            match db.append(samples.clone()).await {
                Ok(_) => acked.extend(samples),
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(e.contains("append to the metrics log"), "{e}");
                    refused += 1;
                }
            }
            assert!(acked.len() < 30 * 50, "the disk never filled up");
        }
        disk.free(&db);
        for _ in 0..5 {
            let samples = batch();
            db.append(samples.clone()).await.expect("space again");
            acked.extend(samples);
        }
        drop(db);
        let db = Tsdb::open(&store, keep).unwrap();
        assert_holds_exactly(&db, &acked);
        drop(db);
        drop(disk);
        let _ = fs::remove_dir_all(&d);
    }

    /// A failed sync: what was written since the last good one may not be
    /// on disk (a later sync would not say so), so it is cut off and its
    /// append fails; later appends and a restart are whole.
    #[tokio::test]
    async fn a_failed_log_sync_cuts_off_the_records_it_did_not_sync() {
        let d = dir("sync-failed");
        let keep = Duration::from_secs(3600);
        let now = now_ms();
        let db = Tsdb::open(&d, keep).unwrap();
        let mut acked = noisy_batch(1, 10, now);
        db.append(acked.clone()).await.unwrap();
        db.wal.faults.lock().unwrap().fail_syncs = true;
        let err = format!("{:#}", db.append(noisy_batch(2, 10, now)).await.unwrap_err());
        assert!(err.contains("sync the metrics log") && err.contains("injected sync failure"), "{err}");
        db.wal.faults.lock().unwrap().fail_syncs = false;
        let later = noisy_batch(3, 10, now);
        db.append(later.clone()).await.unwrap();
        acked.extend(later);
        assert_holds_exactly(&db, &acked);
        drop(db);
        let db = Tsdb::open(&d, keep).unwrap();
        assert_holds_exactly(&db, &acked);
        let _ = fs::remove_dir_all(&d);
    }
    fn series(node: &str, i: usize) -> Labels {
        Labels::metric("m", &[("node", node), ("i", &i.to_string())])
    }

    /// A node may start at most its cap of series: samples of new series
    /// past it are refused (the rest of the batch is stored), samples of
    /// its series keep coming, another node has its own count, and a series
    /// emptied by retention makes room.
    #[tokio::test]
    async fn a_node_gets_at_most_its_cap_of_series() {
        let d = dir("series-cap");
        let keep = Duration::from_secs(3600);
        let now = now_ms();
        let db = Tsdb::open(&d, keep).unwrap();
        db.set_max_series_per_node(3);
        let batch: Vec<StoredSample> = (0..5).map(|i| (series("a", i), now, i as f64)).chain((0..2).map(|i| (series("b", i), now, 1.0))).collect();
        let got = db.append(batch).await.unwrap();
        assert_eq!(got, Appended { stored: 5, refused_future: 0, refused_series_limit: 2, refused: vec![3, 4] });
        assert_eq!((db.series_of_node("a"), db.series_of_node("b")), (3, 2));
        // Known series go on; a new one of a is still refused, of b not.
        let got = db.append(vec![(series("a", 0), now + 1000, 1.0), (series("a", 9), now + 1000, 1.0), (series("b", 9), now + 1000, 1.0)]).await.unwrap();
        assert_eq!((got.stored, got.refused_series_limit, got.refused), (2, 1, vec![1]));
        let stored: Vec<Labels> = db.select(&[], 0, i64::MAX).into_iter().map(|s| s.labels).collect();
        assert_eq!(stored.len(), 6);
        assert!(!stored.contains(&series("a", 3)) && !stored.contains(&series("a", 9)), "{stored:?}");
        assert_eq!(db.select(&[Matcher::new("i", MatchOp::Equal, "0").unwrap(), Matcher::new("node", MatchOp::Equal, "a").unwrap()], 0, i64::MAX)[0].samples.len(), 2);

        // After a restart the replayed series count (a cap lowered meanwhile
        // refuses new series, keeps the old).
        drop(db);
        let db = Tsdb::open(&d, keep).unwrap();
        assert_eq!((db.series_of_node("a"), db.series_of_node("b")), (3, 3));
        db.set_max_series_per_node(2);
        assert_eq!(db.append(vec![(series("b", 7), now + 2000, 1.0), (series("b", 1), now + 2000, 1.0)]).await.unwrap().refused, vec![0]);

        // Retention empties a's series: they stop counting, room for new ones.
        db.index.write().unwrap().expire(now + 500);
        assert_eq!(db.series_of_node("a"), 1, "a's series 0 has a sample after the cutoff");
        let got = db.append(vec![(series("a", 5), now + 3000, 1.0), (series("a", 1), now + 3000, 1.0), (series("a", 6), now + 3000, 1.0)]).await.unwrap();
        assert_eq!((got.stored, got.refused), (1, vec![1, 2]), "one more place, taken by the first");
        assert_eq!(db.series_of_node("a"), 2);
        let _ = fs::remove_dir_all(&d);
    }

    /// Batches of one node in flight at once cannot take more places than
    /// its cap between them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_of_a_node_stay_within_its_cap() {
        let d = dir("series-cap-race");
        let now = now_ms();
        let db = Tsdb::open(&d, Duration::from_secs(3600)).unwrap();
        db.set_max_series_per_node(50);
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move { db.append((0..20).map(|i| (series("a", w * 100 + i), now, 1.0)).collect()).await.unwrap() })
            })
            .collect();
        let mut stored = 0;
        for w in writers {
            stored += w.await.unwrap().stored;
        }
        assert_eq!(stored, 50);
        assert_eq!(db.select(&[], 0, i64::MAX).len(), 50);
        assert_eq!(db.series_of_node("a"), 50);
        let _ = fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn samples_stamped_over_ten_minutes_ahead_are_refused() {
        let d = dir("future");
        let now = now_ms();
        let db = Tsdb::open(&d, Duration::from_secs(3600)).unwrap();
        let minutes = |m: i64| now + m * 60_000;
        let got = db.append(vec![(up("a"), now, 1.0), (up("a"), minutes(60), 2.0), (up("b"), minutes(9), 3.0), (up("c"), minutes(11), 4.0)]).await.unwrap();
        assert_eq!(got, Appended { stored: 2, refused_future: 2, refused_series_limit: 0, refused: vec![1, 3] });
        let stored: Vec<(Labels, Vec<i64>)> = db.select(&[], 0, i64::MAX).into_iter().map(|s| (s.labels, s.samples.iter().map(|x| x.ts_ms).collect())).collect();
        assert_eq!(stored, vec![(up("a"), vec![now]), (up("b"), vec![minutes(9)])]);
        assert_eq!(db.series_of_node("c"), 0, "a refused sample starts no series");
        // All refused: nothing logged, and the answer says so.
        assert_eq!(db.append(vec![(up("a"), minutes(30), 1.0)]).await.unwrap().stored, 0);
        drop(db);
        let db = Tsdb::open(&d, Duration::from_secs(3600)).unwrap();
        assert_eq!(db.stats().samples, 2);
        let _ = fs::remove_dir_all(&d);
    }
}
