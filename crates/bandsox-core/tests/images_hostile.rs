//! Hostile image content: device nodes, FIFOs, setuid/setgid and world-writable modes never
//! exist on the host with usable permissions (checked while the import runs and after), yet
//! the base disk and a VM booted from it have them; decompression bombs are refused by size
//! with nothing left behind; existing references are not replaced unless forced.
//!
//! Every test of this binary runs with `BANDSOX_MAX_UNPACKED_MIB=24` (set to the same value by
//! each test, so their order does not matter).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod image_support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use bandsox_core::images;
use bandsox_core::store::Store;
use bandsox_core::{CreateVm, Manager, ManagerConfig};
use bandsox_image::oci::{NoProgress, Progress};
use bandsox_protocol::ExecRequest;
use common::{assert_storage_clean, fresh_storage};
use image_support::{busybox_bytes, busybox_layer, layout, names, Tar};

const LIMIT_MIB: &str = "24";

fn limit_env() {
    std::env::set_var(images::MAX_UNPACKED_ENV, LIMIT_MIB);
}

/// A layer entry with explicit owner, mode and device numbers.
fn special(
    out: &mut Vec<u8>,
    kind: tar::EntryType,
    name: &str,
    data: &[u8],
    mode: u32,
    uid: u64,
    dev: (u32, u32),
) {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_device_major(dev.0).unwrap();
    h.set_device_minor(dev.1).unwrap();
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
}

/// The hostile layer: `/srv/kvm` (char 10:232, 0666, owned by nobody), `/srv/fifo` (0666),
/// `/bin/suid` (busybox, 04755), `/srv/sgid` (02755), `/srv/open` (a 0777 directory) and
/// `/srv/world` (a 0666 file owned by nobody).
fn hostile_layer() -> Vec<u8> {
    use tar::EntryType as T;
    let mut out = Vec::new();
    special(&mut out, T::Directory, "srv/", b"", 0o755, 0, (0, 0));
    special(&mut out, T::Char, "srv/kvm", b"", 0o666, 65534, (10, 232));
    special(&mut out, T::Fifo, "srv/fifo", b"", 0o666, 65534, (0, 0));
    special(&mut out, T::Block, "srv/disk", b"", 0o666, 65534, (7, 0));
    special(
        &mut out,
        T::Regular,
        "bin/suid",
        &busybox_bytes(),
        0o4755,
        0,
        (0, 0),
    );
    special(
        &mut out,
        T::Regular,
        "srv/sgid",
        b"#!/bin/sh\n",
        0o2755,
        0,
        (0, 0),
    );
    special(&mut out, T::Directory, "srv/open/", b"", 0o777, 0, (0, 0));
    special(
        &mut out,
        T::Regular,
        "srv/world",
        b"w\n",
        0o666,
        65534,
        (0, 0),
    );
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// Why a host entry is usable by someone it should not be, if it is.
fn usable(path: &Path) -> Option<String> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let ft = m.file_type();
    let mode = m.mode() & 0o7777;
    if (ft.is_char_device() || ft.is_block_device() || ft.is_fifo())
        && (mode != 0 || m.uid() != 0 || m.gid() != 0)
    {
        return Some(format!("special file mode {mode:o} uid {}", m.uid()));
    }
    if !ft.is_symlink() && mode & 0o7002 != 0 {
        return Some(format!("mode {mode:o}"));
    }
    None
}

/// Every entry under `dir` that [`usable`] flags, plus every scratch directory not 0700.
fn host_findings(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") && m.mode() & 0o777 != 0o700 {
                found.push(format!(
                    "{}: scratch mode {:o}",
                    p.display(),
                    m.mode() & 0o777
                ));
            }
            if let Some(why) = usable(&p) {
                found.push(format!("{}: {why}", p.display()));
            }
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    found
}

/// Scans the images directory when the unpacked tree is complete (the base disk phase) and
/// records what it finds.
struct Inspector {
    images_dir: PathBuf,
    scans: Mutex<Vec<(usize, Vec<String>)>>,
}

impl Progress for Inspector {
    fn phase(&self, message: &str) {
        if message.starts_with("building base disk") {
            let mut special = 0;
            let mut stack = vec![self.images_dir.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let ft = e.file_type().unwrap();
                    if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                        special += 1;
                    }
                    if ft.is_dir() {
                        stack.push(e.path());
                    }
                }
            }
            let found = host_findings(&self.images_dir);
            self.scans.lock().unwrap().push((special, found));
        }
    }
}

