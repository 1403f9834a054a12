//! A fake Firecracker (v1.16.1): the real command-line grammar ([`super::fake_args`]),
//! the API on `--api-sock` with every request validated against the spec (a violation answers
//! 400 with a `contract violation` fault message), the state machine Firecracker enforces
//! (pre-boot only configuration, load only in a fresh process, create only while paused,
//! metrics configured once, the vsock socket must not exist when bound) and its answers
//! (`204`, `200` + JSON, `400` + `{"fault_message"}`). The vsock socket answers
//! `CONNECT <port>\n` with `OK <n>\n` and then echoes, standing in for the guest agent.
//!
//! **Multi-call test binary.** A test binary that includes this module is also the fake
//! `firecracker` and the fake `jailer` ([`super::fake_jailer`]): [`install`] hard-links it
//! under those names, and a constructor in `.init_array` runs the fake instead of the tests
//! when the executable is named `firecracker*` or `jailer` — before libtest, which would
//! refuse `--id`. So the fakes see, and `/proc/<pid>/cmdline` shows, exactly the command line
//! the driver gives the real binaries. Settings come from `fake-fc.json` next to the binary
//! (or `FAKE_FC_CONFIG`, which the fake jailer sets for the copy it runs in the jail):
//! `log` (JSON lines of every request), `fail` (`METHOD /path` answered 400), `hang`
//! (`METHOD /path` never answered), `agent` (a Unix socket the vsock stream is spliced to).
//! Under the fake jailer, absolute paths resolve inside the jail root (`FAKE_FC_CHROOT`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::fake_args::{self, Parsed};
use super::fake_jailer::{self, HostKind};
use super::validator::ApiSpec;

#[derive(Default)]
struct State {
    id: String,
    started: bool,
    paused: bool,
    configured: bool,
    metrics: bool,
    machine: Option<Value>,
    boot: bool,
    drives: Vec<String>,
    vsock: Option<String>,
    loaded: bool,
}

struct Fake {
    spec: ApiSpec,
    chroot: Option<PathBuf>,
    config: Config,
    state: Mutex<State>,
}

/// The fakes' settings (`fake-fc.json`).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where this configuration was read from.
    pub path: PathBuf,
    pub log: Option<PathBuf>,
    pub fail: Option<String>,
    pub hang: Option<String>,
    pub agent: Option<PathBuf>,
    /// The fake host's mount table (the fake jailer's `/proc/mounts`).
    pub mounts: PathBuf,
    pub cgroup_log: Option<PathBuf>,
    pub jailer_argv: Option<PathBuf>,
}

impl Config {
    fn load(path: &Path) -> Self {
        let v: Value = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let s = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        Self {
            path: path.into(),
            log: s("log").map(PathBuf::from),
            fail: s("fail"),
            hang: s("hang"),
            agent: s("agent").map(PathBuf::from),
            mounts: s("mounts").map(PathBuf::from).unwrap_or_default(),
            cgroup_log: s("cgroup_log").map(PathBuf::from),
            jailer_argv: s("jailer_argv").map(PathBuf::from),
        }
    }
}

// SAFETY-free constructor: a function pointer in `.init_array` runs before `main` (glibc calls
// each entry); it only returns or exits.
#[used]
#[link_section = ".init_array"]
static MULTICALL: extern "C" fn() = multicall;

/// Runs the fake named by this executable's file name, or returns to run the tests.
extern "C" fn multicall() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    // `firecracker`, `firecracker-v1.16.1-x86_64`; not a test binary `firecracker_contract-..`.
    let is_fc = name.starts_with("firecracker") && !name.starts_with("firecracker_");
    if !is_fc && name != "jailer" {
        return;
    }
    let argv: Vec<String> = std::fs::read("/proc/self/cmdline")
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    // The trailing NUL leaves one empty word.
    let argv = match argv.split_last() {
        Some((last, rest)) if last.is_empty() => rest.to_vec(),
        _ => argv,
    };
    let config_path = std::env::var_os("FAKE_FC_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| exe.with_file_name("fake-fc.json"));
    let config = Config::load(&config_path);
    let code = if is_fc {
        firecracker_main(argv, config)
    } else {
        fake_jailer::main(argv, &config)
    };
    std::process::exit(code);
}

