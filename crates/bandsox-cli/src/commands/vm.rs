//! VM commands: `create`, `exec`, `vm list|info|stop|delete`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use bandsox_api::{CreateVmRequest, CreateVmResponse, ExecResponse, StatusResponse, VmInfo};
use bandsox_api::{ForkResponse, Renamed, SnapshotCreated};
use clap::{Args, Subcommand};

use crate::client::{segment, CliError, Client};
use crate::CliResult;

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image reference, e.g. `bandsox/busybox`.
    image: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value_t = 1)]
    vcpu: u32,
    /// Memory in MiB.
    #[arg(long = "mem", default_value_t = 128)]
    mem_mib: u32,
    /// Writable disk size in MiB.
    #[arg(long = "disk-size", default_value_t = 4096)]
    disk_size_mib: u64,
    /// Environment for every command in the VM (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Seconds until the timeout action runs (0 = never).
    #[arg(long = "timeout", default_value_t = 0)]
    timeout_s: u64,
    /// What happens at the timeout: stop, pause or delete.
    #[arg(long, default_value = "stop", value_parser = ["stop", "pause", "delete"])]
    timeout_action: String,
    /// Give the VM no network interface at all.
    #[arg(long)]
    no_network: bool,
    /// Cold boot even when a template of this image and shape exists, and build none.
    #[arg(long)]
    no_template: bool,
    /// Cluster only: create the VM on this node (see `bandsox cluster nodes`).
    #[arg(long)]
    node: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// VM id, unique id prefix (4+ characters) or name.
    vm: String,
    /// Seconds before the command (and everything it started) is killed, 1 to 3600
    /// [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: Option<u64>,
    /// Keep stdin open and send it to the command (like `docker exec -i`).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Run the command on a terminal: raw mode, window size and resizes follow yours (like
    /// `docker exec -t`; the output is one stream, and the input goes to it as typed).
    #[arg(long, short = 't', conflicts_with_all = ["json", "detach"])]
    tty: bool,
    /// Extra environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(long)]
    cwd: Option<String>,
    /// Run as this user (name or uid) in the guest.
    #[arg(long)]
    user: Option<String>,
    /// Print `{"exit_code", "stdout", "stderr"}` when it ends instead of replaying output
    /// (the exit code is still the command's).
    #[arg(long)]
    json: bool,
    /// Start it as a durable background command and print its id (see `bandsox logs`).
    #[arg(long, short, conflicts_with = "interactive")]
    detach: bool,
    /// The command. Several words are joined with shell quoting; one word is run as a shell
    /// command line.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List VMs, newest first.
    #[command(visible_alias = "ls")]
    #[command(
        after_help = "Examples:\n  bandsox vm ls\n  bandsox vm ls --status running --json\n  bandsox vm ls --name web --image bandsox/busybox"
    )]
    List {
        /// Only VMs in this state (creating, running, paused, stopped, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only VMs whose name contains this text.
        #[arg(long)]
        name: Option<String>,
        /// Only VMs created from this image reference.
        #[arg(long)]
        image: Option<String>,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one VM.
    #[command(after_help = "Examples:\n  bandsox vm info web\n  bandsox vm info d842 --json")]
    Info {
        /// VM id, unique id prefix (4+ characters) or name.
        vm: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Power VMs off (their disks are kept).
    #[command(after_help = "Examples:\n  bandsox vm stop web\n  bandsox vm stop web db d842")]
    Stop {
        /// VM ids, id prefixes or names.
        #[arg(required = true)]
        vms: Vec<String>,
    },
    /// Freeze VMs' vCPUs.
    #[command(after_help = "Examples:\n  bandsox vm pause web")]
    Pause {
        /// VM ids, id prefixes or names.
        #[arg(required = true)]
        vms: Vec<String>,
    },
    /// Rename a VM (names are labels).
    #[command(after_help = "Examples:\n  bandsox vm rename d842 web")]
    Rename {
        /// VM id, unique id prefix or name.
        vm: String,
        /// The new name.
        name: String,
    },
    /// Snapshot a VM (BandSox's `vm save`); prints the snapshot id.
    #[command(after_help = "Examples:\n  bandsox vm save web base")]
    Save {
        /// VM id, unique id prefix or name.
        vm: String,
        /// Name of the snapshot.
        name: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Continue paused VMs.
    #[command(after_help = "Examples:\n  bandsox vm resume web")]
    Resume {
        /// VM ids, id prefixes or names.
        #[arg(required = true)]
        vms: Vec<String>,
    },
    /// Fork a running VM into N new running VMs (its memory and disk at this instant);
    /// prints their ids, one a line.
    #[command(
        after_help = "Examples:\n  bandsox vm fork web -n 3\n  bandsox vm fork web --name a --name b -n 2"
    )]
    Fork {
        /// VM id, unique id prefix or name (running).
        vm: String,
        /// How many clones (1 to 16).
        #[arg(short = 'n', long = "count", default_value_t = 1)]
        count: usize,
        /// A name per clone (repeat; as many as --count).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Stop VMs and remove them with all their files.
    #[command(visible_alias = "rm")]
    #[command(
        after_help = "Examples:\n  bandsox vm rm web\n  bandsox vm rm $(bandsox vm ls --status stopped --json | jq -r '.[].id')"
    )]
    Delete {
        /// VM ids, id prefixes or names.
        #[arg(required = true)]
        vms: Vec<String>,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

pub fn create(url: &str, a: CreateArgs) -> CliResult {
    let client = Client::new(url);
    let req = CreateVmRequest {
        image: a.image.clone(),
        name: a.name,
        vcpu: a.vcpu,
        mem_mib: a.mem_mib,
        enable_networking: !a.no_network,
        force_rebuild: false,
        disk_size_mib: a.disk_size_mib,
        env_vars: (!a.env.is_empty()).then(|| a.env.into_iter().collect::<BTreeMap<_, _>>()),
        metadata: None,
        timeout_s: a.timeout_s,
        timeout_action: Some(a.timeout_action),
        template: a.no_template.then_some(false),
        node: a.node,
    };
    let tty = std::io::stderr().is_terminal();
    if tty && !a.json {
        eprint!("Creating VM from {} ... ", a.image);
        let _ = std::io::stderr().flush();
    }
    let started = std::time::Instant::now();
    let res: Result<CreateVmResponse, _> = client.post("/api/vms", &req, Duration::from_secs(600));
    if tty && !a.json {
        eprintln!(
            "{}",
            if res.is_ok() {
                format!("ready in {:.1} s", started.elapsed().as_secs_f64())
            } else {
                "failed".into()
            }
        );
    }
    let res = res?;
    if a.json {
        println!("{}", serde_json::to_string(&res).unwrap_or_default());
    } else {
        println!("{}", res.id);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn exec(url: &str, a: ExecArgs) -> CliResult {
    let client = Client::new(url);
    let command = if a.command.len() == 1 {
        a.command[0].clone()
    } else {
        a.command
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if a.detach {
        let body = serde_json::json!({
            "command": command,
            "env": a.env.into_iter().collect::<BTreeMap<_, _>>(),
            "cwd": a.cwd,
            "user": a.user,
        });
        let started: serde_json::Value = client.post(
            &format!("/api/vms/{}/commands", segment(&a.vm)),
            &body,
            Duration::from_secs(60),
        )?;
        if a.json {
            println!("{started}");
        } else {
            println!("{}", started["cmd_id"].as_str().unwrap_or_default());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.tty {
        if !a.env.is_empty() || a.cwd.is_some() || a.user.is_some() || a.timeout.is_some() {
            return Err(CliError {
                message: "--env, --cwd, --user and --timeout do not apply with -t".into(),
                hint: Some(
                    "drop -t, or set them in the command line (`cd DIR && env K=V CMD`)".into(),
                ),
                exit_code: 2,
            });
        }
        return crate::commands::terminal::run_command(url, &a.vm, Some(command.as_str()));
    }
    let start = serde_json::json!({
        "command": command,
        // 0: no limit (docker exec has none either).
        "timeout": a.timeout.unwrap_or(0),
        "env": a.env.into_iter().collect::<BTreeMap<_, _>>(),
        "cwd": a.cwd,
        "user": a.user,
        "stdin": a.interactive,
    });
    exec_streamed(&client, &a.vm, &start, a.interactive, a.json)
}

/// Runs a command over the exec-stream WebSocket (`start` is its first frame), writing its
/// output as it arrives (or, with `json`, printing `{"exit_code", "stdout", "stderr"}` at the
/// end), and exits with its exit code (128 + signal when killed). With `stdin`, this
/// process's stdin is sent to it until it ends.
fn exec_streamed(
    client: &Client,
    vm: &str,
    start: &serde_json::Value,
    stdin: bool,
    json: bool,
) -> CliResult {
    use std::sync::mpsc;
    use tungstenite::Message;
    // With stdin to forward, reads wake up every 20 ms to send what arrived.
    let mut sock = crate::ws::connect(
        client,
        &format!("/api/vms/{}/exec-stream", segment(vm)),
        &["bandsox.exec"],
        stdin.then_some(Duration::from_millis(20)),
    )?;
    let lost = |e: tungstenite::Error| CliError::new(format!("connection to the server lost: {e}"));
    sock.send(Message::Text(start.to_string().into()))
        .map_err(lost)?;
    let input = stdin.then(|| super::terminal::read_stdin(64 * 1024));
    let mut stdin_open = input.is_some();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let (mut all_out, mut all_err) = (String::new(), String::new());
    loop {
        while stdin_open {
            let Some(rx) = &input else { break };
            let frame = match rx.try_recv() {
                Ok(Some(bytes)) => Message::Binary(bytes.into()),
                Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                    stdin_open = false;
                    Message::Text(r#"{"type":"stdin_eof"}"#.into())
                }
                Err(mpsc::TryRecvError::Empty) => break,
            };
            sock.send(frame).map_err(lost)?;
        }
        let msg = match sock.read() {
            Ok(m) => m,
            Err(e) if crate::ws::timed_out(&e) => continue,
            Err(e) => return Err(lost(e)),
        };
        let frame = match msg {
            Message::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str())
                .map_err(|e| CliError::new(format!("unreadable frame from the server: {e}")))?,
            Message::Close(_) => {
                return Err(CliError::new(
                    "the server closed the stream before the command ended",
                ))
            }
            _ => continue,
        };
        let data = frame["data"].as_str().unwrap_or_default();
        match frame["type"].as_str() {
            Some("stdout") if json => all_out.push_str(data),
            Some("stderr") if json => all_err.push_str(data),
            Some("stdout") => {
                // A reader that went away (`| head -1`): stop quietly, as `cat` would.
                if out
                    .write_all(data.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return Ok(ExitCode::from(141));
                }
            }
            Some("stderr") => {
                let _ = err.write_all(data.as_bytes());
            }
            Some("exit") => {
                let code = frame["exit_code"].as_i64().unwrap_or(1);
                if json {
                    let res = ExecResponse {
                        exit_code: code as i32,
                        stdout: all_out,
                        stderr: all_err,
                        stdout_dropped_bytes: 0,
                        stderr_dropped_bytes: 0,
                    };
                    println!("{}", serde_json::to_string(&res).unwrap_or_default());
                }
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            _ => {
                // A stable `code` comes with our server's errors; BandSox's has only text.
                let code = frame["code"].as_str().unwrap_or_default();
                let msg = frame["error"].as_str().unwrap_or("unknown error");
                let exit_code = match code {
                    c if c.ends_with("not_found") => 3,
                    "conflict" => 4,
                    _ => 1,
                };
                return Err(CliError {
                    message: msg.to_owned(),
                    hint: frame["hint"].as_str().map(str::to_owned),
                    exit_code,
                });
            }
        }
    }
}

pub fn run(url: &str, c: VmCommand) -> CliResult {
    let client = Client::new(url);
    match c {
        VmCommand::List {
            status,
            name,
            image,
            json,
        } => {
            let mut query = Vec::new();
            for (k, v) in [("status", status), ("name", name), ("image", image)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", segment(&v)));
                }
            }
            let path = if query.is_empty() {
                "/api/vms".to_owned()
            } else {
                format!("/api/vms?{}", query.join("&"))
            };
            let vms: Vec<VmInfo> = client.get(&path)?;
            if json {
                println!("{}", serde_json::to_string(&vms).unwrap_or_default());
            } else {
                println!(
                    "{:<36}  {:<20}  {:<9}  {:<16}  IMAGE",
                    "ID", "NAME", "STATUS", "CREATED"
                );
                for vm in vms {
                    println!(
                        "{:<36}  {:<20}  {:<9}  {:<16}  {}",
                        vm.id,
                        truncate(&vm.name, 20),
                        vm.status,
                        crate::human::relative(vm.created_at),
                        vm.image
                    );
                }
            }
        }
        VmCommand::Info { vm, json } => {
            let info: VmInfo = client.get(&format!("/api/vms/{}", segment(&vm)))?;
            if json {
                println!("{}", serde_json::to_string(&info).unwrap_or_default());
            } else {
                println!("id          {}", info.id);
                println!("name        {}", info.name);
                println!("status      {}", info.status);
                println!("image       {} ({})", info.image, info.image_digest);
                println!("vcpu        {}", info.vcpu);
                println!("mem_mib     {}", info.mem_mib);
                println!("disk_mib    {}", info.disk_size_mib);
                if let Some(t) = info.expires_at {
                    println!(
                        "expires     {} ({})",
                        crate::human::relative(t),
                        info.timeout_action
                    );
                }
                if let Some(r) = &info.stop_reason {
                    match info.stopped_at {
                        Some(t) => println!("stopped     {r}, {}", crate::human::relative(t)),
                        None => println!("stopped     {r}"),
                    }
                }
                if let Some(e) = info.error {
                    println!("error       {e}");
                }
            }
        }
        VmCommand::Stop { vms } => return each(&vms, |vm| post_action(&client, vm, "stop")),
        VmCommand::Pause { vms } => return each(&vms, |vm| post_action(&client, vm, "pause")),
        VmCommand::Resume { vms } => return each(&vms, |vm| post_action(&client, vm, "resume")),
        VmCommand::Rename { vm, name } => {
            let r: Renamed = client.put(
                &format!("/api/vms/{}/name", segment(&vm)),
                &serde_json::json!({ "name": name }),
            )?;
            println!("{}", r.name);
        }
        VmCommand::Save { vm, name, json } => {
            let r: SnapshotCreated = client.post(
                &format!("/api/vms/{}/snapshot", segment(&vm)),
                &serde_json::json!({ "name": name }),
                Duration::from_secs(600),
            )?;
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!("{}", r.snapshot_id);
            }
        }
        VmCommand::Fork { vm, count, names } => {
            let r: ForkResponse = client.post(
                &format!("/api/vms/{}/fork", segment(&vm)),
                &serde_json::json!({
                    "count": count,
                    "names": (!names.is_empty()).then_some(names),
                }),
                Duration::from_secs(900),
            )?;
            for id in r.ids {
                println!("{id}");
            }
        }
        VmCommand::Delete { vms } => {
            return each(&vms, |vm| {
                let r: StatusResponse = client.delete(&format!("/api/vms/{}", segment(vm)))?;
                println!("{}", r.status);
                Ok(())
            })
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `op` on every reference, going on past failures (as `docker stop a b` does): each
/// failure is printed as it happens and the exit code is that of the first one.
pub fn each(refs: &[String], mut op: impl FnMut(&str) -> Result<(), CliError>) -> CliResult {
    let mut first: Option<u8> = None;
    for r in refs {
        if let Err(e) = op(r) {
            if refs.len() > 1 {
                crate::report(&e);
                first.get_or_insert(e.exit_code);
            } else {
                return Err(e);
            }
        }
    }
    Ok(first.map_or(ExitCode::SUCCESS, ExitCode::from))
}

/// `bandsox start|restart VM`.
pub fn action(url: &str, vm: &str, action: &str) -> CliResult {
    post_action(&Client::new(url), vm, action)?;
    Ok(ExitCode::SUCCESS)
}

/// `bandsox extend VM SECONDS`: prints the new expiry time.
pub fn extend(url: &str, vm: &str, seconds: u64) -> CliResult {
    let info: VmInfo = Client::new(url).post(
        &format!("/api/vms/{}/extend", segment(vm)),
        &serde_json::json!({ "seconds": seconds }),
        Duration::from_secs(60),
    )?;
    print_expiry(&info);
    Ok(ExitCode::SUCCESS)
}

/// `bandsox timeout VM SECONDS [--action A]`: prints the new expiry time.
pub fn set_timeout(url: &str, vm: &str, seconds: u64, action: Option<String>) -> CliResult {
    let info: VmInfo = Client::new(url).post(
        &format!("/api/vms/{}/timeout", segment(vm)),
        &serde_json::json!({ "timeout_s": seconds, "action": action }),
        Duration::from_secs(60),
    )?;
    print_expiry(&info);
    Ok(ExitCode::SUCCESS)
}

fn print_expiry(info: &VmInfo) {
    match info.expires_at {
        Some(t) => println!(
            "expires {} ({})",
            crate::human::relative(t),
            info.timeout_action
        ),
        None => println!("no timeout"),
    }
}

/// `POST /api/vms/{vm}/{action}` with an empty body; prints the status.
fn post_action(client: &Client, vm: &str, action: &str) -> Result<(), crate::client::CliError> {
    let r: StatusResponse = client.post(
        &format!("/api/vms/{}/{action}", segment(vm)),
        &serde_json::json!({}),
        Duration::from_secs(120),
    )?;
    println!("{}", r.status);
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}

/// Quotes a word for `/bin/sh` when it needs it.
fn shell_quote(w: &str) -> String {
    if !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_words_intact() {
        assert_eq!(shell_quote("uname"), "uname");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
