//! Files only their owner reads: the master's and the agent's data
//! directories hold keys, tokens, stores and desired states with secret
//! values. Directories are 0700, files 0600.
//!
//! New files are opened with mode 0600 ([`create_private`],
//! [`private_options`]); files that others create inside (sled's) are
//! protected by their 0700 directory and tightened at the next start by
//! [`tighten_tree`], which also fixes data directories made by older
//! versions (0755/0644).

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a private directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a private file.
pub const FILE_MODE: u32 = 0o600;
/// Bits that let anyone but the owner in.
const OPEN_BITS: u32 = 0o077;

/// An entry whose mode [`tighten_tree`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tightened {
    pub path: PathBuf,
    pub from: u32,
    pub to: u32,
}

/// An error that names the path it is about.
fn at(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Creates `dir` (missing parents too) with mode 0700, or sets an existing
/// one to 0700.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(at(dir, "create the folder", e)),
    }
    // create() keeps an existing folder's mode (and the umask applies).
    let mode = fs::metadata(dir).map_err(|e| at(dir, "read the mode of", e))?.permissions().mode() & 0o7777;
    if mode != DIR_MODE {
        fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(|e| at(dir, "make private (0700)", e))?;
    }
    Ok(())
}

/// Open options whose new files get mode 0600; the caller says how to open.
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates or truncates `path` for writing, with mode 0600 also if it
/// existed with another.
pub fn create_private(path: &Path) -> io::Result<File> {
    let file = private_options().write(true).create(true).truncate(true).open(path).map_err(|e| at(path, "create", e))?;
    file.set_permissions(Permissions::from_mode(FILE_MODE)).map_err(|e| at(path, "make private (0600)", e))?;
    Ok(file)
}

/// Writes `bytes` to `path` whole and synced, through `PATH.tmp` renamed
/// over it, with mode 0600.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with_mode(path, bytes, FILE_MODE)
}

/// [`write_private_atomic`] with another mode, for the few files others
/// must read (a CRL the broker reads as its own user).
pub fn write_atomic_with_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(|e| at(&tmp, "create", e))?;
    // Also when a leftover .tmp had another mode.
    file.set_permissions(Permissions::from_mode(mode)).map_err(|e| at(&tmp, "set the mode of", e))?;
    io::Write::write_all(&mut file, bytes).and_then(|()| file.sync_all()).map_err(|e| at(&tmp, "write", e))?;
    fs::rename(&tmp, path).map_err(|e| at(path, "replace", e))
}

/// Takes group and other bits off every folder and file under `root`
/// (`root` included), leaving the owner's; symbolic links are not followed.
/// Entries right under `root` named in `skip` are left as they are (e.g.
/// files made for containers to read). Returns what changed.
pub fn tighten_tree(root: &Path, skip: &[&str]) -> io::Result<Vec<Tightened>> {
    let mut changed = Vec::new();
    walk(root, skip, |path, from| {
        // Owner bits stay; set-id and sticky bits go with the others.
        let to = from & 0o700;
        match fs::set_permissions(path, Permissions::from_mode(to)) {
            Ok(()) => changed.push(Tightened { path: path.to_path_buf(), from, to }),
            Err(e) if e.kind() == io::ErrorKind::NotFound && path != root => {}
            Err(e) => return Err(at(path, "make private", e)),
        }
        Ok(())
    })?;
    changed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changed)
}

/// Paths under `root` (as [`tighten_tree`] walks it) whose mode lets group
/// or others in, with that mode.
pub fn open_entries(root: &Path, skip: &[&str]) -> io::Result<Vec<(PathBuf, u32)>> {
    let mut open = Vec::new();
    walk(root, skip, |path, mode| {
        open.push((path.to_path_buf(), mode));
        Ok(())
    })?;
    open.sort();
    Ok(open)
}

