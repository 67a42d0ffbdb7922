//! Helpers for the end-to-end tests in `tests/tests/`: they run the real
//! fogmesh binaries as separate processes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path to a fogmesh binary (`fogmesh`, `fogmesh-master`, `fogmesh-agent`),
/// built on first use with the same cargo and profile that runs the tests.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build for the fogmesh binaries");
        assert!(status.success(), "cargo build --bins failed");
        // Test executables live in target/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent().and_then(|deps| deps.parent()).expect("target profile dir").to_path_buf()
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
