//! What this machine offers, reported to the master at every connect.
//! Anything that cannot be read is reported as 0 rather than failing.

use fogmesh_common::wire::Capacity;
use sysinfo::{Disks, System};

pub fn detect() -> Capacity {
    let memory_bytes = System::new()
        .map(|mut sys| {
            sys.refresh_memory();
            sys.total_memory()
        })
        .unwrap_or(0);
    let disk_bytes = Disks::new_with_refreshed_list()
        .map(|disks| disks.iter().map(|d| d.total_space()).max().unwrap_or(0))
        .unwrap_or(0);
    Capacity {
        cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        memory_bytes,
        disk_bytes,
        arch: std::env::consts::ARCH.to_string(),
        os: System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.to_string()),
    }
}
