//! Real VMs under QEMU (TCG on these machines): boot, exec, stop, delete, and failure paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bandsox_core::{CoreError, CreateVm, Manager, ManagerConfig, VmStatus};
use bandsox_protocol::ExecRequest;
use common::{assert_storage_clean, assert_vm_gone, fresh_storage};

const CAP: usize = 1 << 20;

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        timeout_ms: Some(30_000),
        ..Default::default()
    }
}

async fn run(mgr: &Manager, id: &str, cmd: &str) -> (Option<i32>, String, String) {
    let out = mgr.exec(id, sh(cmd), None, CAP).await.unwrap();
    (
        out.status.exit_code,
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_vm_boots_runs_commands_stops_and_is_deleted_without_leaks() {
    let ts = fresh_storage();
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let mut req = CreateVm::new("bandsox/busybox");
    req.env_vars = BTreeMap::from([("VM_LEVEL".into(), "from-vm".into())]);
    let vm = mgr.create_vm(req).await.unwrap();
    assert_eq!(vm.status, VmStatus::Running);
    let id = vm.id.clone();

    // The guest kernel is Debian's 6.1 cloud kernel.
    let (code, out, _) = run(&mgr, &id, "uname -a").await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains(" 6.1.") && out.contains("cloud-amd64"),
        "uname: {out}"
    );

    // Exit codes, stdout and stderr are kept apart.
    assert_eq!(
        run(&mgr, &id, "echo hi; exit 3").await,
        (Some(3), "hi\n".into(), String::new())
    );
    assert_eq!(
        run(&mgr, &id, "echo oops >&2").await,
        (Some(0), String::new(), "oops\n".into())
    );

    // Environment: VM-level plus per-command; cwd.
    let mut r = sh("echo $VM_LEVEL $PER_CMD; pwd");
    r.env = BTreeMap::from([("PER_CMD".into(), "from-cmd".into())]);
    r.cwd = Some("/etc".into());
    let out = mgr.exec(&id, r, None, CAP).await.unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "from-vm from-cmd\n/etc\n"
    );

    // A missing cwd is an error and runs nothing.
    let mut r = sh("touch /should-not-exist");
    r.cwd = Some("/no/such/dir".into());
    assert!(matches!(
        mgr.exec(&id, r, None, CAP).await,
        Err(CoreError::Guest(_))
    ));
    assert_eq!(run(&mgr, &id, "test -e /should-not-exist").await.0, Some(1));

    // argv runs without a shell; stdin bytes arrive intact, including every byte value.
    let argv = ExecRequest {
        argv: Some(vec!["/bin/echo".into(), "a  b".into(), "$HOME".into()]),
        ..Default::default()
    };
    let out = mgr.exec(&id, argv, None, CAP).await.unwrap();
    assert_eq!(out.stdout, b"a  b $HOME\n");
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = mgr
        .exec(&id, sh("cat"), Some(all_bytes.clone()), 1 << 20)
        .await
        .unwrap();
    assert_eq!(out.stdout, all_bytes);

    // Output beyond the cap is counted, not silently dropped, and does not stall the guest.
    let out = mgr
        .exec(&id, sh("head -c 3000000 /dev/zero"), None, 1000)
        .await
        .unwrap();
    assert_eq!((out.stdout.len(), out.stdout_dropped), (1000, 2_999_000));

    // The image is busybox only: no bash, no python.
    assert_eq!(
        run(&mgr, &id, "command -v bash python3 || echo none")
            .await
            .1,
        "none\n"
    );

    // The writable layer works on top of the read-only image.
    assert_eq!(
        run(&mgr, &id, "echo data > /root/f && cat /root/f").await.1,
        "data\n"
    );

    // A timeout kills the whole process group, background children included.
    let mut r = sh("sleep 1000 & sleep 1000");
    r.timeout_ms = Some(1000);
    let t = Instant::now();
    let out = mgr.exec(&id, r, None, CAP).await.unwrap();
    assert!(out.status.timed_out, "{:?}", out.status);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        run(&mgr, &id, "ps | grep '[s]leep 1000' || echo none")
            .await
            .1,
        "none\n"
    );

    // 16 commands at once over the one channel.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mgr = Arc::clone(&mgr);
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            run(&mgr, &id, &format!("echo {i}")).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().1, format!("{i}\n"));
    }

    // Pause freezes the guest (exec is refused, pausing twice is a no-op); resume continues.
    assert_eq!(mgr.pause_vm(&id).await.unwrap().status, VmStatus::Paused);
    assert_eq!(mgr.pause_vm(&id).await.unwrap().status, VmStatus::Paused);
    assert!(matches!(
        mgr.exec(&id, sh("true"), None, CAP).await,
        Err(CoreError::NotRunning {
            status: VmStatus::Paused,
            ..
        })
    ));
    assert_eq!(mgr.resume_vm(&id).await.unwrap().status, VmStatus::Running);
    assert_eq!(run(&mgr, &id, "echo back").await.1, "back\n");

    // Stop: the VM is stopped, its disk kept, exec refused with a conflict.
    let stopped = mgr.stop_vm(&id).await.unwrap();
    assert_eq!(stopped.status, VmStatus::Stopped);
    assert!(ts.root().join("vms").join(&id).join("disk.ext4").is_file());
    assert!(common::processes_mentioning(&ts.root().join("vms").join(&id)).is_empty());
    assert!(matches!(
        mgr.exec(&id, sh("true"), None, CAP).await,
        Err(CoreError::NotRunning {
            status: VmStatus::Stopped,
            ..
        })
    ));

    // Delete frees everything.
    mgr.delete_vm(&id).await.unwrap();
    assert_vm_gone(ts.root(), &id);
    assert!(matches!(mgr.get_vm(&id), Err(CoreError::NotFound { .. })));
    assert_storage_clean(ts.root());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_answers_fails_within_the_bound_and_leaves_nothing() {
    let ts = fresh_storage();
    // An initramfs whose /init is busybox's init: the kernel boots, but no agent ever answers.
    let initramfs = ts.root().join("kernels/initramfs.cpio");
    std::fs::remove_file(&initramfs).unwrap();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut w = bandsox_image::cpio::CpioWriter::new(std::fs::File::create(&initramfs).unwrap());
    w.dir("bin", 0o755).unwrap();
    w.file("bin/busybox", 0o755, &busybox).unwrap();
    w.symlink("init", "bin/busybox").unwrap();
    w.finish().unwrap();

    let mut cfg = ManagerConfig::new(ts.storage.clone());
    cfg.boot_timeout = Duration::from_secs(8);
    let mgr = Manager::open(cfg).await.unwrap();
    let t = Instant::now();
    let err = mgr
        .create_vm(CreateVm::new("bandsox/busybox"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::BootTimeout { .. }), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(mgr.list_vms().unwrap().is_empty());
    assert_storage_clean(ts.root());
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let ts = fresh_storage();
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    for (req, code) in [
        // Not cached: pulled on demand, and nothing answers on port 1.
        (
            CreateVm::new("localhost:1/no/such-image"),
            "registry_unreachable",
        ),
        (CreateVm::new("../../etc"), "invalid_input"),
        (
            CreateVm {
                vcpu: 0,
                ..CreateVm::new("bandsox/busybox")
            },
            "invalid_input",
        ),
        (
            CreateVm {
                mem_mib: 1,
                ..CreateVm::new("bandsox/busybox")
            },
            "invalid_input",
        ),
        (
            CreateVm {
                disk_size_mib: 1 << 19,
                ..CreateVm::new("bandsox/busybox")
            },
            "invalid_input",
        ),
    ] {
        let err = mgr.create_vm(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    for id in ["nope", "../etc", ""] {
        assert_eq!(
            mgr.exec(id, sh("true"), None, CAP)
                .await
                .unwrap_err()
                .code(),
            "vm_not_found"
        );
        assert_eq!(mgr.delete_vm(id).await.unwrap_err().code(), "vm_not_found");
    }
    assert!(mgr.list_vms().unwrap().is_empty());
    assert_storage_clean(ts.root());

    // Missing kernel assets: a clear error that names `bandsox init`.
    std::fs::remove_file(ts.root().join("kernels/vmlinux")).unwrap();
    let err = mgr
        .create_vm(CreateVm::new("bandsox/busybox"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_initialised");
    assert!(err.to_string().contains("bandsox init"), "{err}");
    assert!(mgr.list_vms().unwrap().is_empty());
}
