//! Real etcd members as child processes, for tests (of this crate and of the CLI): each
//! member has its own data directory and loopback ports, and is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary: `BANDSOX_ETCD_BIN`, else `etcd` on PATH (Debian's `etcd-server`).
pub fn etcd_bin() -> PathBuf {
    bandsox_config::get_os(bandsox_config::ETCD_BIN)
        .map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// A local etcd cluster of `n` members.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    /// Client port of member `i` is `base_port + 2 i`, its peer port the next one.
    base_port: u16,
    members: Vec<Option<Child>>,
    initial: String,
}

impl EtcdCluster {
    /// Starts `n` members under `dir` on ports `base_port .. base_port + 2 n` and waits until
    /// the cluster serves writes (at most 30 s).
    pub fn start(dir: &Path, base_port: u16, n: usize) -> std::io::Result<Self> {
        let initial = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", base_port + 2 * i as u16 + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Self {
            dir: dir.to_owned(),
            base_port,
            members: (0..n).map(|_| None).collect(),
            initial,
        };
        for i in 0..n {
            c.start_member(i)?;
        }
        c.wait_ready(Duration::from_secs(30))?;
        Ok(c)
    }

    /// The `--cluster` list of every member.
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.client_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client URL of member `i`.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.base_port + 2 * i as u16)
    }

    /// (Re)starts member `i` with its existing data directory.
    pub fn start_member(&mut self, i: usize) -> std::io::Result<()> {
        if self.members[i].is_some() {
            return Ok(());
        }
        let data = self.dir.join(format!("m{i}"));
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("m{i}.log")))?;
        let client = self.client_url(i);
        let peer = format!("http://127.0.0.1:{}", self.base_port + 2 * i as u16 + 1);
        let child = Command::new(etcd_bin())
            .arg("--name")
            .arg(format!("m{i}"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "bandsox-test"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start {} ({e}); install Debian's etcd-server (scripts/setup)",
                        etcd_bin().display()
                    ),
                )
            })?;
        self.members[i] = Some(child);
        Ok(())
    }

    /// Kills member `i` (SIGKILL) and waits for it.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until a put through member 0..n succeeds.
    pub fn wait_ready(&self, limit: Duration) -> std::io::Result<()> {
        let start = Instant::now();
        loop {
            for i in 0..self.members.len() {
                if self.members[i].is_some() && put_ok(&self.client_url(i)) {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                return Err(std::io::Error::other(format!(
                    "etcd did not become ready in {limit:?}; see {}/m*.log",
                    self.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A blocking put of a probe key through `url` (raw HTTP, no client library).
fn put_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(addr) = url.strip_prefix("http://") else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let body = r#"{"key":"X19wcm9iZQ==","value":"eA=="}"#;
    let req = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") && out.contains("\"revision\"")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}
