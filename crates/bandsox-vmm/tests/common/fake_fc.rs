//! A fake Firecracker: serves the API on `--api-sock`, validates every request against the
//! spec (a violation answers 400 with a `contract violation` fault message), keeps the state
//! machine Firecracker enforces (pre-boot only configuration, load only in a fresh process,
//! create only while paused, the vsock socket must not exist when bound) and answers like
//! Firecracker (`204`, `200` + JSON, `400` + `{"fault_message"}`). The vsock socket answers
//! `CONNECT <port>\n` with `OK <n>\n` and then echoes, standing in for the guest agent.
//!
//! Runs inside the test binary (see `fake_fc_server` in the contract test), configured by
//! environment variables the fake jailer and launcher scripts set:
//! `FAKE_FC_CHROOT` (jail root: absolute paths resolve inside it), `FAKE_FC_LOG` (JSON lines of
//! every request), `FAKE_FC_FAIL` (`METHOD /path` answered 400), `FAKE_FC_HANG` (`METHOD /path`
//! never answered).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::validator::ApiSpec;

#[derive(Default)]
struct State {
    id: String,
    started: bool,
    paused: bool,
    configured: bool,
    machine: Option<Value>,
    boot: bool,
    drives: Vec<String>,
    vsock: Option<String>,
    loaded: bool,
}

struct Fake {
    spec: ApiSpec,
    chroot: Option<PathBuf>,
    log: Option<PathBuf>,
    fail: Option<String>,
    hang: Option<String>,
    state: Mutex<State>,
}

/// Serves forever (the process is killed to stop it).
pub fn run() {
    let args: Vec<String> = std::env::args()
        .filter_map(|a| a.strip_prefix("fcarg:").map(str::to_owned))
        .collect();
    let mut id = "anonymous-instance".to_string();
    let mut api_sock = "/run/firecracker.socket".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--id=") {
            id = v.into();
        } else if a == "--id" {
            id = it.next().cloned().unwrap_or_default();
        } else if a == "--api-sock" {
            api_sock = it.next().cloned().unwrap_or_default();
        }
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let fake = Arc::new(Fake {
        spec: ApiSpec::load(),
        chroot: env("FAKE_FC_CHROOT").map(PathBuf::from),
        log: env("FAKE_FC_LOG").map(PathBuf::from),
        fail: env("FAKE_FC_FAIL"),
        hang: env("FAKE_FC_HANG"),
        state: Mutex::new(State {
            id,
            ..State::default()
        }),
    });
    let sock = fake.resolve(&api_sock);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).expect("bind the API socket");
    for conn in listener.incoming().flatten() {
        let fake = fake.clone();
        std::thread::spawn(move || fake.serve(conn));
    }
}

impl Fake {
    fn resolve(&self, p: &str) -> PathBuf {
        match (&self.chroot, p.strip_prefix('/')) {
            (Some(root), Some(rel)) => root.join(rel),
            _ => PathBuf::from(p),
        }
    }

