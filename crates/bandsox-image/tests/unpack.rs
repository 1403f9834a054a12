//! Layer application: whiteouts, links, devices, ownership — and hostile layers that try to
//! write outside the target directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use bandsox_image::oci::{self, LayoutLayer, NoProgress};
use bandsox_image::unpack::{apply_layer, Compression, Held, Unpacker};
use bandsox_image::ImageError;

/// Builds tar archives entry by entry, writing names raw (so `..` and absolute paths, which
/// the `tar` crate's safe setters refuse, can be produced).
#[derive(Default)]
struct Tar {
    out: Vec<u8>,
}

impl Tar {
    fn raw(mut self, kind: tar::EntryType, name: &str, link: &str, data: &[u8], mode: u32) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let bytes = h.as_mut_bytes();
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(4321);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.raw(tar::EntryType::Regular, name, "", data, 0o644)
    }
    fn dir(self, name: &str) -> Self {
        self.raw(tar::EntryType::Directory, name, "", b"", 0o755)
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(tar::EntryType::Symlink, name, target, b"", 0o777)
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.raw(tar::EntryType::Link, name, target, b"", 0o644)
    }
    fn done(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }
}

fn apply(root: &Path, tar: Vec<u8>) -> bandsox_image::unpack::LayerStats {
    apply_layer(root, tar.as_slice()).unwrap()
}

#[test]
fn layers_apply_in_order_with_whiteouts_links_modes_and_owners() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    let mut unpacker = Unpacker::default();
    let mut apply = |root: &Path, tar: Vec<u8>| unpacker.apply_layer(root, tar.as_slice()).unwrap();
    apply(
        &root,
        Tar::default()
            .dir("etc/")
            .file("etc/keep", b"keep")
            .file("etc/gone", b"gone")
            .dir("opaque/")
            .file("opaque/old", b"old")
            .file("bin/tool", b"#!tool")
            .raw(tar::EntryType::Regular, "bin/suid", "", b"s", 0o4755)
            .hardlink("bin/tool-link", "bin/tool")
            .symlink("lib", "usr/lib")
            .dir("usr/lib/")
            .raw(tar::EntryType::Fifo, "run/fifo", "", b"", 0o600)
            .raw(tar::EntryType::Char, "dev/null", "", b"", 0o666)
            .raw(tar::EntryType::Directory, "tmp/", "", b"", 0o1777)
            .raw(tar::EntryType::Regular, "bin/gone-suid", "", b"g", 0o4755)
            .done(),
    );
    let stats = apply(
        &root,
        Tar::default()
            .file("etc/.wh.gone", b"")
            .file("opaque/.wh..wh..opq", b"")
            .file("opaque/new", b"new")
            .file("lib/libx.so", b"elf") // through the image's own symlink
            .file("etc/keep", b"changed")
            // Replaced by a plain file: its held-back mode goes with the old inode.
            .file("bin/gone-suid", b"plain")
            .done(),
    );
    assert_eq!(stats.whiteouts, 2);
    assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
    assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"changed");
    assert!(!root.join("etc/gone").exists());
    assert!(!root.join("opaque/old").exists());
    assert_eq!(fs::read(root.join("opaque/new")).unwrap(), b"new");
    assert_eq!(fs::read(root.join("usr/lib/libx.so")).unwrap(), b"elf");
    assert!(fs::symlink_metadata(root.join("lib")).unwrap().is_symlink());
    let tool = fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!(
        tool.ino(),
        fs::metadata(root.join("bin/tool-link")).unwrap().ino()
    );
    assert_eq!((tool.uid(), tool.gid()), (1234, 4321));
    assert_eq!(tool.mtime(), 1_700_000_000);
    // Special modes and nodes exist on the host only in a form nobody can use; the real
    // ones are held back for the ext4 image.
    let suid = fs::metadata(root.join("bin/suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o755);
    let held = &unpacker.held;
    assert_eq!(
        held.get(&suid),
        Some(Held {
            mode: 0o104755,
            uid: 1234,
            gid: 4321
        })
    );
    let fifo = fs::symlink_metadata(root.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!((fifo.mode() & 0o7777, fifo.uid(), fifo.gid()), (0, 0, 0));
    assert_eq!(held.get(&fifo).map(|h| h.mode), Some(0o010600));
    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((null.mode() & 0o7777, null.uid(), null.gid()), (0, 0, 0));
    assert_eq!(
        held.get(&null),
        Some(Held {
            mode: 0o020666,
            uid: 1234,
            gid: 4321
        })
    );
    let tmp = fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o775);
    assert_eq!(held.get(&tmp).map(|h| h.mode), Some(0o041777));
    let gone = fs::metadata(root.join("bin/gone-suid")).unwrap();
    assert_eq!(gone.mode() & 0o7777, 0o644);
    assert_eq!(held.get(&gone), None);
    assert_eq!(held.len(), 4);

    // The ext4 image gets the real modes and owners.
    let img = t.path().join("img.ext4");
    match bandsox_image::rootfs::make_ext4_from_tree(&root, &img, "t", held) {
        Err(ImageError::ToolMissing { .. }) => return,
        r => {
            r.unwrap();
        }
    }
    let stat = |p: &str| {
        let o = std::process::Command::new("debugfs")
            .args(["-R", &format!("stat {p}")])
            .arg(&img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let s = stat("/dev/null");
    assert!(
        s.contains("Type: character special") && s.contains("Mode:  0666"),
        "{s}"
    );
    assert!(
        s.contains("User:  1234") && s.contains("Group:  4321"),
        "{s}"
    );
    let s = stat("/bin/suid");
    assert!(s.contains("Mode:  04755"), "{s}");
    let s = stat("/tmp");
    assert!(s.contains("Mode:  01777"), "{s}");
    let s = stat("/bin/gone-suid");
    assert!(s.contains("Mode:  0644"), "{s}");
    let s = stat("/run/fifo");
    assert!(s.contains("Type: FIFO") && s.contains("Mode:  0600"), "{s}");
}

/// A layer that plants symlinks to host paths and then writes through them, uses `..` and
/// absolute names, and hard-links host files: nothing may change outside the root.
#[test]
fn hostile_layers_never_write_outside_the_root() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"original").unwrap();
    let out = outside.to_str().unwrap();

    let stats = apply(
        &root,
        Tar::default()
            // Symlink to a host directory, then a file "through" it.
            .symlink("escape", out)
            .file("escape/victim", b"pwned")
            .file("escape/new-file", b"pwned")
            // Relative symlink climbing out, then a file through it.
            .symlink("up", "../../../../../../../../..")
            .file(&format!("up{out}/victim"), b"pwned")
            // `..` and absolute entry names.
            .file("../outside/victim", b"pwned")
            .file(&format!("{out}/abs-file"), b"absolute")
            .file("a/../../outside/dotdot", b"pwned")
            // Hard link to a host file (by absolute and by relative name).
            .hardlink("hl-abs", &format!("{out}/victim"))
            .hardlink("hl-rel", "../outside/victim")
            // Symlink as the final component pointing out, then a regular file at its name.
            .symlink("final", &format!("{out}/victim"))
            .file("final", b"replaces the link, not the target")
            // A chain of symlinks ending outside.
            .symlink("c1", "c2")
            .symlink("c2", out)
            .file("c1/chained", b"pwned")
            .done(),
    );

    // Outside is untouched.
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    let names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("victim")]);
    assert_eq!(fs::metadata(outside.join("victim")).unwrap().nlink(), 1);
    // Nothing appeared next to the root either.
    let mut siblings: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    siblings.sort();
    assert_eq!(siblings, ["outside", "root"]);

    // Writes through image symlinks landed inside the root, resolved as the guest would.
    let inside = root.join(out.trim_start_matches('/'));
    assert_eq!(fs::read(inside.join("victim")).unwrap(), b"pwned");
    assert_eq!(fs::read(inside.join("new-file")).unwrap(), b"pwned");
    assert_eq!(fs::read(inside.join("abs-file")).unwrap(), b"absolute");
    assert_eq!(fs::read(inside.join("chained")).unwrap(), b"pwned");
    let fin = fs::symlink_metadata(root.join("final")).unwrap();
    assert!(fin.is_file());
    // `..` entries were refused and reported.
    assert!(stats
        .skipped
        .iter()
        .any(|s| s.contains("../outside/victim")));
    assert!(stats
        .skipped
        .iter()
        .any(|s| s.contains("a/../../outside/dotdot")));
    assert!(stats.skipped.iter().any(|s| s.starts_with("hl-rel")));
    // The absolute hard link resolved inside the root (to the in-image victim).
    assert_eq!(
        fs::metadata(root.join("hl-abs")).unwrap().ino(),
        fs::metadata(inside.join("victim")).unwrap().ino()
    );
}

