//! The on-disk handoffs the components share (frame queue, outbox, crops):
//! folders made at start, files that appear whole, names listed in order.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Makes `root/SUB` for every sub-folder name.
pub fn make_dirs(root: &Path, subs: &[&str]) -> anyhow::Result<()> {
    for sub in subs {
        let dir = root.join(sub);
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `bytes` as `tmp_dir/NAME`, syncs it, then renames it to
/// `dest_dir/NAME`: readers never see a half-written file, and a crash
/// loses nothing that was reported as written.
pub fn write_durably(tmp_dir: &Path, dest_dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = tmp_dir.join(name);
    let mut f = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, dest_dir.join(name)).with_context(|| format!("move {name} into {}", dest_dir.display()))
}

/// The file names in `dir`, sorted (names start with a time: oldest first).
pub fn sorted_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}
