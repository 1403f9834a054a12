//! Helpers shared by the CLI tests: the `bandsox` binary, a storage root, a server process.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../bandsox-core/tests/common/cleanup.rs"]
mod cleanup;

pub const BIN: &str = env!("CARGO_BIN_EXE_bandsox");

pub fn agent_bin() -> PathBuf {
    std::env::var_os("BANDSOX_AGENT_BIN").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/x86_64-unknown-linux-gnu/release/bandsox-agent")
        },
        PathBuf::from,
    )
}

pub fn bandsox(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BANDSOX_URL", url)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server process, killed on drop.
pub struct Server {
    pub child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(storage: &Path, port: u16) -> Server {
    start_server_with(storage, port, &[])
}

/// [`start_server`] with more `serve` flags. The guest proxy listens on a free port unless
/// `flags` choose one (its URL is `proxy_url` in `/api/version`).
pub fn start_server_with(storage: &Path, port: u16, flags: &[&str]) -> Server {
    let proxy: &[&str] = if flags.contains(&"--proxy-port") || flags.contains(&"--no-proxy") {
        &[]
    } else {
        &["--proxy-port", "0"]
    };
    let child = Command::new(BIN)
        .args(["serve", "--port", &port.to_string(), "--storage"])
        .arg(storage)
        .args(proxy)
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Server { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{port}/api/version");
    // Any HTTP answer (a 401 with auth on, too) means the server is up.
    while matches!(ureq::get(&url).call(), Err(ureq::Error::Transport(_))) {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// The base URL of the server's guest proxy listener.
pub fn proxy_url(api: &str) -> String {
    let v: serde_json::Value = ureq::get(&format!("{api}/api/version"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    v["proxy_url"]
        .as_str()
        .expect("the server runs a proxy")
        .to_owned()
}

/// Status and JSON body (Null when not JSON) of a `ureq` call, whether it succeeded or not.
pub fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, serde_json::Value) {
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    }
}

pub fn init(storage: &Path) -> Output {
    Command::new(BIN)
        .arg("init")
        .arg("--storage")
        .arg(storage)
        .arg("--agent")
        .arg(agent_bin())
        .output()
        .unwrap()
}

/// A temporary storage root; on drop every process still naming it (VMMs left by a failed
/// test) is killed.
pub struct TestRoot {
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    pub fn new(prefix: &str) -> Self {
        Self {
            dir: tempfile::Builder::new().prefix(prefix).tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        cleanup::clean_root(self.dir.path());
    }
}

/// `auth init` on `storage` (also its HOME): (admin password, API key).
pub fn auth_init(storage: &Path) -> (String, String) {
    let out = Command::new(BIN)
        .args(["auth", "init", "--storage"])
        .arg(storage)
        .env("HOME", storage)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    (field("admin password"), field("API key"))
}
