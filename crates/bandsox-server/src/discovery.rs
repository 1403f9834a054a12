//! `<storage>/server.json`: how local clients find the server that owns a storage root (the
//! Python SDK's `BandSox(storage_dir=...)` reads it, and starts a server when it is missing
//! or stale). Written once the API listener is bound, removed when the server stops.
//!
//! One server per root is kept by the root's lock, which the manager takes before it opens
//! the database (`bandsox_core::Storage::lock`), not here.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
