//! Node metrics under node-exporter's names: CPU seconds per mode, load,
//! memory, network bytes per device, filesystem space per mount.
//!
//! CPU seconds per mode come from /proc/stat (sysinfo reports usage
//! percentages only, and node-exporter queries need the counters); the
//! rest come from sysinfo.

use fogmesh_common::metrics::BatchSample;
use sysinfo::{Disks, Networks, System};

use super::sample;

/// /proc/stat counts in USER_HZ, which is 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;
const CPU_MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

pub struct NodeCollector {
    sys: Option<System>,
    networks: Option<Networks>,
    disks: Option<Disks>,
}

impl Default for NodeCollector {
    fn default() -> Self {
        NodeCollector::new()
    }
}

impl NodeCollector {
    pub fn new() -> NodeCollector {
        NodeCollector { sys: System::new().ok(), networks: Networks::new_with_refreshed_list().ok(), disks: Disks::new_with_refreshed_list().ok() }
    }

    pub fn collect(&mut self, node: &str, now: i64) -> Vec<BatchSample> {
        let mut out = Vec::new();
        for (cpu, mode, seconds) in cpu_seconds() {
            out.push(sample(node, "node_cpu_seconds_total", &[("cpu", &cpu), ("mode", mode)], seconds, now));
        }
        if let Ok(load) = System::load_average() {
            out.push(sample(node, "node_load1", &[], load.one, now));
            out.push(sample(node, "node_load5", &[], load.five, now));
            out.push(sample(node, "node_load15", &[], load.fifteen, now));
        }
        if let Some(sys) = &mut self.sys {
            sys.refresh_memory();
            out.push(sample(node, "node_memory_MemTotal_bytes", &[], sys.total_memory() as f64, now));
            out.push(sample(node, "node_memory_MemAvailable_bytes", &[], sys.available_memory() as f64, now));
        }
        if let Some(networks) = &mut self.networks {
            networks.refresh(true);
            for (device, data) in networks.iter() {
                let device = device.to_string_lossy();
                out.push(sample(node, "node_network_receive_bytes_total", &[("device", &device)], data.total_received() as f64, now));
                out.push(sample(node, "node_network_transmit_bytes_total", &[("device", &device)], data.total_transmitted() as f64, now));
            }
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(true);
            for d in disks.iter() {
                let mount = d.mount_point().to_string_lossy();
                let device = d.name().to_string_lossy();
                let fstype = d.file_system().to_string_lossy();
                let labels = [("mountpoint", mount.as_ref()), ("device", device.as_ref()), ("fstype", fstype.as_ref())];
                out.push(sample(node, "node_filesystem_avail_bytes", &labels, d.available_space() as f64, now));
                out.push(sample(node, "node_filesystem_size_bytes", &labels, d.total_space() as f64, now));
            }
        }
        out
    }
}

/// `(cpu, mode, seconds)` from /proc/stat's `cpuN` lines; none elsewhere.
fn cpu_seconds() -> Vec<(String, &'static str, f64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return Vec::new() };
    parse_proc_stat(&stat)
}

fn parse_proc_stat(stat: &str) -> Vec<(String, &'static str, f64)> {
    let mut out = Vec::new();
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")).filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())) else {
            continue;
        };
        for (mode, value) in CPU_MODES.iter().zip(fields) {
            if let Ok(ticks) = value.parse::<u64>() {
                out.push((cpu.to_string(), *mode, ticks as f64 / USER_HZ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_gives_seconds_per_cpu_and_mode() {
        let stat = "cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 60 1 30 500 2 0 3 0 0 0\ncpu1 40 0 20 500 0 0 0 0\nintr 1 2 3\n";
        let got = parse_proc_stat(stat);
        assert!(got.contains(&("0".to_string(), "user", 0.6)));
        assert!(got.contains(&("0".to_string(), "softirq", 0.03)));
        assert!(got.contains(&("1".to_string(), "idle", 5.0)));
        assert_eq!(got.len(), 16, "the total line is not a cpu");
        let live = NodeCollector::new().collect("n1", 1);
        let names: std::collections::BTreeSet<&str> = live.iter().filter_map(|s| s.labels.name()).collect();
        for want in ["node_cpu_seconds_total", "node_load1", "node_memory_MemAvailable_bytes", "node_network_receive_bytes_total", "node_filesystem_avail_bytes"] {
            assert!(names.contains(want), "{want} missing: {names:?}");
        }
        assert!(live.iter().all(|s| s.labels.get("node") == Some("n1") && s.labels.get("instance") == Some("n1")));
    }
}
