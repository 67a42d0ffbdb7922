//! The scaling-rule worker process (see `fogmesh_common::scaling::worker`).
//! Tests start it; the master and agent re-exec themselves instead.

// Counts every byte so a rule's memory limit holds; past it the process
// exits with monty_types::OOM_EXIT_CODE.
#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

fn main() -> std::process::ExitCode {
    fogmesh_common::scaling::worker::serve_worker()
}
