//! The storage root and every path below it. Ids are validated before they become paths;
//! user-chosen names are labels and never reach a path.

use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// Default storage root.
pub const DEFAULT_STORAGE: &str = "/var/lib/bandsox";

/// Makes a storage root private to its owner: from now on this process creates files 0600
/// and directories 0700 (umask 077), and a root made by an older version is fixed: the root
/// 0700, the database, VM and snapshot directories and their files without group or other
/// bits. (Image base disks are shared read-only content; the root's mode keeps others out.)
fn secure_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
    // `keep`: permission bits left alone (a Firecracker jail seals snapshot files 0640 for
    // its own group).
    let tighten = |p: &Path, keep: u32| {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            let mode = m.permissions().mode() & 0o7777;
            let new = mode & (0o7700 | keep);
            if !m.file_type().is_symlink() && new != mode {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(new));
            }
        }
    };
    tighten(root, 0);
    for f in [
        "bandsox.db",
        "bandsox.db-wal",
        "bandsox.db-shm",
        LOCK_OWNER_FILE,
    ] {
        tighten(&root.join(f), 0);
    }
    for d in ["vms", "snapshots"] {
        tighten(&root.join(d), 0);
        for entry in std::fs::read_dir(root.join(d))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = entry.path();
            tighten(&p, 0);
            for f in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                tighten(&f.path(), 0o050);
            }
        }
    }
}

/// Names the process holding a root's lock: `<pid> <command>`.
const LOCK_OWNER_FILE: &str = "bandsox.pid";

/// Held while a process owns a storage root (see [`Storage::lock`]); dropping it releases it.
#[derive(Debug)]
pub struct StorageLock {
    _dir: std::fs::File,
}

/// Layout of a storage root:
/// `bandsox.db`, `images/<digest>/`, `kernels/`, `vms/<id>/`, `snapshots/<id>/`.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Uses `root` (made absolute) without touching the filesystem.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()?.join(root)
        };
        Ok(Self { root })
    }

    /// The root from `BANDSOX_STORAGE`, else the default.
    pub fn from_env() -> Result<Self> {
        Self::new(
            bandsox_config::get_os(bandsox_config::STORAGE)
                .map_or_else(|| PathBuf::from(DEFAULT_STORAGE), PathBuf::from),
        )
    }

    /// Creates the directory layout (idempotent).
    pub fn create_layout(&self) -> Result<()> {
        for d in ["images", "kernels", "vms", "snapshots"] {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the exclusive lock on the storage root (an `flock` on the root directory, so it
    /// is released when the process exits, however it exits). `what` names the holder
    /// (`serve`, `init`, ...) in the message a second owner gets. Fails at once, naming the
    /// PID that holds it, instead of waiting. Creates the root (mode 0700) if needed.
    pub fn lock(&self, what: &str) -> Result<StorageLock> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        let dir = std::fs::File::open(&self.root)?;
        // SAFETY: `dir` is an open descriptor owned here; flock takes no pointers.
        let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e.into());
            }
            let holder = std::fs::read_to_string(self.root.join(LOCK_OWNER_FILE))
                .ok()
                .and_then(|s| {
                    let mut it = s.split_whitespace();
                    let pid: u32 = it.next()?.parse().ok()?;
                    let cmd: String = it.next().unwrap_or("bandsox").chars().take(32).collect();
                    Some(format!("PID {pid} (bandsox {cmd})"))
                })
                .unwrap_or_else(|| "another bandsox process".into());
            return Err(CoreError::Locked(format!(
                "storage root {} is in use by {holder}",
                self.root.display()
            )));
        }
        // Written by rename, so a hard-linked copy of a root never shares the owner file.
        let tmp = self
            .root
            .join(format!("{LOCK_OWNER_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, format!("{} {what}\n", std::process::id()))?;
        std::fs::rename(&tmp, self.root.join(LOCK_OWNER_FILE))?;
        // Older servers took a second lock on this file; this lock is the only one now.
        let _ = std::fs::remove_file(self.root.join("server.lock"));
        secure_tree(&self.root);
        Ok(StorageLock { _dir: dir })
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("bandsox.db")
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Directory of one VM. `id` must be valid (see [`validate_id`]).
    pub fn vm_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.vms_dir().join(id))
    }

    /// Directory of one image, by its `sha256:<hex>` digest.
    pub fn image_dir(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
            .ok_or_else(|| CoreError::InvalidInput(format!("invalid image digest `{digest}`")))?;
        Ok(self.images_dir().join(hex))
    }
}

/// An id is 1 to 64 characters of `[a-z0-9-]`, not starting with `-`. Everything else is
/// refused before it can reach a filesystem path.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidInput(format!(
            "invalid id `{}`: ids are 1-64 characters of a-z, 0-9 and '-'",
            id.escape_debug()
                .to_string()
                .chars()
                .take(80)
                .collect::<String>()
        )))
    }
}

/// A fresh random id (UUID v4 text form, like BandSox's).
pub fn new_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex_lower(&b);
    let variant = ["8", "9", "a", "b"][(b[8] >> 6) as usize];
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        variant,
        &h[17..20],
        &h[20..32]
    )
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_are_refused() {
        for bad in [
            "",
            "..",
            "a/b",
            "../x",
            "A",
            "-rf",
            "a\0b",
            &"a".repeat(65),
            "a b",
            "é",
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        validate_id(&new_id()).unwrap();
        assert_eq!(new_id().len(), 36);
    }

    #[test]
    fn digest_paths_are_checked() {
        let s = Storage::new("/s").unwrap();
        assert!(s.image_dir("sha256:../../etc").is_err());
        assert!(s.image_dir(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert_eq!(
            s.image_dir(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            PathBuf::from(format!("/s/images/{}", "a".repeat(64)))
        );
    }
}
