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

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(rss_bytes(std::process::id()) > 1 << 20);
        assert!(cpu_seconds(std::process::id()) >= 0.0);
        assert_eq!(rss_bytes(u32::MAX), 0);
    }
}
