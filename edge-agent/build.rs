//! Link-time layout of the agent binary, for a smaller resident set on fog
//! devices (deploy/bench/footprint.sh measures it):
//! - hot-code.order (made by deploy/bench/hot-code.sh) lists the functions
//!   the agent runs in normal work; the linker puts them side by side at the
//!   front of the code. The kernel maps code in 64 KiB runs around each page
//!   used, so scattered hot functions made nearly all 8 MB resident.
//! - packed relative relocations (DT_RELR): the loader otherwise reads a
//!   half-megabyte table of relocations at every start, and those pages stay.
//!   glibc runs them from 2.36; the binary then names that need
//!   (GLIBC_ABI_DT_RELR), so an older loader refuses it with a clear error.
//!
//! Both need lld, rustc's own linker on x86_64 Linux (rust-version 1.90+);
//! other targets link as before.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=hot-code.order");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-code.order");
    println!("cargo:rustc-link-arg-bin=fogmesh-agent=-Wl,--symbol-ordering-file={}", order.display());
    // Names the build no longer has are skipped: a stale list costs memory, not a build.
    println!("cargo:rustc-link-arg-bin=fogmesh-agent=-Wl,--no-warn-symbol-ordering");
    // The glibc linked against is the build host's: pack only where it can unpack.
    if std::env::var("HOST").as_deref() == Ok(target.as_str()) && host_glibc_runs_relr() {
        println!("cargo:rustc-link-arg-bin=fogmesh-agent=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the host's glibc is 2.36 or later (`getconf GNU_LIBC_VERSION`
/// prints e.g. "glibc 2.36").
fn host_glibc_runs_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else { return false };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}