/// `utils::validators::validate_instance_id`: `Err((Display, Debug))`.
pub fn validate_instance_id(id: &str) -> Result<(), (String, String)> {
    if id.is_empty() || id.len() > 64 {
        let n = id.len();
        return Err((
            format!("Invalid len ({n});  the length must be between 1 and 64"),
            format!("InvalidLen({n}, 1, 64)"),
        ));
    }
    match id
        .chars()
        .enumerate()
        .find(|(_, c)| !(*c == '-' || c.is_alphanumeric()))
    {
        Some((i, c)) => Err((
            format!("Invalid char ({c}) at position {i}"),
            format!("InvalidChar({c:?}, {i})"),
        )),
        None => Ok(()),
    }
}

/// A log line as Firecracker's logger writes it to stdout before `--log-path` is set.
fn log_line(id: &str, msg: &str) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    println!("{}.{:09} [{id}:main] {msg}", t.as_secs(), t.subsec_nanos());
}

/// The fake Firecracker's `main`: returns the exit code; serves until killed.
fn firecracker_main(argv: Vec<String>, config: Config) -> i32 {
    let args = match fake_args::parse(fake_args::FIRECRACKER, &argv) {
        Ok(Parsed::Help) => {
            println!("Firecracker v{}\n", fake_args::VERSION);
            println!("{}", fake_args::help(fake_args::FIRECRACKER));
            return 0;
        }
        Ok(Parsed::Version) => {
            println!("Firecracker v{}\n", fake_args::VERSION);
            return 0;
        }
        Ok(Parsed::Run(a)) => a,
        Err(e) => {
            // The logger escapes the message's newlines.
            log_line(
                "anonymous-instance",
                &format!("Arguments parsing error: {e} \\n\\nFor more information try --help."),
            );
            log_line(
                "anonymous-instance",
                &format!(
                    "Firecracker exiting with error. exit_code={}",
                    fake_args::FC_EXIT_ARG_PARSING
                ),
            );
            eprintln!("Error: ParseArguments({})", e.debug());
            return fake_args::FC_EXIT_ARG_PARSING;
        }
    };
    for unsupported in [
        "config-file",
        "no-api",
        "snapshot-version",
        "describe-snapshot",
    ] {
        if args.given(unsupported) {
            eprintln!("fake firecracker: --{unsupported} is not modelled");
            return 1;
        }
    }
    let id = args.single("id").unwrap_or_default().to_string();
    if let Err((msg, _)) = validate_instance_id(&id) {
        // `validate_instance_id(..).expect("Invalid instance ID")` with panic = "abort".
        log_line(
            "anonymous-instance",
            &format!("Firecracker panicked at src/firecracker/src/main.rs:309:48:\nInvalid instance ID: {msg}"),
        );
        std::process::abort();
    }
    let api_sock = args.single("api-sock").unwrap_or_default().to_string();
    let fake = Arc::new(Fake {
        spec: ApiSpec::load(),
        chroot: std::env::var_os("FAKE_FC_CHROOT").map(PathBuf::from),
        config,
        state: Mutex::new(State {
            id,
            ..State::default()
        }),
    });
    let sock = fake.resolve(&api_sock);
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            log_line(
                "anonymous-instance",
                &format!("RunWithApi error: Failed to open the API socket at: {api_sock}. Check that it is not already used. {e}"),
            );
            return 1;
        }
    };
    for conn in listener.incoming().flatten() {
        let fake = fake.clone();
        std::thread::spawn(move || fake.serve(conn));
    }
    0
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
            if self.config.hang.as_deref() == Some(key.as_str()) {
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
                Ok(()) if self.config.fail.as_deref() == Some(key.as_str()) => {
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
        if let Some(log) = &self.config.log {
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
        if let Some(msg) = refused_by_this_version(path, body) {
            return (400, Some(fault(&msg)));
        }
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
                    json!({ "id": s.id, "state": state, "vmm_version": fake_args::VERSION, "app_name": "Firecracker" }),
                ))
            }
            ("PUT", "/logger") => {
                self.exists(&b["log_path"])?;
                Ok(None)
            }
            ("PUT", "/metrics") => {
                self.exists(&b["metrics_path"])?;
                if s.metrics {
                    return Err("Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.".into());
                }
                s.metrics = true;
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
        let mode = if self.config.hang.as_deref() == Some("CONNECT") {
            VsockMode::Hang
        } else if self.config.fail.as_deref() == Some("CONNECT") {
            VsockMode::Refuse
        } else {
            VsockMode::Echo
        };
        let listener = UnixListener::bind(&path).map_err(|e| {
            format!("VsockUnixBackend: Error binding to the host-side Unix socket: {e}")
        })?;
        let agent = self.config.agent.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let agent = agent.clone();
                std::thread::spawn(move || vsock_conn(conn, mode, agent));
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
fn vsock_conn(conn: UnixStream, mode: VsockMode, agent: Option<PathBuf>) {
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
    if let Some(agent) = agent {
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

/// What the spec copy (v1.17.0-dev) allows but v1.16.1's body parser refuses.
fn refused_by_this_version(path: &str, body: Option<&Value>) -> Option<String> {
    let b = body?;
    let unknown = |field: &str| {
        format!("An error occurred when deserializing the json body of a request: unknown field `{field}`")
    };
    match path {
        "/snapshot/load" if b.get("huge_pages").is_some() => Some(unknown("huge_pages")),
        "/machine-config" if b["huge_pages"] == "Transparent" => Some(
            "An error occurred when deserializing the json body of a request: unknown variant `Transparent`, expected `None` or `2M`".into(),
        ),
        _ => None,
    }
}

fn fault(msg: &str) -> Value {
    json!({ "fault_message": msg })
}

/// Kills every fake left running from `dir` (its executable is one of the links [`install`]
/// made there, or a jailed copy below it): for a test that failed half-way.
pub fn kill_fakes_under(dir: &Path) {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id()
            && std::fs::read_link(e.path().join("exe")).is_ok_and(|exe| exe.starts_with(dir))
        {
            bandsox_vmm::kill_process(pid);
        }
    }
}

/// Runs `bin` with `args`: (exit code, stdout, stderr).
pub fn run_binary(bin: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(bin).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the installed fakes do.
#[derive(Debug, Clone)]
pub struct FakeOptions<'a> {
    /// `METHOD /path` answered 400 (or `CONNECT`: the vsock stream closes without `OK`).
    pub fail: &'a str,
    /// `METHOD /path` never answered (or `CONNECT`: no answer).
    pub hang: &'a str,
    /// A Unix socket the vsock stream is spliced to (a host-run agent); empty: echo.
    pub agent: &'a str,
    /// The cgroup hierarchies of the fake host the jailer sees.
    pub host: HostKind,
}

impl Default for FakeOptions<'_> {
    fn default() -> Self {
        Self {
            fail: "",
            hang: "",
            agent: "",
            host: HostKind::V2,
        }
    }
}

/// Where [`install`] put things.
#[derive(Debug, Clone)]
pub struct Fakes {
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    /// The fake host's mount table: the driver's `cgroup_mounts`.
    pub mounts: PathBuf,
    /// JSON lines of every API request.
    pub requests: PathBuf,
    /// JSON lines of every cgroup file the fake jailer wrote.
    pub cgroup_log: PathBuf,
    /// The fake jailer's last argv (one word a line).
    pub jailer_argv: PathBuf,
}

/// Installs the fakes under `dir`: `bin/firecracker` and `bin/jailer` (links to this test
/// binary), `bin/fake-fc.json`, and a fake cgroup host under `dir/host`.
pub fn install(dir: &Path, opts: &FakeOptions) -> Fakes {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mounts = fake_jailer::make_host(&dir.join("host"), opts.host);
    let exe = std::env::current_exe().unwrap();
    let link = |name: &str| {
        let p = bin.join(name);
        let _ = std::fs::remove_file(&p);
        if std::fs::hard_link(&exe, &p).is_err() {
            std::fs::copy(&exe, &p).unwrap();
        }
        p
    };
    let fakes = Fakes {
        firecracker: link("firecracker"),
        jailer: link("jailer"),
        mounts,
        requests: dir.join("requests.jsonl"),
        cgroup_log: dir.join("cgroup.jsonl"),
        jailer_argv: bin.join("jailer.argv"),
    };
    let config = json!({
        "log": fakes.requests,
        "fail": opts.fail,
        "hang": opts.hang,
        "agent": opts.agent,
        "mounts": fakes.mounts,
        "cgroup_log": fakes.cgroup_log,
        "jailer_argv": fakes.jailer_argv,
    });
    std::fs::write(bin.join("fake-fc.json"), config.to_string()).unwrap();
    fakes
}