/// Calls `open` with each entry under `root` whose mode has group or other
/// bits, and that mode. Entries that vanish meanwhile (a store removing a
/// segment) are passed over.
fn walk(root: &Path, skip: &[&str], mut open: impl FnMut(&Path, u32) -> io::Result<()>) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound && path != root;
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(at(&path, "read the mode of", e)),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & OPEN_BITS != 0 {
            open(&path, mode)?;
        }
        if meta.is_dir() {
            let entries = match fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(at(&path, "list", e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| at(&path, "list", e))?;
                if path == root && entry.file_name().to_str().is_some_and(|n| skip.contains(&n)) {
                    continue;
                }
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Makes `root` a private data folder: creates it 0700 if missing, then
/// [`tighten_tree`]; logs what it tightened (one line, at info: a folder
/// made by an older version, or opened up by hand).
pub fn secure_data_dir(root: &Path, skip: &[&str]) -> io::Result<Vec<Tightened>> {
    if !root.exists() {
        ensure_private_dir(root)?;
    }
    let changed = tighten_tree(root, skip)?;
    if !changed.is_empty() {
        const NAMED: usize = 8;
        let mut names: Vec<String> = changed
            .iter()
            .take(NAMED)
            .map(|t| {
                let name = match t.path.strip_prefix(root) {
                    Ok(p) if p.as_os_str().is_empty() => ".".to_string(),
                    Ok(p) => p.display().to_string(),
                    Err(_) => t.path.display().to_string(),
                };
                format!("{name} ({:o} -> {:o})", t.from, t.to)
            })
            .collect();
        if changed.len() > NAMED {
            names.push(format!("and {} more", changed.len() - NAMED));
        }
        tracing::info!(dir = %root.display(), count = changed.len(), tightened = %names.join(", "), "data folder made private: group and other access removed");
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fogmesh-private-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).expect("exists").permissions().mode() & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_new_dir_and_its_missing_parents_are_private_and_an_old_one_is_tightened() {
        let root = scratch("dir");
        let dir = root.join("a/b");
        ensure_private_dir(&dir).expect("created");
        assert_eq!((mode(&root.join("a")), mode(&dir)), (0o700, 0o700));
        chmod(&dir, 0o755);
        ensure_private_dir(&dir).expect("tightened");
        assert_eq!(mode(&dir), 0o700);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn created_files_are_0600_also_over_an_open_one() {
        let root = scratch("files");
        ensure_private_dir(&root).expect("dir");
        let new = root.join("new.key");
        create_private(&new).expect("created");
        assert_eq!(mode(&new), 0o600);
        let old = root.join("old.key");
        fs::write(&old, "secret").expect("written");
        chmod(&old, 0o644);
        create_private(&old).expect("truncated");
        assert_eq!(mode(&old), 0o600);
        let appended = root.join("log");
        private_options().create(true).append(true).open(&appended).expect("opened");
        assert_eq!(mode(&appended), 0o600);
        let replaced = root.join("state");
        fs::write(&replaced, "old").expect("written");
        chmod(&replaced, 0o644);
        write_private_atomic(&replaced, b"new").expect("replaced");
        assert_eq!((mode(&replaced), fs::read(&replaced).expect("read")), (0o600, b"new".to_vec()));
        assert!(!root.join("state.tmp").exists());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn tightening_takes_group_and_other_bits_off_every_entry_but_skipped_ones() {
        let root = scratch("tree");
        fs::create_dir_all(root.join("store/blobs")).expect("dirs");
        fs::create_dir_all(root.join("configmaps/app")).expect("dirs");
        for (file, m) in [("node.key", 0o644), ("store/db", 0o666), ("store/blobs/1", 0o644), ("tool", 0o755), ("mine", 0o600), ("configmaps/app/conf", 0o644)] {
            fs::write(root.join(file), "x").expect("file");
            chmod(&root.join(file), m);
        }
        for d in ["", "store", "store/blobs"] {
            chmod(&root.join(d), 0o755);
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).expect("link");
        let passwd = mode(Path::new("/etc/passwd"));

        let changed = tighten_tree(&root, &["configmaps"]).expect("tightened");
        let names: Vec<String> = changed.iter().map(|t| format!("{} {:o}", t.path.strip_prefix(&root).unwrap_or(&t.path).display(), t.from)).collect();
        assert_eq!(names, [" 755", "node.key 644", "store 755", "store/blobs 755", "store/blobs/1 644", "store/db 666", "tool 755"]);
        assert_eq!(open_entries(&root, &["configmaps"]).expect("walk"), []);
        assert_eq!((mode(&root.join("node.key")), mode(&root.join("tool")), mode(&root.join("store"))), (0o600, 0o700, 0o700));
        assert_eq!(mode(&root.join("configmaps/app/conf")), 0o644, "skipped: made for containers to read");
        assert_eq!(mode(Path::new("/etc/passwd")), passwd, "links are not followed");
        assert_eq!(tighten_tree(&root, &["configmaps"]).expect("again"), [], "nothing left to do");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn errors_name_the_path() {
        let missing = scratch("missing").join("nothing-here");
        let e = tighten_tree(&missing, &[]).expect_err("no such folder").to_string();
        assert!(e.contains("nothing-here"), "{e}");
    }
}
