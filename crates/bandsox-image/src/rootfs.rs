//! Root filesystem builders: a minimal busybox tree, and ext4 images made from a directory with
//! `mkfs.ext4 -d` (no mount, no loop device).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path};
use std::process::Command;

use crate::unpack::HeldModes;
use crate::util::{run_tool, temp_sibling};
use crate::ImageError;

const MIB: u64 = 1 << 20;

/// Minimum free space added on top of the content of an ext4 image.
pub const EXT4_MIN_HEADROOM_MIB: u64 = 16;

/// Builds a minimal busybox root filesystem directory at `dest`: `/bin/busybox` (a copy of the
/// static busybox at `busybox`), applet symlinks for every applet `busybox --list-full` prints
/// (relative to `/`, pointing at `/bin/busybox`), `/etc/passwd` (root + nobody), `/etc/group`,
/// `/etc/hostname`, `/etc/hosts`, `/etc/os-release`, `/root`, `/tmp` (1777), `/home`, and the
/// `/proc /sys /dev /run` mount points. No Python, no bash. `dest` may already exist; files this
/// function owns are replaced.
pub fn build_busybox_rootfs(busybox: &Path, dest: &Path) -> Result<(), ImageError> {
    let io = |what: &str, p: &Path| {
        let ctx = format!("{what} {}", p.display());
        move |e| ImageError::io(ctx, e)
    };
    let listing = run_tool(
        "busybox",
        "install busybox-static",
        Command::new(busybox).arg("--list-full"),
    )?;
    let listing = String::from_utf8_lossy(&listing);

    let dirs: &[(&str, u32)] = &[
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("mnt", 0o755),
    ];
    fs::create_dir_all(dest).map_err(io("create", dest))?;
    for &(dir, mode) in dirs {
        let p = dest.join(dir);
        fs::create_dir_all(&p).map_err(io("create", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io("chmod", &p))?;
    }

    let bb = dest.join("bin/busybox");
    let _ = fs::remove_file(&bb);
    fs::copy(busybox, &bb).map_err(io("copy busybox to", &bb))?;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755)).map_err(io("chmod", &bb))?;

    let mut applets = 0usize;
    for line in listing.lines() {
        let rel = line.trim().trim_start_matches('/');
        if rel.is_empty() || rel == "bin/busybox" {
            continue;
        }
        let rel_path = Path::new(rel);
        if !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(ImageError::InvalidInput(format!(
                "busybox --list-full printed an unsafe path {line:?}"
            )));
        }
        let link = dest.join(rel_path);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        match fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => fs::remove_file(&link).map_err(io("replace", &link))?,
            Err(_) => {}
        }
        symlink("/bin/busybox", &link).map_err(io("symlink", &link))?;
        applets += 1;
    }
    if applets == 0 {
        return Err(ImageError::InvalidInput(format!(
            "{} --list-full printed no applets",
            busybox.display()
        )));
    }

    let files: &[(&str, &str)] = &[
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "bandsox\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        (
            "etc/os-release",
            "NAME=\"BandSox busybox\"\nID=bandsox-busybox\nPRETTY_NAME=\"BandSox minimal busybox root\"\n",
        ),
    ];
    for &(rel, content) in files {
        let p = dest.join(rel);
        let _ = fs::remove_file(&p);
        fs::write(&p, content).map_err(io("write", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(io("chmod", &p))?;
    }
    Ok(())
}

/// Bytes `dir` occupies, estimated generously: every entry costs one 4 KiB block (inode, dir
/// block or symlink) plus its size rounded up to 4 KiB. Symlinks are not followed.
pub fn dir_content_bytes(dir: &Path) -> Result<u64, ImageError> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            fs::read_dir(&d).map_err(|e| ImageError::io(format!("read {}", d.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io(format!("read {}", d.display()), e))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| ImageError::io(format!("stat {}", path.display()), e))?;
            total += 4096;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                total += meta.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(total)
}

/// Runs `mkfs.ext4 -q -F -O ^has_journal -L <label> -d <dir> <out>` on a sparse file of content
/// size + headroom (25%, at least 16 MiB, rounded up to whole MiB). The image is built under a
/// temporary name and renamed over `out`. Returns the image size in bytes.
pub fn make_ext4_from_dir(dir: &Path, out: &Path, label: &str) -> Result<u64, ImageError> {
    make_ext4_from_tree(dir, out, label, &HeldModes::default())
}

/// [`make_ext4_from_dir`] for a tree unpacked from image layers: the modes and owners `held`
/// back from the host copy (device nodes, FIFOs, setuid/setgid/sticky and world-write bits)
/// are written into the image with `debugfs -w` before it is renamed into place.
pub fn make_ext4_from_tree(
    dir: &Path,
    out: &Path,
    label: &str,
    held: &HeldModes,
) -> Result<u64, ImageError> {
    if label.len() > 16 {
        return Err(ImageError::InvalidInput(format!(
            "ext4 label {label:?} is longer than 16 bytes"
        )));
    }
    if !dir.is_dir() {
        return Err(ImageError::InvalidInput(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let content = dir_content_bytes(dir)?;
    let headroom = (content / 4).max(EXT4_MIN_HEADROOM_MIB * MIB);
    let size_bytes = (content + headroom).div_ceil(MIB) * MIB;

    let tmp = temp_sibling(out);
    let result = (|| {
        let f = fs::File::create(&tmp)
            .map_err(|e| ImageError::io(format!("create {}", tmp.display()), e))?;
        f.set_len(size_bytes)
            .map_err(|e| ImageError::io(format!("size {}", tmp.display()), e))?;
        drop(f);
        run_tool(
            "mkfs.ext4",
            "install e2fsprogs",
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "^has_journal", "-L", label, "-d"])
                .arg(dir)
                .arg(&tmp),
        )?;
        if !held.is_empty() {
            restore_held(dir, &tmp, held)?;
        }
        fs::rename(&tmp, out).map_err(|e| ImageError::io(format!("rename to {}", out.display()), e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| size_bytes)
}

/// Sets the held-back modes and owners of `dir`'s entries inside the ext4 image `img`: one
/// `debugfs -w` script of `sif` commands. A path debugfs cannot quote keeps its host mode
/// (the safe one) and is logged.
fn restore_held(dir: &Path, img: &Path, held: &HeldModes) -> Result<(), ImageError> {
    use std::fmt::Write as _;
    let mut script = String::new();
    let mut done = std::collections::HashSet::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    let root_meta = fs::symlink_metadata(dir)
        .map_err(|e| ImageError::io(format!("stat {}", dir.display()), e))?;
    let mut visit = |meta: &fs::Metadata, rel: &str, script: &mut String| {
        use std::os::unix::fs::MetadataExt;
        let Some(h) = held.get(meta) else { return };
        if !done.insert((meta.dev(), meta.ino())) {
            return;
        }
        let path = if rel.is_empty() { "/" } else { rel };
        if path
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            tracing::warn!(path, "cannot restore the mode of this path in the image");
            return;
        }
        let _ = writeln!(script, "sif \"{path}\" mode 0{:o}", h.mode);
        let _ = writeln!(script, "sif \"{path}\" uid {}", h.uid);
        let _ = writeln!(script, "sif \"{path}\" gid {}", h.gid);
    };
    visit(&root_meta, "", &mut script);
    while let Some((d, rel)) = stack.pop() {
        let entries =
            fs::read_dir(&d).map_err(|e| ImageError::io(format!("read {}", d.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io(format!("read {}", d.display()), e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let child_rel = format!("{rel}/{name}");
            let meta = fs::symlink_metadata(entry.path())
                .map_err(|e| ImageError::io(format!("stat {}", entry.path().display()), e))?;
            visit(&meta, &child_rel, &mut script);
            if meta.is_dir() {
                stack.push((entry.path(), child_rel));
            }
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    let script_path = temp_sibling(img);
    fs::write(&script_path, &script)
        .map_err(|e| ImageError::io(format!("write {}", script_path.display()), e))?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(img)
        .output();
    let _ = fs::remove_file(&script_path);
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::ToolMissing {
                tool: "debugfs",
                hint: "install e2fsprogs",
            })
        }
        Err(e) => return Err(ImageError::io("run debugfs", e)),
    };
    // debugfs exits 0 even when a request fails; its errors are the stderr lines other than
    // its version banner.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(ImageError::ToolFailed {
            tool: "debugfs".into(),
            status: out.status.to_string(),
            stderr: errors.join("; "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_busybox() -> Option<&'static Path> {
        ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
    }

    #[test]
    fn busybox_rootfs_has_the_expected_tree() {
        let Some(bb) = host_busybox() else {
            eprintln!("skipping: busybox not installed");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        build_busybox_rootfs(bb, &root).unwrap();
        // Twice: idempotent over an existing tree.
        build_busybox_rootfs(bb, &root).unwrap();

        let meta = fs::metadata(root.join("bin/busybox")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(meta.len(), fs::metadata(bb).unwrap().len());
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(fs::symlink_metadata(root.join("bin/ls"))
            .unwrap()
            .file_type()
            .is_symlink());
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:"));
        assert!(passwd.contains("nobody:x:65534:65534:"));
        assert!(fs::read_to_string(root.join("etc/group"))
            .unwrap()
            .contains("root:x:0:"));
        assert!(fs::read_to_string(root.join("etc/os-release"))
            .unwrap()
            .contains("BandSox"));
        assert_eq!(
            fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        for d in ["proc", "sys", "dev", "run", "root", "home"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        assert!(!root.join("bin/bash").exists());
    }

    #[test]
    fn ext4_image_is_sized_with_headroom() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/file"), vec![7u8; 100_000]).unwrap();
        symlink("a/b/file", src.join("link")).unwrap();
        let out = dir.path().join("img.ext4");
        let size = match make_ext4_from_dir(&src, &out, "bandsox-test") {
            Err(ImageError::ToolMissing { .. }) => {
                eprintln!("skipping: mkfs.ext4 missing");
                return;
            }
            r => r.unwrap(),
        };
        assert_eq!(size, 16 * MIB + MIB);
        assert_eq!(fs::metadata(&out).unwrap().len(), size);
        // Sparse: far fewer blocks allocated than the apparent size.
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&out).unwrap().blocks() * 512 < size / 2);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        if let Ok(o) = Command::new("debugfs")
            .args(["-R", "cat /a/b/file"])
            .arg(&out)
            .output()
        {
            assert_eq!(o.stdout, vec![7u8; 100_000]);
        }
    }

    #[test]
    fn ext4_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            make_ext4_from_dir(&dir.path().join("nope"), &dir.path().join("x"), "l"),
            Err(ImageError::InvalidInput(_))
        ));
        assert!(make_ext4_from_dir(
            dir.path(),
            &dir.path().join("x"),
            "a-label-that-is-too-long"
        )
        .is_err());
    }
}