#[test]
fn compressed_layouts_load_and_corrupt_blobs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let layers = vec![
        LayoutLayer {
            tar: Tar::default().file("a", b"1").file("b", b"2").done(),
            compression: Compression::Gzip,
        },
        LayoutLayer {
            tar: Tar::default().file(".wh.a", b"").file("c", b"3").done(),
            compression: Compression::Zstd,
        },
        LayoutLayer {
            tar: Tar::default().file("d", b"4").done(),
            compression: Compression::None,
        },
    ];
    oci::write_layout(
        &layout,
        &layers,
        serde_json::json!({"Env": ["A=1"], "WorkingDir": "/w"}),
        "t:1",
    )
    .unwrap();
    let (plan, kind) = oci::load_dir(&layout, None).unwrap();
    assert_eq!(kind, oci::DirKind::OciLayout);
    assert_eq!(plan.runtime_config()["WorkingDir"], "/w");
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    plan.apply(&root, &NoProgress).unwrap();
    assert!(!root.join("a").exists());
    for (f, c) in [("b", "2"), ("c", "3"), ("d", "4")] {
        assert_eq!(fs::read_to_string(root.join(f)).unwrap(), c);
    }

    // Flip a byte of the zstd blob: its digest no longer matches.
    let blob = &plan.layers[1].path;
    let mut bytes = fs::read(blob).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    fs::write(blob, bytes).unwrap();
    let root2 = t.path().join("root2");
    fs::create_dir(&root2).unwrap();
    let err = plan.apply(&root2, &NoProgress).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::DigestMismatch { .. } | ImageError::CorruptLayer(_) | ImageError::Io { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn archive_symlinks_are_not_followed_when_reading_a_layout() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("x");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("manifest.json")).unwrap();
    assert!(matches!(
        oci::load_dir(&dir, None),
        Err(ImageError::InvalidArchive(_))
    ));
    fs::remove_file(dir.join("manifest.json")).unwrap();
    fs::write(
        dir.join("manifest.json"),
        r#"[{"Config":"../../etc/hostname","RepoTags":null,"Layers":[]}]"#,
    )
    .unwrap();
    assert!(matches!(
        oci::load_dir(&dir, None),
        Err(ImageError::InvalidArchive(_))
    ));
}