/// `debugfs -R "stat PATH"` of an ext4 image: (type line, mode, user, device) as text.
fn ext4_stat(img: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn store(ts: &common::TestStorage) -> Store {
    Store::open(&ts.storage.db_path()).unwrap()
}

async fn import_hostile(ts: &common::TestStorage, st: &Store, work: &Path) -> (String, PathBuf) {
    let lay = work.join("hostile");
    layout(
        &lay,
        vec![busybox_layer(), hostile_layer()],
        serde_json::json!({"Env": ["PATH=/bin"]}),
        "v1",
    );
    let inspector = Arc::new(Inspector {
        images_dir: ts.storage.images_dir(),
        scans: Mutex::new(Vec::new()),
    });
    let rec = images::import(
        st,
        &ts.storage,
        &lay,
        Some("hostile/devices:v1"),
        false,
        inspector.clone(),
    )
    .await
    .unwrap();
    let scans = inspector.scans.lock().unwrap().clone();
    assert_eq!(scans.len(), 1, "the base disk phase ran once: {scans:?}");
    let (special, found) = &scans[0];
    // The nodes exist on the host while the disk is built (mkfs copies them) ...
    assert_eq!(
        *special, 3,
        "device nodes and the FIFO on the host: {special}"
    );
    // ... but none is usable, and no mode bit is dangerous.
    assert!(
        found.is_empty(),
        "usable on the host during import: {found:#?}"
    );
    let disk = ts
        .storage
        .image_dir(&rec.digest)
        .unwrap()
        .join("rootfs.ext4");
    (rec.digest, disk)
}

#[tokio::test]
async fn device_nodes_and_special_modes_reach_the_base_disk_only() {
    limit_env();
    let ts = fresh_storage();
    let st = store(&ts);
    let work = tempfile::tempdir().unwrap();
    let (_, disk) = import_hostile(&ts, &st, work.path()).await;

    // After: nothing usable anywhere under the storage root, no scratch directory left.
    let found = host_findings(ts.root());
    assert!(
        found.is_empty(),
        "usable on the host after import: {found:#?}"
    );
    assert!(!names(&ts.storage.images_dir())
        .iter()
        .any(|n| n.starts_with(".tmp")));

    // The base disk has the real modes, owners and device numbers.
    let kvm = ext4_stat(&disk, "/srv/kvm");
    assert!(kvm.contains("Type: character special"), "{kvm}");
    assert!(kvm.contains("Mode:  0666"), "{kvm}");
    assert!(kvm.contains("User: 65534"), "{kvm}");
    assert!(kvm.contains("Device major/minor number: 10:232"), "{kvm}");
    let blk = ext4_stat(&disk, "/srv/disk");
    assert!(blk.contains("Type: block special"), "{blk}");
    assert!(blk.contains("Mode:  0666"), "{blk}");
    let fifo = ext4_stat(&disk, "/srv/fifo");
    assert!(fifo.contains("Type: FIFO"), "{fifo}");
    assert!(fifo.contains("Mode:  0666"), "{fifo}");
    for (path, mode) in [
        ("/bin/suid", "04755"),
        ("/srv/sgid", "02755"),
        ("/srv/open", "0777"),
        ("/srv/world", "0666"),
        ("/tmp", "0755"),
    ] {
        let s = ext4_stat(&disk, path);
        assert!(s.contains(&format!("Mode:  {mode} ")), "{path}: {s}");
    }
}

#[tokio::test]
async fn a_vm_from_a_hostile_image_has_the_device_and_the_setuid_bit() {
    limit_env();
    let ts = fresh_storage();
    let st = store(&ts);
    let work = tempfile::tempdir().unwrap();
    let _ = import_hostile(&ts, &st, work.path()).await;
    drop(st);
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let vm = mgr
        .create_vm(CreateVm::new("hostile/devices:v1"))
        .await
        .unwrap();
    let req = ExecRequest {
        argv: Some(vec![
            "/bin/stat".into(),
            "-c".into(),
            "%n %F %a %t:%T %u".into(),
            "/srv/kvm".into(),
            "/srv/disk".into(),
            "/srv/fifo".into(),
            "/bin/suid".into(),
            "/srv/sgid".into(),
            "/srv/open".into(),
        ]),
        timeout_ms: Some(60_000),
        ..Default::default()
    };
    let out = mgr.exec(&vm.id, req, None, 1 << 20).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.exit_code,
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "/srv/kvm character special file 666 a:e8 65534\n\
         /srv/disk block special file 666 7:0 65534\n\
         /srv/fifo fifo 666 0:0 65534\n\
         /bin/suid regular file 4755 0:0 0\n\
         /srv/sgid regular file 2755 0:0 0\n\
         /srv/open directory 777 0:0 0\n"
    );
    mgr.delete_vm(&vm.id).await.unwrap();
    assert_storage_clean(ts.root());
}

