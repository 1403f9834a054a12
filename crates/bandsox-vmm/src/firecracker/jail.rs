//! The per-VM directory Firecracker runs in, and the jailer's and Firecracker's command lines.
//!
//! Every VM gets `<chroot_base>/<exec-name>/<id>/root/` (the jailer's layout). Its kernel,
//! initramfs, disks and, on restore, snapshot files are hard-linked there (copied when a link
//! is impossible) and owned by the jail uid. All API paths are relative (`vmlinux`,
//! `drive0`, `v.sock`): inside the jail they resolve against `/`, without the jailer against
//! the directory Firecracker is started in. So every VM, and every clone restored from a
//! snapshot, sees the same paths, which Firecracker's snapshots require (drive paths are
//! stored in the state file and cannot be overridden on load).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::cgroup::CgroupPlan;
use crate::{VmSpec, VmmError};

/// Longest Unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// API socket inside the root.
pub const API_SOCK: &str = "api.sock";
/// Hybrid vsock socket inside the root.
pub const VSOCK: &str = "v.sock";
pub const KERNEL: &str = "vmlinux";
pub const INITRD: &str = "initrd";
pub const LOG: &str = "fc.log";
pub const METRICS: &str = "fc.metrics";
/// Snapshot files a restore loads (hard links to the saved ones).
pub const LOAD_STATE: &str = "load.vmstate";
pub const LOAD_MEM: &str = "load.mem";

/// Name of the `i`-th drive inside the root.
pub fn drive_name(i: usize) -> String {
    format!("drive{i}")
}

/// Where one VM's files live.
#[derive(Debug, Clone)]
pub struct Jail {
    /// `<chroot_base>/<exec-name>/<id>`: removed whole on cleanup.
    pub dir: PathBuf,
    /// `<dir>/root`: the chroot.
    pub root: PathBuf,
    /// Owner of the files the VMM opens.
    pub uid: u32,
    pub gid: u32,
    /// Every cgroup directory the jailer may create for this VM (see
    /// [`super::cgroup::CgroupHost::vm_dirs`]); empty without the jailer.
    pub cgroups: Vec<PathBuf>,
}

impl Jail {
    pub fn new(
        chroot_base: &Path,
        exec_name: &str,
        id: &str,
        uid: u32,
        gid: u32,
        cgroups: Vec<PathBuf>,
    ) -> Result<Self, VmmError> {
        let dir = chroot_base.join(exec_name).join(id);
        let root = dir.join("root");
        for name in [API_SOCK, VSOCK] {
            let p = root.join(name);
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmmError::SocketPathTooLong(p));
            }
        }
        Ok(Self {
            dir,
            root,
            uid,
            gid,
            cgroups,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates an empty root, removing what an earlier VMM of this id left behind.
    pub fn create(&self) -> Result<(), VmmError> {
        self.remove();
        std::fs::create_dir_all(&self.root)?;
        Ok(())
    }

    /// Hard-links (or copies) `src` into the root as `name`, owned by the jail user: for
    /// files the VMM writes (the VM's own disk, its logs).
    pub fn link(&self, src: &Path, name: &str) -> Result<(), VmmError> {
        self.link_inner(src, name, false)?;
        self.chown(&self.path(name))
    }

    /// Links a file the VMM only reads (kernel, initramfs, shared image disk, snapshot files)
    /// **without** giving it to the jail user: a hard link shares the inode, and a shared
    /// base image owned by the jail uid could be rewritten by any VMM. A file that others
    /// cannot read is copied instead, and the private copy is given to the jail user.
    pub fn link_read_only(&self, src: &Path, name: &str) -> Result<(), VmmError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(src)?;
        let mode = meta.permissions().mode();
        let readable = mode & 0o004 != 0 || (mode & 0o040 != 0 && meta.gid() == self.gid);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if readable || !root {
            return self.link_inner(src, name, false);
        }
        self.link_inner(src, name, true)?;
        self.chown(&self.path(name))
    }

    fn link_inner(&self, src: &Path, name: &str, copy: bool) -> Result<(), VmmError> {
        let dst = self.path(name);
        let _ = std::fs::remove_file(&dst);
        let linked = if copy {
            Err(io::Error::other("copy requested"))
        } else {
            std::fs::hard_link(src, &dst)
        };
        if let Err(e) = linked {
            tracing::debug!(src = %src.display(), error = %e, "hard link failed; copying");
            std::fs::copy(src, &dst).map_err(|e| {
                VmmError::Io(io::Error::new(
                    e.kind(),
                    format!("copy {} into the jail: {e}", src.display()),
                ))
            })?;
        }
        Ok(())
    }

    /// Creates an empty file (log, metrics) owned by the jail user, hard-linked to `outside`
    /// so it survives the jail.
    pub fn log_file(&self, outside: &Path, name: &str) -> Result<(), VmmError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(outside)?;
        self.chown(outside)?;
        self.link(outside, name)
    }

    /// Makes a file the VMM wrote (a snapshot) read-only for the jail: owned by us, readable
    /// by the jail group only (guest memory is private), so later restores can hard-link it
    /// without any VMM being able to change it.
    pub fn seal(&self, p: &Path) -> Result<(), VmmError> {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 {
            std::os::unix::fs::chown(p, Some(0), Some(self.gid))?;
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640))?;
        Ok(())
    }

    fn chown(&self, p: &Path) -> Result<(), VmmError> {
        // Only root can give files away; without root the jailer cannot run either and the
        // plain VMM runs as ourselves.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        let meta = std::fs::metadata(p)?;
        if meta.uid() == self.uid && meta.gid() == self.gid {
            return Ok(());
        }
        std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid))?;
        Ok(())
    }

    /// Removes the jail directory and the VM's cgroups; missing pieces are fine.
    pub fn remove(&self) {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the jail")
            }
        }
        for cg in &self.cgroups {
            // A cgroup directory is removed with rmdir (its files are the kernel's).
            match std::fs::remove_dir(cg) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(cgroup = %cg.display(), error = %e, "could not remove the cgroup")
                }
            }
        }
    }
}

