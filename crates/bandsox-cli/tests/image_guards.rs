//! Import guards through a real server, with auth off and on: an existing reference answers
//! 409 `image_exists` (REST and CLI) unless forced (`?force=true`, `--force`), and an image
//! that unpacks past `BANDSOX_MAX_UNPACKED_MIB` answers 413 `image_too_large` with nothing
//! left in the storage root. No VM is booted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../bandsox-core/tests/image_support/mod.rs"]
mod image_support;

use std::path::Path;
use std::process::{Command, Output};

use common::{answer, auth_init, free_port, init, start_server, text, TestRoot, BIN};
use image_support::{layout, names, Tar};

/// The server of these tests refuses images above this many MiB.
const LIMIT_MIB: &str = "8";

fn cli(url: &str, home: &Path, key: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("BANDSOX_URL", url)
        .env("HOME", home)
        .env_remove("SUDO_USER");
    match key {
        Some(k) => c.env("BANDSOX_API_KEY", k),
        None => c.env_remove("BANDSOX_API_KEY"),
    };
    c.output().unwrap()
}

/// A tar of an OCI layout whose one layer holds `which`.
fn layout_tar(work: &Path, name: &str, which: &[u8]) -> std::path::PathBuf {
    let dir = work.join(name);
    layout(
        &dir,
        vec![Tar::default().file("which", which).done()],
        serde_json::json!({}),
        "v1",
    );
    tar_of(&dir, &work.join(format!("{name}.tar")))
}

fn tar_of(dir: &Path, out: &Path) -> std::path::PathBuf {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
    out.to_path_buf()
}

/// An OCI layout tar whose gzip layer is 64 MiB of zeros (the archive is well under 1 MiB).
fn bomb_tar(work: &Path) -> std::path::PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    let data = vec![0u8; 64 << 20];
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "big", data.as_slice()).unwrap();
    let dir = work.join("bomb");
    layout(
        &dir,
        vec![b.into_inner().unwrap()],
        serde_json::json!({}),
        "v1",
    );
    let out = tar_of(&dir, &work.join("bomb.tar"));
    assert!(std::fs::metadata(&out).unwrap().len() < 1 << 20);
    out
}

fn import(url: &str, key: Option<&str>, query: &str, tar: &Path) -> (u16, serde_json::Value) {
    let mut req = ureq::post(&format!("{url}/api/images/import?{query}"))
        .set("Content-Type", "application/x-tar");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    answer(req.send_bytes(&std::fs::read(tar).unwrap()))
}

fn digest(url: &str, key: Option<&str>, reference: &str) -> String {
    let mut req = ureq::get(&format!("{url}/api/images/{reference}"));
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let (status, body) = answer(req.call());
    assert_eq!(status, 200, "{body}");
    body["digest"].as_str().unwrap().to_owned()
}

fn guards(auth: bool) {
    let root = TestRoot::new("bsxguard");
    let storage = root.path().join("s");
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = init(&storage);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let key = auth.then(|| auth_init(&storage).1);
    let key = key.as_deref();
    // The server reads the limit from its environment.
    std::env::set_var("BANDSOX_MAX_UNPACKED_MIB", LIMIT_MIB);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = start_server(&storage, port);
    let work = tempfile::tempdir().unwrap();
    let one = layout_tar(work.path(), "one", b"one\n");
    let two = layout_tar(work.path(), "two", b"two\n");

    let (status, body) = import(&url, key, "reference=example/g:1", &one);
    assert_eq!(status, 201, "{body}");
    let first = digest(&url, key, "example/g:1");

    // REST: 409 problem+json, the reference unchanged; forced, re-pointed.
    let mut req = ureq::post(&format!("{url}/api/images/import?reference=example/g:1"))
        .set("Content-Type", "application/x-tar");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    match req.send_bytes(&std::fs::read(&two).unwrap()) {
        Err(ureq::Error::Status(409, r)) => {
            assert_eq!(r.content_type(), "application/problem+json");
            let p: serde_json::Value = r.into_json().unwrap();
            assert_eq!(p["code"], "image_exists", "{p}");
            assert!(p["hint"].as_str().unwrap().contains("force"), "{p}");
        }
        other => panic!("expected 409, got {other:?}"),
    }
    assert_eq!(digest(&url, key, "example/g:1"), first);
    let (status, body) = import(&url, key, "reference=example/g:1&force=true", &two);
    assert_eq!(status, 201, "{body}");
    let second = digest(&url, key, "example/g:1");
    assert_ne!(second, first);
    // The default image cannot be re-pointed silently.
    let default = digest(&url, key, "bandsox/busybox");
    let (status, body) = import(&url, key, "reference=bandsox/busybox", &one);
    assert_eq!((status, body["code"].as_str()), (409, Some("image_exists")));
    assert_eq!(digest(&url, key, "bandsox/busybox"), default);

    // CLI: one line + hint, exit 4 (conflict); --force replaces.
    let one_s = one.to_str().unwrap();
    let out = cli(
        &url,
        &home,
        key,
        &["image", "import", one_s, "--reference", "example/g:1"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert!(err.lines().any(|l| l.starts_with("hint: ")), "{err}");
    assert_eq!(digest(&url, key, "example/g:1"), second);
    let out = cli(
        &url,
        &home,
        key,
        &[
            "image",
            "import",
            one_s,
            "--reference",
            "example/g:1",
            "--force",
            "--quiet",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(digest(&url, key, "example/g:1"), first);

    // A decompression bomb: 413, nothing left behind.
    let images_dir = storage.join("images");
    let before = names(&images_dir);
    let bomb = bomb_tar(work.path());
    let (status, body) = import(&url, key, "reference=bomb/x:1", &bomb);
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("image_too_large")),
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains("8 MiB"), "{body}");
    let out = cli(
        &url,
        &home,
        key,
        &[
            "image",
            "import",
            bomb.to_str().unwrap(),
            "--reference",
            "bomb/x:2",
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("8 MiB"), "{err}");
    assert!(err.lines().any(|l| l.starts_with("hint: ")), "{err}");
    assert_eq!(names(&images_dir), before);
    let mut req = ureq::get(&format!("{url}/api/images/bomb/x:1"));
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    assert_eq!(answer(req.call()).0, 404);
}

#[test]
fn import_guards_without_auth() {
    guards(false);
}

#[test]
fn import_guards_with_auth() {
    guards(true);
}
