//! Durable background commands: `bandsox exec --detach` starts one, `bandsox commands VM`
//! lists them, `bandsox logs VM CMD [--follow]` replays (and follows) their output.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::client::{segment, Client};
use crate::CliResult;

#[derive(Debug, Args)]
pub struct CommandsArgs {
    /// VM id, unique id prefix or name.
    vm: String,
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// VM id.
    vm: String,
    /// Command id (from `bandsox exec --detach` or `bandsox commands`).
    cmd: String,
    /// Keep printing new output until the command ends, then exit with its exit code.
    #[arg(long, short)]
    follow: bool,
    /// Absolute stdout byte offset to start from.
    #[arg(long, default_value_t = 0)]
    stdout_from: u64,
    /// Absolute stderr byte offset to start from.
    #[arg(long, default_value_t = 0)]
    stderr_from: u64,
}

#[derive(Debug, Deserialize)]
struct ExitInfo {
    exit_code: Option<i32>,
    signal: Option<i32>,
}

#[derive(Debug, Deserialize)]
struct CmdInfo {
    cmd_id: String,
    pid: u32,
    command: Vec<String>,
    running: bool,
    status: Option<ExitInfo>,
    started_at_ms: u64,
}

impl CmdInfo {
    fn state(&self) -> String {
        match (&self.status, self.running) {
            (_, true) => "running".into(),
            (
                Some(ExitInfo {
                    exit_code: Some(c), ..
                }),
                _,
            ) => format!("exited {c}"),
            (
                Some(ExitInfo {
                    signal: Some(s), ..
                }),
                _,
            ) => format!("killed {s}"),
            _ => "ended".into(),
        }
    }

    /// What a shell would report: the exit code, or 128 + the signal.
    fn exit_code(&self) -> u8 {
        let code = match &self.status {
            Some(ExitInfo {
                exit_code: Some(c), ..
            }) => *c,
            Some(ExitInfo {
                signal: Some(s), ..
            }) => 128 + s,
            _ => 1,
        };
        code.clamp(0, 255) as u8
    }
}

#[derive(Debug, Deserialize)]
struct Logs {
    stdout: String,
    stderr: String,
    stdout_offset: u64,
    stderr_offset: u64,
    info: CmdInfo,
}

pub fn list(url: &str, a: CommandsArgs) -> CliResult {
    let client = Client::new(url);
    let path = format!("/api/vms/{}/commands", segment(&a.vm));
    if a.json {
        let v: serde_json::Value = client.get(&path)?;
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let cmds: Vec<CmdInfo> = client.get(&path)?;
    println!(
        "{:<24}  {:>7}  {:<10}  {:<13}  COMMAND",
        "ID", "PID", "STATE", "STARTED"
    );
    for c in cmds {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let started = format!("{}s ago", now_ms.saturating_sub(c.started_at_ms) / 1000);
        println!(
            "{:<24}  {:>7}  {:<10}  {:<13}  {}",
            c.cmd_id,
            c.pid,
            c.state(),
            started,
            c.command.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logs(url: &str, a: LogsArgs) -> CliResult {
    let client = Client::new(url);
    let (mut out_from, mut err_from) = (a.stdout_from, a.stderr_from);
    let base = format!(
        "/api/vms/{}/commands/{}/logs",
        segment(&a.vm),
        segment(&a.cmd)
    );
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        let l: Logs = client.get(&format!(
            "{base}?stdout_from={out_from}&stderr_from={err_from}"
        ))?;
        let _ = out.write_all(l.stdout.as_bytes());
        let _ = out.flush();
        let _ = err.write_all(l.stderr.as_bytes());
        let new = l.stdout_offset != out_from || l.stderr_offset != err_from;
        (out_from, err_from) = (l.stdout_offset, l.stderr_offset);
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        if !l.info.running && !new {
            return Ok(ExitCode::from(l.info.exit_code()));
        }
        if !new {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
