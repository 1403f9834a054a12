//! A writer for the cpio "newc" format (`070701` headers), the format the kernel unpacks an
//! initramfs from.
//!
//! Each entry is a 110-byte ASCII header of thirteen 8-digit hex fields, the NUL-terminated
//! name padded to a multiple of 4 bytes (counting the header), then the data padded the same
//! way. The archive ends with an entry named `TRAILER!!!`. Timestamps are 0 and owners root, so
//! the output depends only on the entries.

use std::io::{self, Write};

const NEWC_MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams a newc archive into `W`. Paths are relative to the archive root (a leading `/` is
/// dropped); parent directories must be added before their children.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Adds a directory with permission bits `mode` (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])
    }

    /// Adds a regular file with permission bits `mode` (e.g. `0o644`).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node (e.g. `dev/console`, 5:1).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer (not flushed).
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, 1, 0, (0, 0))?;
        self.pad()?;
        Ok(self.out)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name == TRAILER || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {path:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} exceeds 4 GiB"))
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, size, rdev)?;
        self.put(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        (rmajor, rminor): (u32, u32),
    ) -> io::Result<()> {
        let name_len = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, name_len, 0,
        ];
        let mut h = Vec::with_capacity(110 + name.len() + 4);
        h.extend_from_slice(NEWC_MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        h.extend_from_slice(name.as_bytes());
        h.push(0);
        self.put(&h)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

/// One parsed archive entry (for tests and diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer.
pub fn parse_newc(mut bytes: &[u8]) -> io::Result<Vec<CpioEntry>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let total = bytes.len();
    let mut entries = Vec::new();
    loop {
        if bytes.len() < 110 || &bytes[..6] != NEWC_MAGIC {
            return Err(bad("bad newc header"));
        }
        let field = |i: usize| -> io::Result<u32> {
            let s = std::str::from_utf8(&bytes[6 + i * 8..14 + i * 8]).map_err(|_| bad("hex"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad("hex"))
        };
        let (mode, size, rmajor, rminor, name_len) = (
            field(1)?,
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let name_end = 110 + name_len;
        if name_len == 0 || bytes.len() < name_end {
            return Err(bad("truncated name"));
        }
        let name = String::from_utf8_lossy(&bytes[110..name_end - 1]).into_owned();
        let offset = total - bytes.len();
        let data_start = align4(offset + name_end) - offset;
        let data_end = data_start + size;
        if bytes.len() < data_end {
            return Err(bad("truncated data"));
        }
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(CpioEntry {
            name,
            mode,
            rdev: (rmajor, rminor),
            data: bytes[data_start..data_end].to_vec(),
        });
        let next = (align4(offset + data_end) - offset).min(bytes.len());
        bytes = &bytes[next..];
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.dir("/lib", 0o755).unwrap();
        w.dir("lib/modules", 0o755).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("lib/modules/a.ko", 0o644, &[1, 2, 3, 4, 5]).unwrap();
        w.file("empty", 0o600, b"").unwrap();
        w.symlink("lib/link", "modules/a.ko").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn newc_roundtrip_by_parsing() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse_newc(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "lib",
                "lib/modules",
                "init",
                "lib/modules/a.ko",
                "empty",
                "lib/link"
            ]
        );
        assert_eq!(entries[1].mode, S_IFCHR | 0o600);
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[4].mode, S_IFREG | 0o755);
        assert_eq!(entries[4].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[5].data, [1, 2, 3, 4, 5]);
        assert_eq!(entries[7].mode & S_IFLNK, S_IFLNK);
        assert_eq!(entries[7].data, b"modules/a.ko");
    }

    /// Cross-checks with the system `cpio` tool when it is installed.
    #[test]
    fn system_cpio_lists_and_extracts() {
        use std::process::{Command, Stdio};
        let bytes = sample();
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &bytes).unwrap();
        let list = match Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&archive)
            .output()
        {
            Ok(out) => out,
            Err(_) => {
                eprintln!("skipping: cpio not installed");
                return;
            }
        };
        assert!(list.status.success());
        let listed = String::from_utf8(list.stdout).unwrap();
        assert_eq!(
            listed.lines().collect::<Vec<_>>(),
            [
                "dev",
                "dev/console",
                "lib",
                "lib/modules",
                "init",
                "lib/modules/a.ko",
                "empty",
                "lib/link"
            ]
        );
        let out = dir.path().join("x");
        std::fs::create_dir(&out).unwrap();
        // Skip the device node: mknod may be refused in a test sandbox.
        let status = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&archive)
            .args(["init", "lib*", "empty"])
            .current_dir(&out)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read(out.join("lib/modules/a.ko")).unwrap(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(
            std::fs::read_link(out.join("lib/link")).unwrap(),
            std::path::Path::new("modules/a.ko")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn bad_names_are_refused() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
    }
}