    fn serve(&self, conn: UnixStream) {
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut out = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                if h == "\r\n" || h == "\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.trim().eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let key = format!("{method} {path}");
            if self.hang.as_deref() == Some(key.as_str()) {
                std::thread::park();
                return;
            }
            let parsed: Option<Value> = if body.is_empty() {
                None
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.respond(
                            &mut out,
                            &method,
                            &path,
                            None,
                            400,
                            Some(fault(&format!("bad JSON: {e}"))),
                        );
                        continue;
                    }
                }
            };
            let (status, answer) = match self.spec.validate(&method, &path, parsed.as_ref()) {
                Err(e) => (400, Some(fault(&format!("contract violation: {e}")))),
                Ok(()) if self.fail.as_deref() == Some(key.as_str()) => {
                    (400, Some(fault("fake failure: Invalid kernel image")))
                }
                Ok(()) => self.handle(&method, &path, parsed.as_ref()),
            };
            let exit_after = status == 400 && path == "/snapshot/load" && {
                // A failed load ends Firecracker, unless it was refused up front.
                !answer
                    .as_ref()
                    .is_some_and(|a| a.to_string().contains("not allowed"))
            };
            self.respond(&mut out, &method, &path, parsed.as_ref(), status, answer);
            if exit_after {
                std::process::exit(1);
            }
        }
    }

    fn respond(
        &self,
        out: &mut UnixStream,
        method: &str,
        path: &str,
        body: Option<&Value>,
        status: u16,
        answer: Option<Value>,
    ) {
        if let Some(log) = &self.log {
            let entry = json!({ "method": method, "path": path, "body": body, "status": status, "answer": answer });
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = f.write_all(format!("{entry}\n").as_bytes());
            }
        }
        let reason = match status {
            200 => "OK",
            204 => "No Content",
            _ => "Bad Request",
        };
        let payload = answer.map(|a| a.to_string()).unwrap_or_default();
        let _ = out.write_all(
            format!(
                "HTTP/1.1 {status} {reason}\r\nServer: Firecracker API\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
                payload.len()
            )
            .as_bytes(),
        );
    }

    fn exists(&self, p: &Value) -> Result<PathBuf, String> {
        let p = p.as_str().unwrap_or_default();
        let r = self.resolve(p);
        if r.exists() {
            Ok(r)
        } else {
            Err(format!("No such file or directory (os error 2): {p}"))
        }
    }

    fn handle(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Option<Value>) {
        match self.handle_inner(method, path, body.unwrap_or(&Value::Null)) {
            Ok(v) => (if v.is_some() { 200 } else { 204 }, v),
            Err(msg) => (400, Some(fault(&msg))),
        }
    }

    fn handle_inner(&self, method: &str, path: &str, b: &Value) -> Result<Option<Value>, String> {
        let mut s = self.state.lock().unwrap();
        const AFTER_START: &str =
            "The requested operation is not supported after starting the microVM.";
        let pre_boot = |s: &mut State| -> Result<(), String> {
            if s.started || s.loaded {
                return Err(AFTER_START.into());
            }
            s.configured = true;
            Ok(())
        };
        match (method, path) {
            ("GET", "/") => {
                let state = match (s.started, s.paused) {
                    (false, _) => "Not started",
                    (true, false) => "Running",
                    (true, true) => "Paused",
                };
                Ok(Some(
                    json!({ "id": s.id, "state": state, "vmm_version": "1.17.0-dev", "app_name": "Firecracker" }),
                ))
            }
            ("PUT", "/logger") => {
                self.exists(&b["log_path"])?;
                Ok(None)
            }
            ("PUT", "/metrics") => {
                self.exists(&b["metrics_path"])?;
                Ok(None)
            }
            ("PUT", "/machine-config") => {
                pre_boot(&mut s)?;
                s.machine = Some(b.clone());
                Ok(None)
            }
            ("PUT", "/boot-source") => {
                pre_boot(&mut s)?;
                self.exists(&b["kernel_image_path"])?;
                if !b["initrd_path"].is_null() {
                    self.exists(&b["initrd_path"])?;
                }
                s.boot = true;
                Ok(None)
            }
            ("PUT", p) if p.starts_with("/drives/") => {
                pre_boot(&mut s)?;
                self.exists(&b["path_on_host"])?;
                s.drives
                    .push(b["path_on_host"].as_str().unwrap_or_default().into());
                Ok(None)
            }
            ("PUT", "/vsock") => {
                pre_boot(&mut s)?;
                let uds = b["uds_path"].as_str().unwrap_or_default().to_string();
                self.bind_vsock(&uds)?;
                s.vsock = Some(uds);
                Ok(None)
            }
            ("PUT", "/entropy") => {
                pre_boot(&mut s)?;
                Ok(None)
            }
            // The real one opens the TAP here (in its namespace); the fake only checks order.
            ("PUT", p) if p.starts_with("/network-interfaces/") => {
                pre_boot(&mut s)?;
                Ok(None)
            }
            ("PUT", "/actions") => match b["action_type"].as_str() {
                Some("InstanceStart") => {
                    if s.started || s.loaded {
                        return Err(AFTER_START.into());
                    }
                    if s.machine.is_none() || !s.boot {
                        return Err("Cannot start microvm without kernel configuration.".into());
                    }
                    s.started = true;
                    Ok(None)
                }
                _ => Ok(None),
            },
            ("PATCH", "/vm") => {
                if !s.started {
                    return Err(
                        "The requested operation is not supported before starting the microVM."
                            .into(),
                    );
                }
                s.paused = b["state"] == "Paused";
                Ok(None)
            }
            ("PUT", "/snapshot/create") => {
                if !s.started {
                    return Err(
                        "The requested operation is not supported before starting the microVM."
                            .into(),
                    );
                }
                if !s.paused {
                    return Err("Cannot save the microVM state: the microVM must be paused.".into());
                }
                let mem = s
                    .machine
                    .as_ref()
                    .and_then(|m| m["mem_size_mib"].as_u64())
                    .unwrap_or(0);
                let state = json!({ "drives": s.drives, "vsock": s.vsock, "machine": s.machine });
                std::fs::write(
                    self.resolve(b["snapshot_path"].as_str().unwrap_or_default()),
                    state.to_string(),
                )
                .map_err(|e| e.to_string())?;
                let f = std::fs::File::create(
                    self.resolve(b["mem_file_path"].as_str().unwrap_or_default()),
                )
                .map_err(|e| e.to_string())?;
                f.set_len(mem << 20).map_err(|e| e.to_string())?;
                Ok(None)
            }
            ("PUT", "/snapshot/load") => {
                if s.configured || s.started || s.loaded {
                    return Err("Loading a microVM snapshot not allowed after configuring boot-specific resources.".into());
                }
                let state_file = self.exists(&b["snapshot_path"])?;
                let backend = &b["mem_backend"];
                if backend["backend_type"] != "File" {
                    return Err("fake: only the File memory backend".into());
                }
                self.exists(&backend["backend_path"])?;
                let saved: Value = serde_json::from_str(
                    &std::fs::read_to_string(state_file).map_err(|e| e.to_string())?,
                )
                .map_err(|e| format!("bad snapshot: {e}"))?;
                for d in saved["drives"].as_array().into_iter().flatten() {
                    self.exists(d)
                        .map_err(|e| format!("Block device error: {e}"))?;
                }
                let uds = b["vsock_override"]["uds_path"]
                    .as_str()
                    .or(saved["vsock"].as_str())
                    .unwrap_or_default()
                    .to_string();
                self.bind_vsock(&uds)?;
                s.vsock = Some(uds);
                s.machine = Some(saved["machine"].clone());
                s.drives = saved["drives"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect();
                s.loaded = true;
                s.started = true;
                s.paused = b["resume_vm"] != true;
                Ok(None)
            }
            _ => Err(format!("fake: {method} {path} is not implemented")),
        }
    }

    fn bind_vsock(&self, uds: &str) -> Result<(), String> {
        let path = self.resolve(uds);
        // `CONNECT` in FAKE_FC_HANG: no answer (the guest driver is not active yet);
        // in FAKE_FC_FAIL: closed without `OK` (no listener in the guest).
        let mode = if self.hang.as_deref() == Some("CONNECT") {
            VsockMode::Hang
        } else if self.fail.as_deref() == Some("CONNECT") {
            VsockMode::Refuse
        } else {
            VsockMode::Echo
        };
        let listener = UnixListener::bind(&path).map_err(|e| {
            format!("VsockUnixBackend: Error binding to the host-side Unix socket: {e}")
        })?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || vsock_conn(conn, mode));
            }
        });
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum VsockMode {
    Echo,
    Hang,
    Refuse,
}

