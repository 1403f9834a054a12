//! Helpers of the image tests: a real OCI registry (Debian's `docker-registry`) on a free
//! loopback port, tar and image builders, and `skopeo` pushes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bandsox_image::oci::{write_layout, LayoutLayer};
use bandsox_image::unpack::Compression;

/// A `docker-registry serve` process with its storage in a temp dir; killed on drop.
pub struct Registry {
    pub port: u16,
    pub storage: tempfile::TempDir,
    child: Child,
}

impl Registry {
    pub fn start() -> Self {
        let storage = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            storage,
            child,
        }
    }

    /// `127.0.0.1:PORT/<name>`.
    pub fn reference(&self, name: &str) -> String {
        format!("127.0.0.1:{}/{name}", self.port)
    }

    /// Pushes the OCI layout at `layout` (tag `tag`) as `name` with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, name: &str) {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}", self.reference(name)))
            .output()
            .expect("skopeo (Debian package skopeo) must be installed");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Path of a blob in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Builds tar archives; names are written raw so hostile entries can be made.
#[derive(Default)]
pub struct Tar {
    out: Vec<u8>,
}

impl Tar {
    pub fn raw(
        mut self,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        data: &[u8],
        mode: u32,
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let bytes = h.as_mut_bytes();
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        self.out
            .extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
        self
    }
    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.raw(tar::EntryType::Regular, name, "", data, 0o644)
    }
    pub fn exe(self, name: &str, data: &[u8]) -> Self {
        self.raw(tar::EntryType::Regular, name, "", data, 0o755)
    }
    pub fn dir(self, name: &str) -> Self {
        self.raw(tar::EntryType::Directory, name, "", b"", 0o755)
    }
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(tar::EntryType::Symlink, name, target, b"", 0o777)
    }
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.raw(tar::EntryType::Link, name, target, b"", 0o644)
    }
    pub fn done(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }
}

pub fn busybox_bytes() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect("busybox-static")
}

/// A layer with busybox as `/bin/busybox` and `sh`, `ls`, `cat`, ... links.
pub fn busybox_layer() -> Vec<u8> {
    let mut t = Tar::default()
        .dir("bin/")
        .exe("bin/busybox", &busybox_bytes())
        .dir("etc/")
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/group", b"root:x:0:\n")
        .dir("tmp/");
    for applet in [
        "sh", "ls", "cat", "echo", "pwd", "test", "env", "readlink", "stat", "id",
    ] {
        t = t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.done()
}

/// Writes an OCI layout of `layers` (gzip, zstd and plain alternating) at `dir`.
pub fn layout(dir: &Path, layers: Vec<Vec<u8>>, config: serde_json::Value, tag: &str) -> String {
    let comps = [Compression::Gzip, Compression::Zstd, Compression::None];
    let layers: Vec<LayoutLayer> = layers
        .into_iter()
        .enumerate()
        .map(|(i, tar)| LayoutLayer {
            tar,
            compression: comps[i % 3],
        })
        .collect();
    write_layout(dir, &layers, config, tag).unwrap()
}

/// Lists entries of a directory (names), sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `debugfs -R "cat PATH" IMAGE`: a file from an ext4 image without mounting it.
pub fn ext4_cat(image: &Path, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .ok()?;
    if out.status.success() && !out.stdout.is_empty() {
        Some(out.stdout)
    } else {
        None
    }
}
