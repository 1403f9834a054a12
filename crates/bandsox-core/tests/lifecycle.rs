//! Lifecycle with real VMs: pause/resume, snapshots and concurrent restores, stop/start,
//! timeouts, labels, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bandsox_core::snapshots::RestoreOptions;
use bandsox_core::store::TimeoutAction;
use bandsox_core::{CoreError, CreateVm, Manager, ManagerConfig, VmStatus};
use bandsox_protocol::ExecRequest;
use common::{assert_storage_clean, assert_vm_gone, fresh_storage};

async fn sh(mgr: &Manager, id: &str, cmd: &str) -> String {
    let req = ExecRequest {
        command: Some(cmd.into()),
        timeout_ms: Some(30_000),
        ..Default::default()
    };
    let out = mgr.exec(id, req, None, 1 << 20).await.unwrap();
    assert_eq!(
        out.status.exit_code,
        Some(0),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn counter(mgr: &Manager, id: &str) -> u64 {
    sh(mgr, id, "cat /tmp/counter")
        .await
        .trim()
        .parse()
        .unwrap()
}

/// Starts a loop in the guest that increments /tmp/counter five times a second.
async fn start_counter(mgr: &Manager, id: &str) {
    sh(
        mgr,
        id,
        "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done' >/dev/null 2>&1 &",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_snapshot_restore_clones_stop_start() {
    let ts = fresh_storage();
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let vm = mgr
        .create_vm(CreateVm::new("bandsox/busybox"))
        .await
        .unwrap();
    let id = vm.id.clone();
    start_counter(&mgr, &id).await;

    // Pause freezes the guest; the counter goes on after resume.
    let before = counter(&mgr, &id).await;
    mgr.pause_vm(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    mgr.resume_vm(&id).await.unwrap();
    let at_resume = counter(&mgr, &id).await;
    assert!(
        at_resume <= before + 2,
        "counter moved while paused: {before} -> {at_resume}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        counter(&mgr, &id).await > at_resume,
        "counter stopped after resume"
    );

    // 20 pause/resume cycles with writes in between: every write is there.
    for i in 0..20 {
        sh(&mgr, &id, &format!("echo {i} >> /root/cycles")).await;
        mgr.pause_vm(&id).await.unwrap();
        mgr.resume_vm(&id).await.unwrap();
    }
    let expected: String = (0..20).map(|i| format!("{i}\n")).collect();
    assert_eq!(sh(&mgr, &id, "cat /root/cycles").await, expected);

    // Snapshot, then change the original.
    sh(&mgr, &id, "echo before > /root/state; sync").await;
    let t = Instant::now();
    let snap = mgr
        .snapshot_vm(&id, "base/../odd name", None)
        .await
        .unwrap();
    eprintln!("snapshot took {:?}", t.elapsed());
    assert_eq!(snap.name, "base/../odd name", "names are labels");
    assert_eq!(
        mgr.get_vm(&id).unwrap().status,
        VmStatus::Running,
        "a running VM resumes after a snapshot"
    );
    sh(&mgr, &id, "echo after > /root/state").await;

    // Renaming the snapshot never breaks restore.
    mgr.update_snapshot(
        &snap.id,
        Some("renamed"),
        Some(&serde_json::json!({"k": 1})),
    )
    .unwrap();

    // Five concurrent clones: each sees the pre-snapshot state and the counter process.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mgr = Arc::clone(&mgr);
        let sid = snap.id.clone();
        tasks.push(tokio::spawn(async move {
            let opts = RestoreOptions {
                name: Some(format!("clone-{i}")),
                ..Default::default()
            };
            let vm = mgr.restore_snapshot(&sid, opts).await.unwrap();
            let state = sh(&mgr, &vm.id, "cat /root/state").await;
            (vm.id, state)
        }));
    }
    let mut clones = Vec::new();
    for t in tasks {
        let (cid, state) = t.await.unwrap();
        assert_eq!(state, "before\n");
        clones.push(cid);
    }
    eprintln!("5 concurrent restores to first exec: {:?}", t.elapsed());
    for cid in &clones {
        let c0 = counter(&mgr, cid).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            counter(&mgr, cid).await > c0,
            "the counter process did not survive the restore"
        );
        // The guest clock follows the host's after a restore.
        let guest: f64 = sh(&mgr, cid, "date +%s").await.trim().parse().unwrap();
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (guest - host).abs() < 3.0,
            "guest clock {guest} vs host {host}"
        );
        assert_eq!(
            mgr.get_vm(cid).unwrap().restored_from.as_deref(),
            Some(snap.id.as_str())
        );
    }
    // Each clone got its own entropy: their RNG outputs differ.
    let mut randoms = std::collections::BTreeSet::new();
    for cid in &clones {
        randoms.insert(sh(&mgr, cid, "head -c 16 /dev/urandom | od -An -tx1").await);
    }
    assert_eq!(randoms.len(), clones.len(), "clones share RNG output");

    // The original kept its own change.
    assert_eq!(sh(&mgr, &id, "cat /root/state").await, "after\n");

    // Deleting the snapshot does not affect its clones.
    mgr.delete_snapshot(&snap.id).unwrap();
    assert!(matches!(
        mgr.get_snapshot(&snap.id),
        Err(CoreError::NotFound { .. })
    ));
    assert_eq!(sh(&mgr, &clones[0], "cat /root/state").await, "before\n");
    for cid in &clones {
        mgr.delete_vm(cid).await.unwrap();
        assert_vm_gone(ts.root(), cid);
    }

    // Stop keeps the disk; start boots it again with the file.
    mgr.stop_vm(&id).await.unwrap();
    assert!(matches!(
        mgr.snapshot_vm(&id, "x", None).await,
        Err(CoreError::Conflict(_))
    ));
    let started = mgr.start_vm(&id).await.unwrap();
    assert_eq!(started.status, VmStatus::Running);
    assert_eq!(sh(&mgr, &id, "cat /root/state").await, "after\n");
    let restarted = mgr.restart_vm(&id).await.unwrap();
    assert_eq!(restarted.status, VmStatus::Running);
    assert_eq!(sh(&mgr, &id, "cat /root/cycles | wc -l").await.trim(), "20");

    // A timeout with action delete removes the VM and its files.
    mgr.set_timeout(&id, 1, Some(TimeoutAction::Delete))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while mgr.get_vm(&id).is_ok() {
        assert!(Instant::now() < deadline, "timeout did not fire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_vm_gone(ts.root(), &id);
    assert_storage_clean(ts.root());
    assert!(std::fs::read_dir(ts.root().join("snapshots"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_bad_input() {
    let ts = fresh_storage();
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let err = mgr
        .restore_snapshot("no-such-snap", RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found");
    let err = mgr
        .restore_snapshot("../../etc", RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found");
    assert!(mgr.list_vms().unwrap().is_empty());

    let vm = mgr
        .create_vm(CreateVm::new("bandsox/busybox"))
        .await
        .unwrap();
    for bad in ["a\0b".to_string(), "x".repeat(10_000), String::new()] {
        assert_eq!(
            mgr.snapshot_vm(&vm.id, &bad, None)
                .await
                .unwrap_err()
                .code(),
            "invalid_input"
        );
        assert_eq!(
            mgr.update_vm(&vm.id, Some(&bad), None).unwrap_err().code(),
            "invalid_input"
        );
    }
    assert_eq!(
        mgr.update_vm(&vm.id, Some("../x/y"), None).unwrap().name,
        "../x/y"
    );
    assert_eq!(
        mgr.extend_timeout(&vm.id, 86_401).unwrap_err().code(),
        "invalid_input"
    );
    assert_eq!(
        mgr.extend_timeout(&vm.id, 0).unwrap_err().code(),
        "invalid_input"
    );
    // A VM without a timeout has nothing to extend (set one first).
    assert_eq!(
        mgr.extend_timeout(&vm.id, 60).unwrap_err().code(),
        "conflict"
    );
    let t = mgr
        .set_timeout(&vm.id, 3600, None)
        .unwrap()
        .expires_at
        .unwrap();
    let t2 = mgr.extend_timeout(&vm.id, 60).unwrap().expires_at.unwrap();
    assert!((t2 - t - 60.0).abs() < 1.0);
    assert!(mgr.list_snapshots().unwrap().is_empty());

    // A corrupt snapshot: restore fails cleanly and leaves no VM behind.
    let snap = mgr.snapshot_vm(&vm.id, "to-corrupt", None).await.unwrap();
    let state = ts.root().join("snapshots").join(&snap.id).join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let before = mgr.list_vms().unwrap().len();
    assert!(mgr
        .restore_snapshot(&snap.id, RestoreOptions::default())
        .await
        .is_err());
    assert_eq!(mgr.list_vms().unwrap().len(), before);
    std::fs::remove_file(&state).unwrap();
    let err = mgr
        .restore_snapshot(&snap.id, RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "conflict", "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    mgr.delete_snapshot(&snap.id).unwrap();

    mgr.delete_vm(&vm.id).await.unwrap();
    assert_storage_clean(ts.root());
}