/// A tar of one file of `mib` MiB of zeros.
fn zeros_tar(name: &str, mib: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = vec![0u8; mib << 20];
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data.as_slice()).unwrap();
    b.into_inner().unwrap()
}

/// `gzip -9` of `bytes` (the gzip tool, so the test needs no compression crate).
fn gzip(bytes: &[u8], dir: &Path) -> Vec<u8> {
    let raw = dir.join("raw");
    std::fs::write(&raw, bytes).unwrap();
    let out = Command::new("gzip").arg("-9c").arg(&raw).output().unwrap();
    assert!(out.status.success());
    std::fs::remove_file(&raw).unwrap();
    out.stdout
}

#[tokio::test]
async fn decompression_bombs_are_refused_by_size_and_leave_nothing() {
    limit_env();
    let ts = fresh_storage();
    let st = store(&ts);
    let work = tempfile::tempdir().unwrap();
    let before = names(&ts.storage.images_dir());
    let n_images = st.list_images().unwrap().len();

    // A layer of 64 MiB of zeros (gzip, about 64 KiB) in an OCI layout directory.
    let lay = work.path().join("bomb-layer");
    layout(
        &lay,
        vec![zeros_tar("big", 64)],
        serde_json::json!({}),
        "v1",
    );
    let blob_bytes: u64 = std::fs::read_dir(lay.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        blob_bytes < 1 << 20,
        "the bomb is small: {blob_bytes} bytes"
    );
    // An archive (tar.gz) whose own content is 64 MiB.
    let outer = work.path().join("bomb-archive.tar.gz");
    std::fs::write(&outer, gzip(&zeros_tar("junk", 64), work.path())).unwrap();

    for (path, what) in [(&lay, "layer"), (&outer, "archive")] {
        let err = images::import(
            &st,
            &ts.storage,
            path,
            Some("bomb/x:1"),
            false,
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), "image_too_large", "{what}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("24 MiB") && msg.contains(images::MAX_UNPACKED_ENV),
            "{what}: {msg}"
        );
        assert_eq!(names(&ts.storage.images_dir()), before, "{what}");
        assert_eq!(st.list_images().unwrap().len(), n_images, "{what}");
    }
}

#[tokio::test]
async fn existing_references_are_replaced_only_when_forced() {
    limit_env();
    let ts = fresh_storage();
    let st = store(&ts);
    let work = tempfile::tempdir().unwrap();
    let one = work.path().join("one");
    layout(
        &one,
        vec![Tar::default().file("which", b"one\n").done()],
        serde_json::json!({}),
        "v1",
    );
    let two = work.path().join("two");
    layout(
        &two,
        vec![Tar::default().file("which", b"two\n").done()],
        serde_json::json!({}),
        "v1",
    );
    let import = |path: PathBuf, reference: &'static str, force: bool| {
        let (st, storage) = (&st, &ts.storage);
        async move {
            images::import(
                st,
                storage,
                &path,
                Some(reference),
                force,
                Arc::new(NoProgress),
            )
            .await
        }
    };
    let first = import(one.clone(), "example/ref:1", false).await.unwrap();
    let err = import(two.clone(), "example/ref:1", false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "image_exists", "{err}");
    assert_eq!(
        images::inspect(&st, &ts.storage, "example/ref:1")
            .unwrap()
            .record
            .digest,
        first.digest
    );
    // Forced: re-pointed.
    let second = import(two.clone(), "example/ref:1", true).await.unwrap();
    assert_ne!(second.digest, first.digest);
    assert_eq!(
        images::inspect(&st, &ts.storage, "example/ref:1")
            .unwrap()
            .record
            .digest,
        second.digest
    );

    // The default image and the normalised form of a registry name are taken too.
    let default_digest = images::inspect(&st, &ts.storage, images::DEFAULT_IMAGE)
        .unwrap()
        .record
        .digest;
    let err = import(one.clone(), "bandsox/busybox", false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "image_exists", "{err}");
    assert_eq!(
        images::inspect(&st, &ts.storage, images::DEFAULT_IMAGE)
            .unwrap()
            .record
            .digest,
        default_digest
    );
    import(one.clone(), "docker.io/library/alpine:latest", false)
        .await
        .unwrap();
    let err = import(two.clone(), "alpine", false).await.unwrap_err();
    assert_eq!(err.code(), "image_exists", "{err}");
    // A pull never answers with, or silently replaces, an imported image of that name (this
    // is refused before any registry is asked).
    let err = images::pull(
        &st,
        &ts.storage,
        "alpine",
        &images::pull_options_from_env(),
        false,
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "image_exists", "{err}");
}
