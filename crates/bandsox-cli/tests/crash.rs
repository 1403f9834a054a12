//! Crash safety: `kill -9` of the server while VMs run, during a create and during a snapshot;
//! after a restart every surviving VM is re-attached and nothing half-made is left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, init, start_server};

fn create(url: &str) -> String {
    let r: serde_json::Value = ureq::post(&format!("{url}/api/vms"))
        .send_json(serde_json::json!({"image": "bandsox/busybox"}))
        .unwrap()
        .into_json()
        .unwrap();
    r["id"].as_str().unwrap().to_owned()
}

fn exec(url: &str, id: &str, cmd: &str) -> String {
    let r: serde_json::Value = ureq::post(&format!("{url}/api/vms/{id}/exec"))
        .send_json(serde_json::json!({"command": cmd}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["exit_code"], 0, "{r}");
    r["stdout"].as_str().unwrap().to_owned()
}

fn get(url: &str, path: &str) -> serde_json::Value {
    ureq::get(&format!("{url}{path}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap()
}

/// Pids of QEMU processes whose command line mentions `root`.
fn qemus(root: &Path) -> Vec<u32> {
    let needle = root.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            cmd.windows(11).any(|w| w == b"qemu-system").then_some(())?;
            cmd.windows(needle.len())
                .any(|w| w == needle)
                .then_some(pid)
        })
        .collect()
}

#[test]
fn server_kill_9_loses_nothing_and_leaks_nothing() {
    let dir = common::TestRoot::new("bsxcrash");
    let storage = dir.path();
    assert!(init(storage).status.success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = start_server(storage, port);

    let ids: Vec<String> = (0..3).map(|_| create(&url)).collect();
    for (i, id) in ids.iter().enumerate() {
        exec(&url, id, &format!("echo vm{i} > /root/mark"));
    }

    // kill -9 while a create is booting.
    let u = url.clone();
    let pending = std::thread::spawn(move || {
        ureq::post(&format!("{u}/api/vms"))
            .send_json(serde_json::json!({"image": "bandsox/busybox"}))
            .map_err(Box::new)
    });
    std::thread::sleep(Duration::from_millis(700));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(pending.join().unwrap().is_err());

    let mut server = start_server(storage, port);
    let vms = get(&url, "/api/vms");
    assert_eq!(
        vms.as_array().unwrap().len(),
        3,
        "the half-made VM must be gone: {vms}"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(get(&url, &format!("/api/vms/{id}"))["status"], "running");
        assert_eq!(
            exec(&url, id, "cat /root/mark"),
            format!("vm{i}\n"),
            "VM {id} not re-attached"
        );
    }
    assert_eq!(qemus(storage).len(), 3, "an orphan VMM was left");

    // kill -9 during a snapshot.
    let u = url.clone();
    let id0 = ids[0].clone();
    let pending = std::thread::spawn(move || {
        ureq::post(&format!("{u}/api/vms/{id0}/snapshot"))
            .send_json(serde_json::json!({"name": "s"}))
            .map_err(Box::new)
    });
    std::thread::sleep(Duration::from_millis(60));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = pending.join().unwrap();

    let _server = start_server(storage, port);
    let snaps = get(&url, "/api/snapshots");
    let snaps = snaps.as_array().unwrap();
    assert!(snaps.len() <= 1);
    let leftovers: Vec<_> = std::fs::read_dir(storage.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers.len(),
        snaps.len(),
        "half-written snapshot left: {leftovers:?}"
    );
    // The VM that was being snapshotted runs again.
    assert_eq!(exec(&url, &ids[0], "cat /root/mark"), "vm0\n");
    if let Some(s) = snaps.first() {
        let sid = s["id"].as_str().unwrap();
        let r: serde_json::Value = ureq::post(&format!("{url}/api/snapshots/{sid}/restore"))
            .send_json(serde_json::json!({}))
            .unwrap()
            .into_json()
            .unwrap();
        let clone = r["id"].as_str().unwrap();
        assert_eq!(exec(&url, clone, "cat /root/mark"), "vm0\n");
        ureq::delete(&format!("{url}/api/vms/{clone}"))
            .call()
            .unwrap();
    }

    // A VMM that dies under a running VM is noticed within 2 s.
    let victim = &ids[1];
    let pid = get(&url, &format!("/api/vms/{victim}"))["pid"]
        .as_u64()
        .unwrap();
    let t = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    loop {
        let vm = get(&url, &format!("/api/vms/{victim}"));
        if vm["status"] == "failed" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "not detected: {vm}");
        std::thread::sleep(Duration::from_millis(50));
    }

    for id in &ids {
        ureq::delete(&format!("{url}/api/vms/{id}")).call().unwrap();
    }
    assert!(qemus(storage).is_empty());
    assert_eq!(std::fs::read_dir(storage.join("vms")).unwrap().count(), 0);
}

/// A second owner of a storage root (another `serve`, `init`, a local image import) fails at
/// once naming the first server's PID, and the first server's VMs keep running.
#[test]
fn second_owner_of_a_storage_root_is_refused() {
    let dir = common::TestRoot::new("bsxlock");
    let storage = dir.path();
    assert!(init(storage).status.success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = start_server(storage, port);
    let id = create(&url);
    exec(&url, &id, "echo alive > /root/mark");
    let vmm = qemus(storage);
    assert_eq!(vmm.len(), 1);

    let pid = server.child.id().to_string();
    let bin = common::BIN;
    let second_port = free_port().to_string();
    let attempts: [Vec<&str>; 3] = [
        vec!["serve", "--port", &second_port, "--no-proxy", "--storage"],
        vec!["init", "--storage"],
        vec!["image", "import", "/dev/null", "--storage"],
    ];
    for args in attempts {
        let mut child = std::process::Command::new(bin)
            .args(&args)
            .arg(storage)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} did not fail at once");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {err}");
        assert!(
            // One lock for every owner: each is refused naming the owner's PID.
            err.contains(&format!("in use by PID {pid} (bandsox serve)"))
                && err.contains("hint:")
                && err.lines().filter(|l| l.starts_with("error:")).count() == 1,
            "{args:?}: {err}"
        );
    }
    assert_eq!(qemus(storage), vmm, "the first server's VMM was touched");
    assert_eq!(get(&url, &format!("/api/vms/{id}"))["status"], "running");
    assert_eq!(exec(&url, &id, "cat /root/mark"), "alive\n");

    // The VM's disk, console log and sockets, and a snapshot's memory and state, are private.
    ureq::post(&format!("{url}/api/vms/{id}/snapshot"))
        .send_json(serde_json::json!({"name": "private"}))
        .unwrap();
    let mut open = Vec::new();
    for d in ["vms", "snapshots"] {
        for e in std::fs::read_dir(storage.join(d)).unwrap().flatten() {
            for f in std::iter::once(e.path()).chain(
                std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path()),
            ) {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::symlink_metadata(&f).unwrap().permissions().mode();
                if mode & 0o077 != 0 {
                    open.push(format!("{} {:o}", f.display(), mode & 0o7777));
                }
            }
        }
    }
    assert!(open.is_empty(), "open to other users: {open:?}");
    ureq::delete(&format!("{url}/api/vms/{id}")).call().unwrap();
}
