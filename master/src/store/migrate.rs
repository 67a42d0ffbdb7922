//! The store folder at open: a redb store as it is, or a new one.
//!
//! A sled store left there by fogmesh before redb is refused for now, with
//! a message that says so (the migration that copies it into redb is not
//! written yet): nothing starts empty beside it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use fogmesh_common::private_files::ensure_private_dir;

/// The redb file inside the store folder.
pub(super) const FILE: &str = "fogmesh.redb";

/// What sled 0.34 keeps in its folder (beside `conf`, `blobs/`, `snap.*`).
fn holds_sled(dir: &Path) -> bool {
    dir.join("db").is_file() && dir.join("conf").is_file()
}

/// Makes `dir` ready for a redb store and returns its file's path; the
/// file is missing only for a new store.
pub(super) fn prepare(dir: &Path) -> Result<PathBuf> {
    let file = dir.join(FILE);
    if !file.is_file() && holds_sled(dir) {
        bail!("{} holds a sled store (fogmesh before redb), which this build cannot read yet", dir.display());
    }
    ensure_private_dir(dir)?;
    Ok(file)
}
