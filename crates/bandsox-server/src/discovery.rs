//! `<storage>/server.json`: how local clients find the server that owns a storage root (the
//! Python SDK's `BandSox(storage_dir=...)` reads it, and starts a server when it is missing
//! or stale). Written once the API listener is bound, removed when the server stops.
//!
//! `<storage>/server.lock` keeps a second server off a root that one already serves (an
//! exclusive `flock` held for the server's life; the kernel drops it when the process ends,
//! however it ends).

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// File name inside the storage root.
pub const SERVER_FILE: &str = "server.json";

/// `http://ADDR` a local client reaches `addr` under (an unspecified address becomes the
/// loopback address of its family).
pub fn local_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Lock file name inside the storage root.
pub const LOCK_FILE: &str = "server.lock";

/// The held lock of a storage root (released on drop or when the process ends).
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

/// Takes `<root>/server.lock`. `Ok(None)` when another process holds it.
pub fn lock_root(root: &Path) -> io::Result<Option<RootLock>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(LOCK_FILE))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(RootLock { _file: file }));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// `pid N at URL` of the server named by `<root>/server.json`, if the file reads.
pub fn holder(root: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(SERVER_FILE)).ok()?).ok()?;
    Some(format!(
        "pid {} at {}",
        v.get("pid")?.as_u64()?,
        v.get("url")?.as_str()?
    ))
}

/// The written file; dropping it removes the file if it still names this process.
#[derive(Debug)]
pub struct ServerFile {
    path: PathBuf,
}

impl ServerFile {
    /// Writes `<root>/server.json` atomically: `{"pid","url","proxy_url","version"}`.
    pub fn write(root: &Path, api: SocketAddr, proxy: Option<SocketAddr>) -> io::Result<Self> {
        let path = root.join(SERVER_FILE);
        let body = serde_json::json!({
            "pid": std::process::id(),
            "url": local_url(api),
            "proxy_url": proxy.map(local_url),
            "version": env!("CARGO_PKG_VERSION"),
        });
        let tmp = root.join(format!(".{SERVER_FILE}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, format!("{body}\n"))?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Self { path })
    }
}

impl Drop for ServerFile {
    fn drop(&mut self) {
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("pid").and_then(|p| p.as_u64()))
            == Some(u64::from(std::process::id()));
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_become_loopback() {
        assert_eq!(
            local_url("0.0.0.0:80".parse().unwrap()),
            "http://127.0.0.1:80"
        );
        assert_eq!(local_url("[::]:80".parse().unwrap()), "http://[::1]:80");
        assert_eq!(
            local_url("10.0.0.1:8".parse().unwrap()),
            "http://10.0.0.1:8"
        );
    }

    #[test]
    fn one_lock_per_root() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_root(dir.path()).unwrap();
        assert!(held.is_some());
        // A second open file description (what a second server has) cannot take it.
        assert!(lock_root(dir.path()).unwrap().is_none());
        drop(held);
        assert!(lock_root(dir.path()).unwrap().is_some());
    }

    #[test]
    fn written_then_removed_only_while_ours() {
        let dir = tempfile::tempdir().unwrap();
        let api: SocketAddr = "127.0.0.1:1234".parse().unwrap();
        let f =
            ServerFile::write(dir.path(), api, Some("127.0.0.1:1235".parse().unwrap())).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(SERVER_FILE)).unwrap()).unwrap();
        assert_eq!(v["url"], "http://127.0.0.1:1234");
        assert_eq!(v["proxy_url"], "http://127.0.0.1:1235");
        assert_eq!(v["pid"], std::process::id());
        drop(f);
        assert!(!dir.path().join(SERVER_FILE).exists());
        // Another server's file is left alone.
        let f = ServerFile::write(dir.path(), api, None).unwrap();
        std::fs::write(dir.path().join(SERVER_FILE), r#"{"pid":1}"#).unwrap();
        drop(f);
        assert!(dir.path().join(SERVER_FILE).exists());
    }
}
