//! `bandsox stats [VM...]`: live resource use of VMs, like `docker stats`: one table,
//! refreshed every second (on a terminal it redraws in place), or one round with
//! `--no-stream`, or JSON lines with `--json`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bandsox_api::{VmInfo, VmStatsInfo};
use clap::Args;

use crate::client::{segment, CliError, Client};
use crate::CliResult;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// VM ids to show [default: every running or paused VM].
    vms: Vec<String>,
    /// Print one round and exit.
    #[arg(long)]
    no_stream: bool,
    /// One JSON array of stats a round instead of a table.
    #[arg(long)]
    json: bool,
    /// Milliseconds between rounds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn opt_bytes(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), bytes)
}

/// One round: every VM's stats, fetched at once.
fn round(client: &Client, ids: &[String]) -> Result<Vec<VmStatsInfo>, CliError> {
    let handles: Vec<_> = ids
        .iter()
        .map(|id| {
            let client = Client::new(client.base());
            let path = format!("/api/vms/{}/stats", segment(id));
            std::thread::spawn(move || client.get::<VmStatsInfo>(&path))
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => out.push(s),
            // A VM deleted between the list and its stats drops out of the table.
            Ok(Err(e)) if e.exit_code == 3 => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(CliError::new("a stats request panicked")),
        }
    }
    Ok(out)
}

fn table(stats: &[VmStatsInfo]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "ID".into(),
        "STATUS".into(),
        "CPU %".into(),
        "MEM USAGE / LIMIT".into(),
        "HOST RSS".into(),
        "DISK".into(),
        "NET I/O".into(),
    ]];
    for s in stats {
        rows.push([
            s.name.clone(),
            s.id.chars().take(12).collect(),
            s.status.clone(),
            s.cpu_percent
                .map_or_else(|| "-".into(), |c| format!("{c:.1}%")),
            format!(
                "{} / {}",
                opt_bytes(s.mem_used_bytes),
                opt_bytes(s.mem_total_bytes)
            ),
            opt_bytes(s.host_rss_bytes),
            format!(
                "{} / {}",
                bytes(s.disk_used_bytes),
                bytes(s.disk_size_bytes)
            ),
            match (s.net_rx_bytes, s.net_tx_bytes) {
                (Some(rx), Some(tx)) => format!("{} / {}", bytes(rx), bytes(tx)),
                _ => "-".into(),
            },
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

pub fn run(url: &str, a: StatsArgs) -> CliResult {
    let client = Client::new(url);
    let ids = if a.vms.is_empty() {
        let vms: Vec<VmInfo> = client.get("/api/vms")?;
        vms.into_iter()
            .filter(|v| matches!(v.status.as_str(), "running" | "paused"))
            .map(|v| v.id)
            .collect()
    } else {
        a.vms.clone()
    };
    let redraw = std::io::stdout().is_terminal() && !a.json && !a.no_stream;
    let interval = Duration::from_millis(a.interval_ms.max(100));
    loop {
        let started = Instant::now();
        let stats = round(&client, &ids)?;
        let text = if a.json {
            serde_json::to_string(&stats).unwrap_or_default() + "\n"
        } else {
            table(&stats)
        };
        let mut out = std::io::stdout().lock();
        let shown = if redraw {
            // Home and clear, then the table: one frame, no flicker of a scrolling terminal.
            write!(out, "\x1b[H\x1b[2J{text}")
        } else {
            write!(out, "{text}")
        };
        if shown.and_then(|()| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS); // the reader went away (`| head`)
        }
        drop(out);
        if a.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker_stats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(300 << 20), "300.0 MiB");
        assert_eq!(opt_bytes(None), "-");
    }
}
