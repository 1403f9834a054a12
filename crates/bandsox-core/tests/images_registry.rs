//! Images from a real OCI registry on loopback: pull (concurrent, deduplicated), convert,
//! boot real VMs from them, image config as exec defaults, and every bad-input case with its
//! own error code and nothing left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod image_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use bandsox_core::images::{self, blobs_dir};
use bandsox_core::{CreateVm, Manager, ManagerConfig};
use bandsox_image::oci::NoProgress;
use bandsox_image::pull::PullOptions;
use bandsox_protocol::ExecRequest;
use common::{assert_storage_clean, fresh_storage};
use image_support::{busybox_layer, layout, names, Registry, Tar};

const CAP: usize = 1 << 20;

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        timeout_ms: Some(30_000),
        ..Default::default()
    }
}

async fn run(mgr: &Manager, id: &str, req: ExecRequest) -> (Option<i32>, String, String) {
    let out = mgr.exec(id, req, None, CAP).await.unwrap();
    (
        out.status.exit_code,
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Three layers: busybox; files, a symlink-heavy tree and things to delete; whiteouts and
/// an opaque directory.
fn multi_layer_image(dir: &std::path::Path, host_outside: &str) {
    let layer2 = Tar::default()
        .dir("etc/")
        .file("etc/keep", b"kept\n")
        .file("etc/gone", b"to be whited out\n")
        .dir("opaque/")
        .file("opaque/old", b"old\n")
        .dir("work/")
        .dir("usr/lib/")
        .file("usr/lib/libreal.so", b"real\n")
        .symlink("lib", "usr/lib")
        .symlink("usr/lib/libalias.so", "libreal.so")
        .symlink("abs-link", "/usr/lib/libreal.so")
        .hardlink("usr/lib/libhard.so", "usr/lib/libreal.so")
        // Hostile: a symlink to a host directory, then a file through it.
        .symlink("hostdir", host_outside)
        .file("hostdir/planted", b"should stay inside the image\n")
        .file("../escape", b"never\n")
        .done();
    let layer3 = Tar::default()
        .file("etc/.wh.gone", b"")
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/new", b"new\n")
        .file("lib/libvialink.so", b"via link\n")
        .done();
    layout(
        dir,
        vec![busybox_layer(), layer2, layer3],
        serde_json::json!({
            "Env": ["PATH=/bin", "FROM_IMAGE=image", "OVERRIDDEN=image"],
            "WorkingDir": "/work",
            "User": "1234:1234",
            "Cmd": ["/bin/sh"],
            "ExposedPorts": {"8080/tcp": {}},
        }),
        "v1",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_image_boots_with_its_files_env_and_cwd() {
    let reg = Registry::start();
    let ts = fresh_storage();
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("host-outside");
    std::fs::create_dir(&outside).unwrap();
    let img = work.path().join("multi");
    multi_layer_image(&img, outside.to_str().unwrap());
    reg.push(&img, "v1", "test/multi:v1");
    reg.push(&img, "v1", "test/multi:on-demand");

    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let reference = reg.reference("test/multi:v1");

    // Two concurrent pulls of one reference: one download, one conversion, one answer.
    let opts = PullOptions::default();
    let (a, b) = tokio::join!(
        images::pull(
            mgr.store(),
            &ts.storage,
            &reference,
            &opts,
            false,
            Arc::new(NoProgress)
        ),
        images::pull(
            mgr.store(),
            &ts.storage,
            &reference,
            &opts,
            false,
            Arc::new(NoProgress)
        ),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.reference, reference);
    assert_eq!(a.config["WorkingDir"], "/work");
    let blobs = names(&blobs_dir(&ts.storage).join("sha256"));
    assert_eq!(blobs.len(), 3, "{blobs:?}");
    // The hostile entries stayed inside the image.
    assert!(names(&outside).is_empty(), "{:?}", names(&outside));
    assert!(!work.path().join("escape").exists());
    let disk = ts.storage.image_dir(&a.digest).unwrap().join("rootfs.ext4");
    let planted = format!("{}/planted", outside.display());
    assert_eq!(
        image_support::ext4_cat(&disk, &planted).as_deref(),
        Some(&b"should stay inside the image\n"[..])
    );
    // No scratch directories left.
    assert!(
        !names(&ts.storage.images_dir())
            .iter()
            .any(|n| n.starts_with(".tmp")),
        "{:?}",
        names(&ts.storage.images_dir())
    );

    // Create from a reference that is not cached yet: pulled on demand (same digest, so
    // the base disk is shared).
    let mut req = CreateVm::new(reg.reference("test/multi:on-demand"));
    req.env_vars = BTreeMap::from([("OVERRIDDEN".into(), "vm".into())]);
    let vm = mgr.create_vm(req).await.unwrap();
    assert_eq!(vm.image_digest, a.digest);
    assert_eq!(names(&blobs_dir(&ts.storage).join("sha256")).len(), 3);

    let (code, out, err) = run(
        &mgr,
        &vm.id,
        sh(
            "pwd; echo $FROM_IMAGE $OVERRIDDEN $PER_CMD; cat /etc/keep; ls /opaque; \
            test -e /etc/gone || echo gone-is-gone; cat /lib/libvialink.so /usr/lib/libalias.so; \
            readlink /abs-link; stat -c %h /usr/lib/libreal.so; id -u",
        ),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "/work\nimage vm\nkept\nnew\ngone-is-gone\nvia link\nreal\n/usr/lib/libreal.so\n2\n1234\n"
    );

    // Per-command env wins over VM env wins over image env; an explicit cwd wins.
    let mut req = sh("pwd; echo $OVERRIDDEN $PER_CMD; id -u");
    req.user = Some("root".into());
    req.env = BTreeMap::from([
        ("OVERRIDDEN".into(), "cmd".into()),
        ("PER_CMD".into(), "yes".into()),
    ]);
    req.cwd = Some("/etc".into());
    assert_eq!(
        run(&mgr, &vm.id, req).await,
        (Some(0), "/etc\ncmd yes\n0\n".into(), String::new())
    );

    // In use: cannot be removed; after the VM is gone it can, with its blobs.
    // Another reference (on-demand) shares the digest, so removing this one is allowed and
    // keeps the disk; removing the last reference is refused while the VM uses it.
    images::remove(mgr.store(), &ts.storage, &reference)
        .await
        .unwrap();
    assert!(ts
        .storage
        .image_dir(&a.digest)
        .unwrap()
        .join("rootfs.ext4")
        .is_file());
    let err = images::remove(
        mgr.store(),
        &ts.storage,
        &reg.reference("test/multi:on-demand"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "image_in_use", "{err}");
    mgr.delete_vm(&vm.id).await.unwrap();
    images::remove(
        mgr.store(),
        &ts.storage,
        &reg.reference("test/multi:on-demand"),
    )
    .await
    .unwrap();
    assert!(!ts.storage.image_dir(&a.digest).unwrap().exists());
    assert!(names(&blobs_dir(&ts.storage).join("sha256")).is_empty());
    assert_storage_clean(ts.root());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_without_a_shell_runs_a_static_binary() {
    let reg = Registry::start();
    let ts = fresh_storage();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("noshell");
    layout(
        &img,
        vec![Tar::default()
            // Busybox picks its applet from argv[0], so it keeps its name; there is no shell.
            .exe("busybox", &image_support::busybox_bytes())
            .done()],
        serde_json::json!({"Entrypoint": ["/busybox"]}),
        "v1",
    );
    reg.push(&img, "v1", "test/noshell:v1");
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let vm = mgr
        .create_vm(CreateVm::new(reg.reference("test/noshell:v1")))
        .await
        .unwrap();
    let req = ExecRequest {
        argv: Some(vec!["/busybox".into(), "echo".into(), "hi".into()]),
        timeout_ms: Some(30_000),
        ..Default::default()
    };
    assert_eq!(
        run(&mgr, &vm.id, req).await,
        (Some(0), "hi\n".into(), String::new())
    );
    // No shell in the image: a shell command fails cleanly, the VM stays usable.
    let out = mgr.exec(&vm.id, sh("echo no"), None, CAP).await;
    assert!(
        out.as_ref().map_or(true, |o| o.status.exit_code != Some(0)),
        "{out:?}"
    );
    mgr.delete_vm(&vm.id).await.unwrap();
    assert_storage_clean(ts.root());
}

/// A registry that answers 401 to everything.
fn refusing_registry() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}"#;
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_own_code_and_leaves_nothing() {
    let reg = Registry::start();
    let ts = fresh_storage();
    let work = tempfile::tempdir().unwrap();
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let before_dirs = names(&ts.storage.images_dir());
    let before_images = mgr.store().list_images().unwrap();

    // A corrupt layer: the registry serves bytes that do not match the digest.
    let img = work.path().join("corrupt");
    let _ = layout(
        &img,
        vec![Tar::default().file("a", &vec![7u8; 100_000]).done()],
        serde_json::json!({}),
        "v1",
    );
    reg.push(&img, "v1", "test/corrupt:v1");
    let (plan, _) = bandsox_image::oci::load_dir(&img, None).unwrap();
    let layer_digest = plan.layers[0].digest.clone().unwrap();
    let data = reg.blob_data(&layer_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&data, bytes).unwrap();

    // A big image for the disk-size check.
    let big = work.path().join("big");
    layout(
        &big,
        vec![Tar::default().file("big", &vec![0u8; 80 << 20]).done()],
        serde_json::json!({}),
        "v1",
    );
    reg.push(&big, "v1", "test/big:v1");

    let auth_port = refusing_registry();
    let cases: Vec<(String, &str)> = vec![
        (reg.reference("test/missing:v1"), "image_not_found"),
        ("127.0.0.1:1/test/x:v1".into(), "registry_unreachable"),
        (
            format!("127.0.0.1:{auth_port}/test/x:v1"),
            "registry_auth_failed",
        ),
        (reg.reference("test/corrupt:v1"), "digest_mismatch"),
        ("UPPER/../x".into(), "invalid_input"),
    ];
    for (reference, code) in &cases {
        let err = images::pull(
            mgr.store(),
            &ts.storage,
            reference,
            &PullOptions {
                credentials: Some(("user".into(), "wrong".into())),
                ..Default::default()
            },
            false,
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), *code, "{reference}: {err}");
        // The same through VM creation: same code, no VM record.
        let err = mgr
            .create_vm(CreateVm::new(reference.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), *code, "create {reference}: {err}");
    }

    // Disk too small for the image: refused before anything is created.
    let mut req = CreateVm::new(reg.reference("test/big:v1"));
    req.disk_size_mib = 64;
    let err = mgr.create_vm(req).await.unwrap_err();
    assert_eq!(err.code(), "disk_too_small", "{err}");
    assert!(err.to_string().contains("disk_size_mib 64"), "{err}");

    assert!(mgr.list_vms().unwrap().is_empty());
    // Only the big image (pulled fine) was added; no partial entries, no scratch dirs.
    let after: Vec<String> = names(&ts.storage.images_dir())
        .into_iter()
        .filter(|n| !before_dirs.contains(n))
        .collect();
    assert!(
        after.iter().all(|n| n == "blobs" || n.len() == 64),
        "{after:?}"
    );
    assert_eq!(
        after.iter().filter(|n| n.len() == 64).count(),
        1,
        "{after:?}"
    );
    assert_eq!(
        mgr.store().list_images().unwrap().len(),
        before_images.len() + 1
    );
    // The corrupt blob was not kept.
    let kept = names(&blobs_dir(&ts.storage).join("sha256"));
    assert!(
        !kept.contains(&layer_digest.trim_start_matches("sha256:").to_owned()),
        "{kept:?}"
    );
    assert!(!kept.iter().any(|n| n.contains("part")), "{kept:?}");
    assert_storage_clean(ts.root());
}
