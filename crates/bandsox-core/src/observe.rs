//! What operators read: whether the server can do its job ([`Manager::readiness`]) and what
//! each VM uses ([`Manager::vm_stats`]).
//!
//! Stats come from where they are true: CPU time and resident memory of the VMM process on
//! the host (what the VM costs the host), memory in use inside the guest (`/proc/meminfo`
//! through the agent), the writable disk's allocated bytes on the host, and the byte counters
//! of the VM's host-side veth (a guest's sent bytes are the host end's received bytes).

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::manager::{Manager, DATA_DISK};
use crate::store::VmStatus;

/// One check of [`Manager::readiness`].
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Check {
    fn of(name: &'static str, r: std::result::Result<(), String>) -> Self {
        Self {
            name,
            ok: r.is_ok(),
            detail: r.err(),
        }
    }
}

/// How long CPU time is sampled to compute a VM's CPU use.
const CPU_SAMPLE: Duration = Duration::from_millis(250);

/// Resource use of one VM at one moment. Fields a stopped or paused VM cannot tell are
/// `None`.
#[derive(Debug, Clone, Serialize)]
pub struct VmStats {
    pub id: String,
    pub status: String,
    /// Host CPU the VMM used over a short sample, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Host CPU time the VMM used since it started, in milliseconds.
    pub cpu_time_ms: Option<u64>,
    /// Resident memory of the VMM process on the host.
    pub host_rss_bytes: Option<u64>,
    /// Guest memory (`MemTotal`) and what is in use (`MemTotal - MemAvailable`).
    pub mem_total_bytes: Option<u64>,
    pub mem_used_bytes: Option<u64>,
    /// The writable disk: its size and the bytes allocated on the host.
    pub disk_size_bytes: u64,
    pub disk_used_bytes: u64,
    /// Bytes the guest received and sent (`None` without networking).
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

/// (utime + stime in ms, RSS bytes) of a process.
fn process_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    let ticks = crate::sys::clock_ticks_per_second();
    let cpu_ms = (utime + stime) * 1000 / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((cpu_ms, rss_kib * 1024))
}

/// `MemTotal` and `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let kib: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

fn read_counter(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Manager {
    /// Whether this server can serve: its database answers, its storage root takes writes,
    /// its kernel assets are there and its VMM backend can start.
    pub fn readiness(&self) -> Vec<Check> {
        let db = self
            .store()
            .count_vms()
            .map(|_| ())
            .map_err(|e| format!("the database does not answer: {e}"));
        let probe = self.storage().root().join(".ready-probe");
        let storage = std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("the storage root takes no writes: {e}"));
        let assets = bandsox_image::assets::kernel_paths(self.storage().root())
            .map(|_| ())
            .map_err(|e| format!("kernel assets: {e} (run `bandsox init`)"));
        let vmm = self.driver().ready();
        vec![
            Check::of("database", db),
            Check::of("storage", storage),
            Check::of("kernel_assets", assets),
            Check::of("vmm", vmm),
        ]
    }

    /// Resource use of one VM (CPU is sampled for a quarter of a second).
    pub async fn vm_stats(&self, id: &str) -> Result<VmStats> {
        let vm = self.get_vm(id)?;
        let live = matches!(vm.status, VmStatus::Running | VmStatus::Paused);
        let pid = vm.pid.filter(|_| live);
        let before = pid.and_then(process_usage).map(|u| (Instant::now(), u));
        let mem = if vm.status == VmStatus::Running {
            self.read_file(id, "/proc/meminfo", 0, Some(64 << 10))
                .await
                .ok()
                .and_then(|c| parse_meminfo(&String::from_utf8_lossy(&c.bytes)))
        } else {
            None
        };
        let mut cpu_percent = None;
        let mut usage = before.map(|(_, u)| u);
        if let (Some(pid), Some((t0, (cpu0, _)))) = (pid, before) {
            let left = CPU_SAMPLE.saturating_sub(t0.elapsed());
            tokio::time::sleep(left).await;
            if let Some(now) = process_usage(pid) {
                let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
                cpu_percent = Some(
                    ((now.0.saturating_sub(cpu0)) as f64 / wall_ms * 100.0 * 10.0).round() / 10.0,
                );
                usage = Some(now);
            }
        }
        let disk = self
            .storage()
            .vm_dir(id)
            .ok()
            .and_then(|d| std::fs::metadata(d.join(DATA_DISK)).ok());
        let net = self
            .vm_network(id)?
            .and_then(|n| n.lease)
            .filter(|_| live)
            .map(|l| {
                let base = format!("/sys/class/net/{}/statistics", l.host_if());
                (
                    read_counter(&format!("{base}/tx_bytes")),
                    read_counter(&format!("{base}/rx_bytes")),
                )
            });
        Ok(VmStats {
            id: vm.id.clone(),
            status: vm.status.as_str().to_owned(),
            cpu_percent,
            cpu_time_ms: usage.map(|u| u.0),
            host_rss_bytes: usage.map(|u| u.1),
            mem_total_bytes: mem.map(|m| m.0),
            mem_used_bytes: mem.map(|(total, avail)| total.saturating_sub(avail)),
            disk_size_bytes: disk.as_ref().map_or(vm.disk_size_mib << 20, |m| m.len()),
            disk_used_bytes: disk.as_ref().map_or(0, |m| m.blocks() * 512),
            net_rx_bytes: net.and_then(|n| n.0),
            net_tx_bytes: net.and_then(|n| n.1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed() {
        let t = "MemTotal:         500000 kB\nMemFree:  1 kB\nMemAvailable:     200000 kB\n";
        assert_eq!(parse_meminfo(t), Some((500_000 * 1024, 200_000 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn this_process_has_usage() {
        let (_, rss) = process_usage(std::process::id()).unwrap();
        assert!(rss > 0);
        assert!(process_usage(u32::MAX).is_none());
    }
}