/// Settings for running the VMM under the jailer.
#[derive(Debug, Clone)]
pub struct JailerOptions {
    pub jailer: PathBuf,
    /// Network namespace to join (`/var/run/netns/<name>`), if any.
    pub netns: Option<PathBuf>,
}

/// Where `ip netns` keeps the named network namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// The jailer command line for `spec`, as the jailer parses it (every option and its value
/// are separate words): the cgroup version and limits of `cgroups`, a new PID namespace, and
/// Firecracker's own arguments after `--`.
pub fn jailer_args(
    opts: &JailerOptions,
    firecracker: &Path,
    chroot_base: &Path,
    jail: &Jail,
    spec: &VmSpec,
    cgroups: &CgroupPlan,
) -> Vec<String> {
    let mut args = vec![
        "--id".into(),
        spec.id.clone(),
        "--exec-file".into(),
        firecracker.display().to_string(),
        "--uid".into(),
        jail.uid.to_string(),
        "--gid".into(),
        jail.gid.to_string(),
        "--chroot-base-dir".into(),
        chroot_base.display().to_string(),
    ];
    if let Some(v) = cgroups.version {
        args.extend(["--cgroup-version".into(), v.to_string()]);
        for s in &cgroups.settings {
            args.extend(["--cgroup".into(), s.clone()]);
        }
    }
    args.push("--new-pid-ns".into());
    // The VM's own namespace (its TAP lives there), else the configured default.
    let netns = match &spec.network {
        Some(n) => Some(netns_path(&n.netns)),
        None => opts.netns.clone(),
    };
    if let Some(ns) = netns {
        args.push("--netns".into());
        args.push(ns.display().to_string());
    }
    args.extend(["--".into(), "--api-sock".into(), format!("/{API_SOCK}")]);
    args
}

/// The plain Firecracker command line (no jailer): `--id <id>` as two words, as Firecracker's
/// parser takes it (`--id=<id>` is refused with exit code 153), and the API socket.
pub fn firecracker_args(id: &str, api_sock: &Path) -> Vec<String> {
    vec![
        "--id".into(),
        id.into(),
        "--api-sock".into(),
        api_sock.display().to_string(),
    ]
}

/// Whether the command line `cmdline` (NUL-separated, as in `/proc/<pid>/cmdline`) is
/// Firecracker's for VM `id`: the program is named `exec_name` (plain: the binary's path;
/// under the jailer its copy, `/<exec-name>`) and its options carry `--id <id>`. Options end at
/// a `--` word (Firecracker ignores what follows), and no option value starts with `--`, so
/// a `--id` word among the options is always the option.
pub fn is_firecracker_of(cmdline: &[u8], exec_name: &str, id: &str) -> bool {
    let mut words = cmdline.split(|b| *b == 0);
    let program = words.next().unwrap_or_default();
    let named = Path::new(std::ffi::OsStr::from_bytes(program)).file_name()
        == Some(std::ffi::OsStr::new(exec_name));
    let options: Vec<&[u8]> = words.take_while(|w| *w != b"--").collect();
    named
        && options
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
}
