//! `exec_python` with packages in a real Debian VM, offline: a wheel built in the test (in the
//! guest, with the image's own Python) is installed into a throw-away venv and imported; the
//! venv is gone afterwards; package arguments never reach a shell or pip's options.
//!
//! Needs the `bandsox/debian:bookworm` image that `scripts/setup` builds into the system
//! storage root (`BANDSOX_STORAGE`, default `/var/lib/bandsox`); its base disk is hard-linked
//! into the test's own storage root. Without it the test fails under CI and is skipped (with a
//! message) elsewhere. Slow under TCG: a venv with pip takes about a minute to create.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use bandsox_core::guest::python::PythonRequest;
use bandsox_core::images;
use bandsox_core::store::Store;
use bandsox_core::{CoreError, CreateVm, Manager, ManagerConfig, Storage};
use bandsox_protocol::ExecRequest;
use common::fresh_storage;

const IMAGE: &str = "bandsox/debian:bookworm";

/// Builds `hello_bsx-1.0-py3-none-any.whl` (a module with `ANSWER = 42`) in `/tmp/wheels`.
const MAKE_WHEEL: &str = r#"
import base64, hashlib, os, zipfile
files = {
    "hello_bsx/__init__.py": b"ANSWER = 42\n",
    "hello_bsx-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hello-bsx\nVersion: 1.0\n",
    "hello_bsx-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += f"{name},sha256={digest},{len(data)}\n"
record += "hello_bsx-1.0.dist-info/RECORD,,\n"
files["hello_bsx-1.0.dist-info/RECORD"] = record.encode()
os.makedirs("/tmp/wheels", exist_ok=True)
with zipfile.ZipFile("/tmp/wheels/hello_bsx-1.0-py3-none-any.whl", "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
print("built")
"#;

/// Registers the system storage's Debian image in `storage` (base disk hard-linked).
fn link_debian_image(storage: &Storage) -> bool {
    let system = Storage::new(
        std::env::var_os("BANDSOX_STORAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/lib/bandsox".into()),
    )
    .unwrap();
    let found = Store::open(&system.db_path())
        .ok()
        .and_then(|store| images::find(&store, &system, IMAGE).ok().flatten());
    let Some(found) = found else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{IMAGE} is missing from {}: scripts/setup builds it",
            system.root().display()
        );
        eprintln!("skipped: {IMAGE} not in the system storage root (run scripts/setup)");
        return false;
    };
    let (from, to) = (
        system.image_dir(&found.record.digest).unwrap(),
        storage.image_dir(&found.record.digest).unwrap(),
    );
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::hard_link(entry.path(), to.join(entry.file_name())).unwrap();
    }
    Store::open(&storage.db_path())
        .unwrap()
        .upsert_image(&found.record)
        .unwrap();
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_python_installs_a_local_wheel_offline() {
    let ts = fresh_storage();
    if !link_debian_image(&ts.storage) {
        return;
    }
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let mut create = CreateVm::new(IMAGE);
    create.mem_mib = 512;
    let id = mgr.create_vm(create).await.unwrap().id;

    let built = mgr
        .exec_python(
            &id,
            PythonRequest {
                code: MAKE_WHEEL.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(built.success, "{built:?}");
    assert_eq!(built.stdout.trim(), "built");

    let slow = 600_000;
    let r = mgr
        .exec_python(
            &id,
            PythonRequest {
                code:
                    "import sys, hello_bsx\nprint(hello_bsx.ANSWER, sys.prefix != sys.base_prefix)"
                        .into(),
                packages: vec!["/tmp/wheels/hello_bsx-1.0-py3-none-any.whl".into()],
                timeout_ms: slow,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(r.success, "{r:?}");
    assert_eq!(r.stdout.trim(), "42 True", "{r:?}");
    assert!(r.venv.is_none());

    // The venv is removed; the system Python never got the package.
    let out = mgr
        .exec(
            &id,
            ExecRequest {
                command: Some(
                    "ls -d /tmp/bandsox_venv_* 2>/dev/null | wc -l; \
                     python3 -c 'import hello_bsx' 2>&1 | tail -1"
                        .into(),
                ),
                ..Default::default()
            },
            None,
            1 << 16,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("0\n"), "a venv was left: {text}");
    assert!(text.contains("No module named 'hello_bsx'"), "{text}");

    // Shell syntax in a package name reaches pip as one argument (no shell): pip fails
    // cleanly (no index is reachable) and nothing ran.
    let r = mgr
        .exec_python(
            &id,
            PythonRequest {
                code: "print(1)".into(),
                packages: vec!["x; touch /tmp/pwned".into()],
                timeout_ms: slow,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!r.success, "{r:?}");
    assert!(
        r.error
            .as_deref()
            .unwrap_or_default()
            .contains("installing packages"),
        "{r:?}"
    );
    let pwned = mgr.exists(&id, "/tmp/pwned").await.unwrap();
    assert!(!pwned, "a package name reached a shell");

    // Options are refused before anything runs.
    let e = mgr
        .exec_python(
            &id,
            PythonRequest {
                code: "print(1)".into(),
                packages: vec!["--index-url=http://evil".into()],
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(e, Err(CoreError::InvalidInput(_))), "{e:?}");
    mgr.delete_vm(&id).await.unwrap();
}
