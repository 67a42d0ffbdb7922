//! Checkpoints of the metrics store: its index written out whole, so a
//! restart reads that and replays only the log written after it, instead
//! of hours of log.
//!
//! `checkpoint-<CUT>.bin` holds every sample of the log segments that
//! start before CUT (and maybe some of later ones: the replay skips a
//! sample it already has). It is written as `.tmp`, synced and renamed,
//! and only then are the segments it covers deleted: a crash at any point
//! leaves a complete checkpoint and the log after it, or the previous ones.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fogmesh_common::codec;
use serde::{Deserialize, Serialize};

use super::records;
use super::tsdb::SeriesData;

const MAGIC: u32 = 0x464d_4350; // "FMCP"
/// Series per record: a record is encoded under the index's read lock,
/// which appends wait for, so it stays small.
pub const SERIES_PER_RECORD: usize = 1000;

/// A record as written: series borrowed from the index.
#[derive(Serialize)]
enum RecordOut<'a> {
    Start { cut_ms: i64 },
    Series(Vec<&'a SeriesData>),
    End { series: u64 },
}

/// The same records as read (bincode encodes both alike).
#[derive(Deserialize)]
enum RecordIn {
    Start { cut_ms: i64 },
    Series(Vec<SeriesData>),
    End { series: u64 },
}

/// What a checkpoint holds.
pub struct Loaded {
    pub cut_ms: i64,
    pub series: Vec<SeriesData>,
    pub path: PathBuf,
}

/// A checkpoint being written; nothing is visible until [`Writer::commit`].
pub struct Writer {
    dir: PathBuf,
    cut_ms: i64,
    tmp: PathBuf,
    file: BufWriter<File>,
    series: u64,
}

impl Writer {
    pub fn create(dir: &Path, cut_ms: i64) -> Result<Writer> {
        remove_unfinished(dir)?;
        let tmp = dir.join(format!("checkpoint-{cut_ms:015}.tmp"));
        let file = fogmesh_common::private_files::create_private(&tmp)?;
        let mut writer = Writer { dir: dir.to_path_buf(), cut_ms, tmp, file: BufWriter::new(file), series: 0 };
        writer.write(&RecordOut::Start { cut_ms })?;
        Ok(writer)
    }

    /// Adds series (those with samples; an empty one is left out).
    pub fn add<'a>(&mut self, series: impl Iterator<Item = &'a SeriesData>) -> Result<()> {
        let part: Vec<&SeriesData> = series.filter(|s| s.samples() > 0).collect();
        self.series += part.len() as u64;
        self.write(&RecordOut::Series(part))
    }

    fn write(&mut self, record: &RecordOut<'_>) -> Result<()> {
        let payload = snap::raw::Encoder::new().compress_vec(&codec::encode_record(record)?).context("compress a checkpoint record")?;
        self.file.write_all(&records::frame(MAGIC, &payload)).with_context(|| format!("write {}", self.tmp.display()))
    }

    /// Makes the checkpoint durable and the newest; removes older ones.
    /// Returns its series count.
    pub fn commit(mut self) -> Result<u64> {
        let series = self.series;
        self.write(&RecordOut::End { series })?;
        let file = self.file.into_inner().map_err(|e| e.into_error()).with_context(|| format!("write {}", self.tmp.display()))?;
        file.sync_all().with_context(|| format!("sync {}", self.tmp.display()))?;
        let done = self.dir.join(format!("checkpoint-{:015}.bin", self.cut_ms));
        fs::rename(&self.tmp, &done).with_context(|| format!("rename {} to {}", self.tmp.display(), done.display()))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).with_context(|| format!("sync {}", self.dir.display()))?;
        for old in checkpoints(&self.dir)?.into_iter().filter(|(cut, _)| *cut < self.cut_ms) {
            fs::remove_file(&old.1).with_context(|| format!("remove {}", old.1.display()))?;
        }
        Ok(series)
    }
}

/// Reads the newest checkpoint in `dir`, if there is one. Unfinished ones
/// (a crash while writing) are removed first.
pub fn load_newest(dir: &Path) -> Result<Option<Loaded>> {
    remove_unfinished(dir)?;
    let Some((cut_ms, path)) = checkpoints(dir)?.pop() else {
        return Ok(None);
    };
    let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let (payloads, _) = records::read_all(MAGIC, &bytes);
    let mut series = Vec::new();
    let mut ended = None;
    for (i, payload) in payloads.iter().enumerate() {
        let decoded = snap::raw::Decoder::new().decompress_vec(payload).map_err(anyhow::Error::from).and_then(|r| Ok(codec::decode_record::<RecordIn>(&r)?));
        match decoded.with_context(|| format!("{}: record {i} cannot be read", path.display()))? {
            RecordIn::Start { cut_ms: at } if i == 0 && at == cut_ms => {}
            RecordIn::Series(part) if i > 0 && ended.is_none() => series.extend(part),
            RecordIn::End { series: n } if ended.is_none() => ended = Some(n),
            _ => bail!("{}: record {i} is out of place", path.display()),
        }
    }
    match ended {
        Some(n) if n == series.len() as u64 => {}
        Some(n) => bail!("{}: holds {} series where its end says {n}", path.display(), series.len()),
        None => bail!("{}: damaged after {} series (no end record)", path.display(), series.len()),
    }
    if let Some(bad) = series.iter().find(|s| !s.is_sound()) {
        bail!("{}: series {} does not hold together", path.display(), bad.labels());
    }
    Ok(Some(Loaded { cut_ms, series, path }))
}

/// Removes checkpoints a crash or a failed write left unfinished.
fn remove_unfinished(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".tmp")) {
            tracing::info!(file = %path.display(), "removing a checkpoint left unfinished");
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// The cut of the newest finished checkpoint in `dir`.
pub fn newest_cut(dir: &Path) -> Result<Option<i64>> {
    Ok(checkpoints(dir)?.pop().map(|(cut, _)| cut))
}

/// Finished checkpoints in `dir`, oldest first.
fn checkpoints(dir: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let mut found: Vec<(i64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let cut = p.file_name()?.to_str()?.strip_prefix("checkpoint-")?.strip_suffix(".bin")?.parse().ok()?;
            Some((cut, p))
        })
        .collect();
    found.sort();
    Ok(found)
}
