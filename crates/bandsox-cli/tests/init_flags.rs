//! `bandsox init` with BandSox's flags, no VM needed: `--rootfs-url` of a local ext4 (a path
//! and a `file://` URL) becomes image `bandsox-base` with its files, `--skip-kernel` installs
//! no kernel, the CNI flags are accepted and explained, the SHA-256 of what was fetched is
//! printed; bad sources fail with one clear line and leave nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../bandsox-core/tests/image_support/mod.rs"]
mod image_support;

use std::process::Command;

use common::{text, TestRoot, BIN};
use serde_json::Value;

fn init(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("init").args(args).output().unwrap()
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn rootfs_url_and_skip_kernel() {
    let dir = TestRoot::new("bsxinitflags");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("etc/hello"), "from the base rootfs\n").unwrap();
    std::os::unix::fs::symlink("../etc/hello", tree.join("bin/link")).unwrap();
    let ext4 = dir.path().join("bandsox-base.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&tree)
        .arg(&ext4)
        .arg("16M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let storage = dir.path().join("storage");
    let s = storage.to_str().unwrap();

    let out = init(&[
        "--storage",
        s,
        "--skip-kernel",
        "--rootfs-url",
        ext4.to_str().unwrap(),
        "--skip-cni",
        "--cni-url",
        "https://example.invalid/cni.tgz",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("needs no CNI plugins"),
        "{}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kernel_skipped"], true, "{v}");
    assert_eq!(v["base_image"]["reference"], "bandsox-base", "{v}");
    assert_eq!(v["base_image"]["built"], true);
    assert_eq!(v["default_image"]["reference"], "bandsox/busybox");
    assert_eq!(v["fetched"][0]["sha256"], sha256(&ext4), "{v}");
    let kernels: Vec<_> = std::fs::read_dir(storage.join("kernels"))
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(kernels.is_empty(), "--skip-kernel installed {kernels:?}");
    assert!(
        !storage.join(".init-fetch").exists(),
        "the fetched copy is left behind"
    );

    // The image holds the ext4's files.
    let digest = v["base_image"]["digest"].as_str().unwrap();
    let disk = storage
        .join("images")
        .join(digest.trim_start_matches("sha256:"))
        .join("rootfs.ext4");
    let cat = Command::new("debugfs")
        .arg("-R")
        .arg("cat /etc/hello")
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(
        text(&cat.stdout),
        "from the base rootfs\n",
        "{}",
        text(&cat.stderr)
    );

    // Again, as a file:// URL, in human form: kept, checksum printed.
    let url = format!("file://{}", ext4.display());
    let out = init(&["--storage", s, "--skip-kernel", "--rootfs-url", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("sha256:{}", sha256(&ext4))),
        "{stdout}"
    );
    assert!(stdout.contains("kernel      skipped"), "{stdout}");
    assert!(
        stdout.contains("bandsox-base (already present)"),
        "{stdout}"
    );

    // Bad sources: one line, non-zero, nothing imported.
    let junk = dir.path().join("junk.ext4");
    std::fs::write(&junk, vec![7u8; 65536]).unwrap();
    let fresh = dir.path().join("fresh");
    let f = fresh.to_str().unwrap();
    for (src, needle) in [
        ("/nonexistent/rootfs.ext4", "cannot fetch the rootfs"),
        (junk.to_str().unwrap(), "is not an ext4 root filesystem"),
        (
            "ftp://host/rootfs.ext4",
            "not a path or an http(s)/file URL",
        ),
    ] {
        let out = init(&[
            "--storage",
            f,
            "--skip-kernel",
            "--no-default-image",
            "--rootfs-url",
            src,
        ]);
        assert_eq!(out.status.code(), Some(1), "{src}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(needle),
            "{src}: {}",
            text(&out.stderr)
        );
        let out = Command::new(BIN)
            .args(["image", "ls", "--json", "--storage", f])
            .output()
            .unwrap();
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            list.as_array().is_none_or(|l| l.is_empty()),
            "{src}: an image was left: {list}"
        );
    }
    // Flags that contradict each other are a usage error.
    let out = init(&["--storage", f, "--skip-kernel", "--kernel-url", "/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `init` keeps `bandsox/busybox` only when it is the tree init builds and its base disk is the
/// file init recorded: a re-pointed reference and a changed disk are both rebuilt, with a
/// warning.
#[test]
fn init_verifies_the_default_image() {
    let dir = TestRoot::new("bsxinitverify");
    let storage = dir.path().join("storage");
    let s = storage.to_str().unwrap();
    let json = |out: &std::process::Output| -> Value {
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = json(&init(&["--storage", s, "--skip-kernel", "--json"]));
    let digest = v["default_image"]["digest"].as_str().unwrap().to_owned();
    let disk = storage
        .join("images")
        .join(digest.trim_start_matches("sha256:"))
        .join("rootfs.ext4");
    let disk_sha = sha256(&disk);
    // A second run keeps it, silently.
    let out = init(&["--storage", s, "--skip-kernel", "--json"]);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(json(&out)["default_image"]["built"], false);

    // Re-pointed on purpose (a forced import): the next init points it back.
    let work = tempfile::tempdir().unwrap();
    let lay = work.path().join("other");
    image_support::layout(
        &lay,
        vec![image_support::Tar::default().file("other", b"x\n").done()],
        serde_json::json!({}),
        "v1",
    );
    let out = Command::new(BIN)
        .args(["image", "import", lay.to_str().unwrap(), "--reference"])
        .args(["bandsox/busybox", "--force", "--quiet", "--storage", s])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = init(&["--storage", s, "--skip-kernel", "--json"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: image bandsox/busybox pointed at"),
        "{err}"
    );
    let v = json(&out);
    assert_eq!(v["default_image"]["digest"], digest.as_str(), "{v}");
    assert_eq!(v["default_image"]["built"], true);

    // The base disk changed behind init's back: rebuilt.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"tampered").unwrap();
    }
    let tampered = sha256(&disk);
    assert_ne!(tampered, disk_sha);
    let out = init(&["--storage", s, "--skip-kernel", "--json"]);
    let err = text(&out.stderr);
    assert!(err.contains("changed since it was built; rebuilt"), "{err}");
    assert_eq!(json(&out)["default_image"]["built"], true);
    // A new disk (mkfs output differs run to run), recorded: the next run keeps it.
    assert_ne!(sha256(&disk), tampered);
    let out = init(&["--storage", s, "--skip-kernel", "--json"]);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(json(&out)["default_image"]["built"], false);
}
