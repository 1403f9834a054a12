//! Files of a stopped VM, read from its disks with `debugfs` (e2fsprogs) without booting it or
//! mounting anything, as BandSox does for `read-file` and `download`.
//!
//! The guest's root is an overlay: the image's base disk (lower) under the `upper/` directory of
//! the VM's writable disk. Lookup follows overlayfs: an upper entry hides the lower one, a
//! whiteout (character device 0:0) deletes it, an opaque directory
//! (`trusted.overlay.opaque="y"`) hides the lower directory's content, and a lower directory
//! shows through only under an upper directory (or none). Symlinks are resolved inside the
//! guest's root, component by component, never on the host (at most 40 of them).
//!
//! The writable disk was written by the guest's kernel, so its filesystem structures are
//! hostile input to `debugfs`. When the server runs as root, debugfs therefore runs with the
//! least privilege that still reads the disk (see [`debugfs_command`]): user and group
//! `nobody`, no supplementary groups, only `CAP_DAC_READ_SEARCH` (it reads any file, so it can
//! open the disk under the 0700 storage root; it writes nothing that `nobody` could not and
//! cannot signal or trace root's processes), no new privileges, and its own network and IPC
//! namespaces (no network to send anything to). It never gets a path to write: file contents
//! come back on its stdout, which is a file the server opened.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{CoreError, Result};
use crate::manager::{Manager, DATA_DISK};
use crate::store::VmStatus;

/// Symlinks followed in one lookup, as Linux allows.
const MAX_LINKS: usize = 40;
/// The overlay's upper directory on the writable disk (see the agent's boot code).
const UPPER_DIR: &str = "/upper";

/// The two disks of a stopped VM.
#[derive(Debug, Clone)]
pub(crate) struct Layers {
    /// The writable disk, absent when the VM never booted.
    pub upper: Option<PathBuf>,
    pub lower: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Missing,
    Whiteout,
    Dir {
        opaque: bool,
    },
    File,
    Symlink(String),
    /// Devices, FIFOs, sockets: not readable here.
    Other,
}

/// A copy of a stopped VM's file on the host, removed on drop.
pub(crate) struct OfflineCopy(PathBuf);

impl OfflineCopy {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for OfflineCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Manager {
    /// The disks of `id` when it is stopped (its files are then read from them), else `None`.
    pub(crate) fn offline_layers(&self, id: &str) -> Result<Option<Layers>> {
        let vm = self.get_vm(id)?;
        if vm.status != VmStatus::Stopped {
            return Ok(None);
        }
        let upper = self.storage().vm_dir(id)?.join(DATA_DISK);
        let lower = self
            .storage()
            .image_dir(&vm.image_digest)?
            .join("rootfs.ext4");
        Ok(Some(Layers {
            upper: upper.is_file().then_some(upper),
            lower,
        }))
    }