/// Hybrid vsock: `CONNECT <port>\n` → `OK <hostport>\n`, then echo.
fn vsock_conn(conn: UnixStream, mode: VsockMode) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let ok = line
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some();
    if !ok || mode == VsockMode::Refuse {
        return;
    }
    if mode == VsockMode::Hang {
        std::thread::park();
        return;
    }
    let _ = out.write_all(b"OK 1073741824\n");
    // With a host-run agent (`bandsox-agent --listen-unix`), the stream is spliced to it.
    if let Some(agent) = std::env::var_os("FAKE_FC_AGENT_SOCK").filter(|a| !a.is_empty()) {
        let Ok(upstream) = UnixStream::connect(agent) else {
            return;
        };
        let (Ok(mut up_r), Ok(mut down_w)) = (upstream.try_clone(), out.try_clone()) else {
            return;
        };
        let mut up_w = upstream;
        let mut down_r = reader;
        let t = std::thread::spawn(move || {
            let _ = std::io::copy(&mut up_r, &mut down_w);
            let _ = down_w.shutdown(std::net::Shutdown::Both);
        });
        let _ = std::io::copy(&mut down_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Both);
        let _ = t.join();
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn fault(msg: &str) -> Value {
    json!({ "fault_message": msg })
}

/// Writes the fake `firecracker` launcher and `jailer` into `bin`, baking in the fake's
/// settings. Returns (firecracker, jailer).
pub fn write_scripts(bin: &Path, log: &Path, fail: &str, hang: &str) -> (PathBuf, PathBuf) {
    write_scripts_with_agent(bin, log, fail, hang, "")
}

/// Like [`write_scripts`]; the vsock stream goes to the agent listening on `agent` (a Unix
/// socket) instead of being echoed.
pub fn write_scripts_with_agent(
    bin: &Path,
    log: &Path,
    fail: &str,
    hang: &str,
    agent: &str,
) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin).unwrap();
    let exe = std::env::current_exe().unwrap();
    let fc = bin.join("firecracker");
    // Each argument becomes a libtest filter `fcarg:<arg>` (matching no test), so the
    // process's command line still names the VM id like Firecracker's does.
    std::fs::write(
        &fc,
        format!(
            r#"#!/bin/sh
export BANDSOX_FAKE_FC=1 FAKE_FC_LOG='{log}' FAKE_FC_FAIL='{fail}' FAKE_FC_HANG='{hang}' FAKE_FC_AGENT_SOCK='{agent}'
n=$#
while [ $n -gt 0 ]; do set -- "$@" "fcarg:$1"; shift; n=$((n-1)); done
exec '{exe}' --exact fake_fc_server --nocapture --test-threads=1 "$@"
"#,
            log = log.display(),
            exe = exe.display(),
        ),
    )
    .unwrap();
    let jailer = bin.join("jailer");
    // Records its argv, builds the jail layout, starts the "VMM" in it with `--id=<id>` like
    // the real jailer, writes `<exec-name>.pid` and exits (as under --new-pid-ns).
    std::fs::write(
        &jailer,
        format!(
            r#"#!/bin/sh
printf '%s\n' "$@" > '{argv}'
id=; exec_file=; base=
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2;;
    --exec-file) exec_file=$2; shift 2;;
    --chroot-base-dir) base=$2; shift 2;;
    --) shift; break;;
    *) shift;;
  esac
done
name=$(basename "$exec_file")
root="$base/$name/$id/root"
mkdir -p "$root" || exit 1
cp "$exec_file" "$root/$name"
cd "$root" || exit 1
FAKE_FC_CHROOT="$root" "$root/$name" "--id=$id" "$@" &
echo $! > "$root/$name.pid"
"#,
            argv = bin.join("jailer.argv").display(),
        ),
    )
    .unwrap();
    for p in [&fc, &jailer] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (fc, jailer)
}
