//! A process's CPU time and resident memory, from /proc (Linux): what the
//! agent reports about itself and what the benchmarks measure.

/// utime + stime of process `pid`, in seconds; 0 where /proc is missing.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let Some((_, after)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on every Linux ABI.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of process `pid` in bytes; 0 where /proc is missing.
pub fn rss_bytes(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0) * 1024
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Nanoseconds this thread has run on a CPU, from the scheduler's own
    /// count (not the file or the fields `cpu_seconds` reads).
    fn thread_run_ns() -> u64 {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("read /proc/thread-self/schedstat");
        text.split_whitespace().next().and_then(|n| n.parse().ok()).expect("schedstat starts with the run time in ns")
    }

    #[test]
    fn cpu_seconds_grow_by_the_cpu_time_this_process_burns() {
        let pid = std::process::id();
        let before = cpu_seconds(pid);
        let ran_before = thread_run_ns();
        // Burn until the scheduler says this thread ran half a second (however
        // busy the machine is); then the process's utime + stime must have
        // grown by about as much (ticks are 10 ms; the sampling can be off a little).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut x = 0u64;
        while thread_run_ns() - ran_before < 500_000_000 {
            for i in 0..100_000u64 {
                x = x.wrapping_add(std::hint::black_box(i * i));
            }
            assert!(Instant::now() < deadline, "could not burn 0.5 s of CPU in 60 s");
        }
        assert!(x > 0);
        let grew = cpu_seconds(pid) - before;
        assert!(grew >= 0.4, "this process burnt 0.5 s of CPU, but its cpu seconds grew by {grew:.2} (from {before:.2})");
        // No such process: 0.
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }

    #[test]
    fn rss_is_this_process_resident_memory() {
        assert!(rss_bytes(std::process::id()) > 1 << 20);
        assert_eq!(rss_bytes(u32::MAX), 0);
    }
}