    /// When `id` is stopped: its file at `path`, copied out of its disks (already unlinked on
    /// the host, so nothing is left whatever the caller does) and the file's size.
    pub async fn offline_file(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Option<(tokio::fs::File, u64)>> {
        let Some(layers) = self.offline_layers(id)? else {
            return Ok(None);
        };
        let copy = self.offline_copy(id, layers, path).await?;
        let f = tokio::fs::File::open(copy.path()).await?;
        let size = f.metadata().await?.len();
        drop(copy);
        Ok(Some((f, size)))
    }

    /// Copies the file the stopped VM `id` has at `path` into its directory on the host.
    async fn offline_copy(&self, id: &str, layers: Layers, path: &str) -> Result<OfflineCopy> {
        let copy = OfflineCopy(
            self.storage()
                .vm_dir(id)?
                .join(format!(".read-{:016x}", rand::random::<u64>())),
        );
        let (out, path) = (copy.0.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || extract(&layers, &path, &out))
            .await
            .map_err(|e| CoreError::Io(std::io::Error::other(e)))??;
        Ok(copy)
    }
}

/// What a guest path names on the disks.
enum Target {
    /// A regular file: its disk and its path there.
    File(PathBuf, String),
    /// A directory: its path on the writable disk and on the image's, where each shows.
    Dir {
        upper: Option<String>,
        lower: Option<String>,
    },
}

/// Copies the regular file the guest sees at `path` to `out`; returns its size.
pub(crate) fn extract(layers: &Layers, path: &str, out: &Path) -> Result<u64> {
    let Target::File(img, inner) = resolve(layers, path, false)? else {
        unreachable!("resolve answers a file or an error when no directory is wanted")
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)?;
    let status = debugfs_command(&img, &format!("cat \"{inner}\""))
        .stdout(file)
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(debugfs_missing)?;
    match std::fs::metadata(out) {
        Ok(m) if status.success() => Ok(m.len()),
        _ => Err(CoreError::Io(std::io::Error::other(format!(
            "debugfs could not copy `{path}` out of the VM's disk"
        )))),
    }
}

/// The entries of the directory the guest sees at `path`, merged as overlayfs does (an upper
/// entry hides the lower one, a whiteout deletes it, an opaque directory hides the lower
/// one), sorted by name. Times are not read (`mtime` 0).
pub(crate) fn list(layers: &Layers, path: &str) -> Result<Vec<bandsox_protocol::FileEntry>> {
    let Target::Dir { upper, lower } = resolve(layers, path, true)? else {
        return Err(CoreError::Guest(guest_error(
            bandsox_protocol::ErrorCode::NotADirectory,
            path,
        )));
    };
    let mut entries = std::collections::BTreeMap::new();
    let sources = [
        lower.map(|l| (layers.lower.clone(), l, false)),
        upper.map(|u| (layers.upper.clone().unwrap_or_default(), u, true)),
    ];
    for (img, inner, is_upper) in sources.into_iter().flatten() {
        for line in debugfs(&img, &format!("ls -p \"{inner}\""))?.lines() {
            // `/inode/mode/uid/gid/name/size/`; names cannot hold `/`.
            let f: Vec<&str> = line.split('/').collect();
            if f.len() != 8 || !f[0].is_empty() || f[5] == "." || f[5] == ".." {
                continue;
            }
            let Ok(mode) = u32::from_str_radix(f[2], 8) else {
                continue;
            };
            let name = f[5].to_owned();
            let kind = mode & 0o170_000;
            // A character device in the upper directory: a whiteout.
            if is_upper && kind == 0o020_000 {
                entries.remove(&name);
                continue;
            }
            let full = format!("{}/{name}", path.trim_end_matches('/'));
            entries.insert(
                name.clone(),
                bandsox_protocol::FileEntry {
                    name,
                    path: full,
                    size: f[6].parse().unwrap_or(0),
                    is_dir: kind == 0o040_000,
                    is_file: kind == 0o100_000,
                    is_symlink: kind == 0o120_000,
                    mode,
                    mtime: 0,
                },
            );
        }
    }
    Ok(entries.into_values().collect())
}

/// What the guest sees at `path`: a regular file (the disk and in-disk path holding it) or,
/// with `want_dir`, a directory.
fn resolve(layers: &Layers, path: &str, want_dir: bool) -> Result<Target> {
    if !path.starts_with('/') {
        return Err(CoreError::InvalidInput(format!(
            "path must be absolute, got `{}`",
            path.escape_debug()
        )));
    }
    if !quotable(path) {
        return Err(CoreError::InvalidInput(
            "reading a stopped VM's files: the path may not contain `\"`, `\\` or control characters"
                .into(),
        ));
    }
    let not_found = || CoreError::Guest(guest_error(bandsox_protocol::ErrorCode::NotFound, path));
    let mut todo: Vec<String> = components(path);
    todo.reverse(); // a stack: next component last
                    // Resolved directories, with whether each layer still contributes below them.
    let mut cur: Vec<String> = Vec::new();
    let mut flags: Vec<(bool, bool)> = vec![(layers.upper.is_some(), true)];
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == "." {
            continue;
        }
        if c == ".." {
            if cur.pop().is_some() {
                flags.pop();
            }
            continue;
        }
        let (in_upper, in_lower) = *flags.last().unwrap_or(&(false, false));
        let rel = format!(
            "/{}",
            cur.iter()
                .chain([&c])
                .cloned()
                .collect::<Vec<_>>()
                .join("/")
        );
        let up = match (&layers.upper, in_upper) {
            (Some(u), true) => stat(u, &format!("{UPPER_DIR}{rel}"))?,
            _ => Kind::Missing,
        };
        let (entry, img, inner, next) = match up {
            Kind::Whiteout => return Err(not_found()),
            Kind::Dir { opaque } => {
                let lower_dir =
                    in_lower && !opaque && matches!(stat(&layers.lower, &rel)?, Kind::Dir { .. });
                let upper = layers.upper.clone().unwrap_or_default();
                (
                    Kind::Dir { opaque },
                    upper,
                    format!("{UPPER_DIR}{rel}"),
                    (true, lower_dir),
                )
            }
            Kind::Missing => {
                let lo = if in_lower {
                    stat(&layers.lower, &rel)?
                } else {
                    Kind::Missing
                };
                if matches!(lo, Kind::Missing | Kind::Whiteout) {
                    return Err(not_found());
                }
                (lo, layers.lower.clone(), rel.clone(), (false, true))
            }
            other => {
                let upper = layers.upper.clone().unwrap_or_default();
                (other, upper, format!("{UPPER_DIR}{rel}"), (false, false))
            }
        };
        match entry {
            Kind::Symlink(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(CoreError::InvalidInput(format!(
                        "too many levels of symbolic links in `{path}`"
                    )));
                }
                if !quotable(&target) {
                    return Err(not_found());
                }
                if target.starts_with('/') {
                    cur.clear();
                    flags.truncate(1);
                }
                todo.extend(components(&target).into_iter().rev());
            }
            Kind::Dir { .. } if todo.is_empty() && want_dir => {
                let upper = (next.0 && img != layers.lower).then(|| inner.clone());
                return Ok(Target::Dir {
                    upper,
                    lower: next.1.then_some(rel),
                });
            }
            Kind::Dir { .. } if todo.is_empty() => {
                return Err(CoreError::Guest(guest_error(
                    bandsox_protocol::ErrorCode::IsADirectory,
                    path,
                )))
            }
            Kind::Dir { .. } => {
                cur.push(c);
                flags.push(next);
            }
            Kind::File if todo.is_empty() => return Ok(Target::File(img, inner)),
            Kind::File | Kind::Other if !todo.is_empty() => {
                return Err(CoreError::Guest(guest_error(
                    bandsox_protocol::ErrorCode::NotADirectory,
                    path,
                )))
            }
            _ => {
                return Err(CoreError::InvalidInput(format!(
                    "`{path}` is not a regular file"
                )))
            }
        }
    }
    // The path named the root (or climbed back to it).
    if want_dir {
        let (in_upper, in_lower) = *flags.last().unwrap_or(&(false, false));
        let dir = format!("/{}", cur.join("/"));
        return Ok(Target::Dir {
            upper: (in_upper && layers.upper.is_some()).then(|| format!("{UPPER_DIR}{dir}")),
            lower: in_lower.then_some(dir),
        });
    }
    Err(CoreError::Guest(guest_error(
        bandsox_protocol::ErrorCode::IsADirectory,
        path,
    )))
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What debugfs's command parser can take between double quotes.
fn quotable(s: &str) -> bool {
    !s.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

fn guest_error(code: bandsox_protocol::ErrorCode, path: &str) -> bandsox_protocol::ErrorBody {
    let what = match code {
        bandsox_protocol::ErrorCode::IsADirectory => "is a directory",
        bandsox_protocol::ErrorCode::NotADirectory => "a component is not a directory",
        _ => "no such file or directory",
    };
    bandsox_protocol::ErrorBody::new(code, format!("{path}: {what}"))
}

/// The type of `path` in the ext4 image `img` (no symlink in `path` itself is followed: every
/// directory above it was resolved before).
fn stat(img: &Path, path: &str) -> Result<Kind> {
    let out = debugfs(img, &format!("stat \"{path}\""))?;
    let Some(line) = out.lines().find(|l| l.contains("Type: ")) else {
        return Ok(Kind::Missing);
    };
    let ty = line
        .split("Type: ")
        .nth(1)
        .and_then(|t| t.split("  ").next())
        .unwrap_or_default()
        .trim();
    Ok(match ty {
        "regular" => Kind::File,
        "directory" => Kind::Dir {
            opaque: out.contains("trusted.overlay.opaque (1) = \"y\""),
        },
        "symlink" => {
            let fast = out
                .lines()
                .find_map(|l| l.strip_prefix("Fast link dest: "))
                .map(|t| t.trim().trim_matches('"').to_owned());
            Kind::Symlink(match fast {
                Some(t) => t,
                None => debugfs(img, &format!("cat \"{path}\""))?,
            })
        }
        "character special" if out.contains("number: 00:00 ") => Kind::Whiteout,
        _ => Kind::Other,
    })
}

/// Runs one read-only debugfs request against `img`; its stdout.
fn debugfs(img: &Path, request: &str) -> Result<String> {
    let out = debugfs_command(img, request)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(debugfs_missing)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The user and group an unprivileged debugfs runs as.
const DEBUGFS_UID: u32 = 65534;

/// `debugfs -c -R REQUEST IMG` (read-only, catastrophic mode: the bitmaps are not even read),
/// with its privileges dropped when this process is root: `unshare --net --ipc` then
/// `setpriv` to `nobody` with only `CAP_DAC_READ_SEARCH` and no new privileges (see the
/// module docs). Both tools are util-linux, present on every Debian system.
fn debugfs_command(img: &Path, request: &str) -> Command {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let mut cmd = if root {
        let mut c = Command::new("unshare");
        c.args(["--net", "--ipc", "--", "setpriv"])
            .arg(format!("--reuid={DEBUGFS_UID}"))
            .arg(format!("--regid={DEBUGFS_UID}"))
            .args([
                "--clear-groups",
                "--inh-caps=-all,+dac_read_search",
                "--ambient-caps=-all,+dac_read_search",
                "--bounding-set=-all,+dac_read_search",
                "--no-new-privs",
                "--",
                "debugfs",
            ]);
        c
    } else {
        Command::new("debugfs")
    };
    // Nothing of the server's environment but where the tools are.
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    cmd.arg("-c")
        .arg("-R")
        .arg(request)
        .arg(img)
        .env_clear()
        .env("PATH", path);
    cmd
}

fn debugfs_missing(e: std::io::Error) -> CoreError {
    CoreError::NotInitialised(format!(
        "cannot run debugfs ({e}); install e2fsprogs and util-linux to read files of stopped VMs"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An ext4 image of `root`, built with mkfs.ext4 -d as the image code does, mode 0600 as
    /// VM disks are (the temporary directory is 0700 like the storage root).
    fn image(root: &Path, out: &Path) {
        use std::os::unix::fs::PermissionsExt;
        bandsox_image::rootfs::make_ext4_from_dir(root, out, "t").unwrap();
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn debugfs_runs_as_nobody_without_network_when_the_server_is_root() {
        let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        });
        let cmd = debugfs_command(Path::new("/x.ext4"), "stat /");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if !is_root {
            assert_eq!(cmd.get_program(), "debugfs");
            return;
        }
        assert_eq!(cmd.get_program(), "unshare");
        for want in [
            "--net",
            "--ipc",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--bounding-set=-all,+dac_read_search",
            "--no-new-privs",
            "debugfs",
            "-c",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
        }
        assert_eq!(args.last().map(String::as_str), Some("/x.ext4"));
        // The same wrapper around `sh`: the child is nobody, with CAP_DAC_READ_SEARCH only,
        // and cannot write a root-owned directory.
        let t = tempfile::tempdir().unwrap();
        let mut sh = Command::new("unshare");
        sh.args(["--net", "--ipc", "--", "setpriv"]);
        sh.args(args.iter().skip(4).take_while(|a| *a != "debugfs"));
        let probe = format!(
            "id -u; grep CapEff /proc/self/status; echo x > {}/w && echo wrote",
            t.path().display()
        );
        let out = sh.args(["sh", "-c", &probe]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.starts_with("65534\n"), "{text}");
        assert!(text.contains("CapEff:\t0000000000000004"), "{text}");
        assert!(!text.contains("wrote"), "{text}");
    }

    fn read(layers: &Layers, path: &str, tmp: &Path) -> Result<String> {
        let out = tmp.join("out");
        let _ = std::fs::remove_file(&out);
        extract(layers, path, &out)?;
        Ok(std::fs::read_to_string(&out).unwrap())
    }

    #[test]
    fn overlay_lookup_follows_overlayfs_rules() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (lo, up) = (t.path().join("lower"), t.path().join("up"));
        for d in ["etc", "opaque", "merged", "gone"] {
            std::fs::create_dir_all(lo.join(d)).unwrap();
        }
        std::fs::write(lo.join("etc/base"), "base\n").unwrap();
        std::fs::write(lo.join("etc/changed"), "old\n").unwrap();
        std::fs::write(lo.join("etc/deleted"), "x\n").unwrap();
        std::fs::write(lo.join("opaque/hidden"), "x\n").unwrap();
        std::fs::write(lo.join("merged/from-lower"), "lower\n").unwrap();
        symlink("/etc/base", lo.join("abs-link")).unwrap();
        symlink("../../../../etc/base", lo.join("merged/escape")).unwrap();
        symlink("loop", lo.join("loop")).unwrap();

        let u = up.join("upper");
        for d in ["etc", "opaque", "merged"] {
            std::fs::create_dir_all(u.join(d)).unwrap();
        }
        std::fs::write(u.join("etc/changed"), "new\n").unwrap();
        std::fs::write(u.join("merged/from-upper"), "upper\n").unwrap();
        for gone in ["etc/deleted", "gone"] {
            let wh = std::ffi::CString::new(u.join(gone).to_str().unwrap()).unwrap();
            // SAFETY: a valid C string; mknod of a 0:0 character device is overlayfs's whiteout.
            let rc = unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR | 0o644, 0) };
            assert_eq!(rc, 0);
        }
        let name = std::ffi::CString::new("trusted.overlay.opaque").unwrap();
        let dir = std::ffi::CString::new(u.join("opaque").to_str().unwrap()).unwrap();
        // SAFETY: valid C strings and a 1-byte value.
        let rc = unsafe { libc::setxattr(dir.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0);
        symlink("/merged/from-upper", u.join("up-link")).unwrap();

        let (lo_img, up_img) = (t.path().join("lo.ext4"), t.path().join("up.ext4"));
        image(&lo, &lo_img);
        image(&up, &up_img);
        let layers = Layers {
            upper: Some(up_img),
            lower: lo_img,
        };
        let tmp = t.path();
        assert_eq!(read(&layers, "/etc/base", tmp).unwrap(), "base\n");
        assert_eq!(read(&layers, "/etc/changed", tmp).unwrap(), "new\n");
        assert_eq!(read(&layers, "/merged/from-lower", tmp).unwrap(), "lower\n");
        assert_eq!(read(&layers, "/merged/from-upper", tmp).unwrap(), "upper\n");
        assert_eq!(read(&layers, "/abs-link", tmp).unwrap(), "base\n");
        assert_eq!(read(&layers, "/up-link", tmp).unwrap(), "upper\n");
        assert_eq!(
            read(&layers, "/merged/../etc/./base", tmp).unwrap(),
            "base\n"
        );
        // `..` above the root stays at the guest's root, never the host's.
        assert_eq!(read(&layers, "/merged/escape", tmp).unwrap(), "base\n");
        // Directories merge the same way.
        let names = |p: &str| -> Vec<String> {
            list(&layers, p)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect()
        };
        assert_eq!(names("/etc"), vec!["base", "changed"]);
        assert_eq!(
            names("/merged/"),
            vec!["escape", "from-lower", "from-upper"]
        );
        assert_eq!(names("/opaque"), Vec::<String>::new());
        let root = names("/");
        for n in ["abs-link", "etc", "merged", "opaque", "up-link"] {
            assert!(root.contains(&n.to_owned()), "{n} in {root:?}");
        }
        assert!(!root.contains(&"gone".to_owned()), "{root:?}");
        let etc = list(&layers, "/etc").unwrap();
        assert_eq!(
            (etc[1].path.as_str(), etc[1].size, etc[1].is_file),
            ("/etc/changed", 4, true)
        );
        assert!(list(&layers, "/etc/base").is_err());
        assert!(list(&layers, "/nope").is_err());
        for (p, code) in [
            ("/etc/deleted", bandsox_protocol::ErrorCode::NotFound),
            ("/gone/x", bandsox_protocol::ErrorCode::NotFound),
            ("/opaque/hidden", bandsox_protocol::ErrorCode::NotFound),
            ("/nope", bandsox_protocol::ErrorCode::NotFound),
            ("/etc", bandsox_protocol::ErrorCode::IsADirectory),
            ("/etc/base/x", bandsox_protocol::ErrorCode::NotADirectory),
        ] {
            match read(&layers, p, tmp) {
                Err(CoreError::Guest(e)) => assert_eq!(e.code, code, "{p}"),
                other => panic!("{p}: {other:?}"),
            }
        }
        assert!(matches!(
            read(&layers, "/loop", tmp),
            Err(CoreError::InvalidInput(_))
        ));
        assert!(matches!(
            read(&layers, "/a\"b", tmp),
            Err(CoreError::InvalidInput(_))
        ));
        assert!(matches!(
            read(&layers, "rel", tmp),
            Err(CoreError::InvalidInput(_))
        ));
        // A VM that never booted has only its image.
        let base_only = Layers {
            upper: None,
            lower: layers.lower.clone(),
        };
        assert_eq!(read(&base_only, "/etc/changed", tmp).unwrap(), "old\n");
    }
}
