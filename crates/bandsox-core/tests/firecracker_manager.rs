//! The manager on the Firecracker backend, end to end without Firecracker: the fake
//! Firecracker and jailer of bandsox-vmm's contract tests (every API request validated against
//! the spec), with the hybrid vsock stream spliced to a host-run agent
//! (`bandsox-agent --listen-unix`). Create, exec, pause, resume and delete go through
//! `VmHandle::connect_agent`; nothing is left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;
#[path = "../../bandsox-vmm/tests/common/mod.rs"]
mod fc;

use std::sync::Arc;

use bandsox_core::{CreateVm, Manager, ManagerConfig, VmStatus};
use bandsox_protocol::ExecRequest;
use bandsox_vmm::firecracker::{FirecrackerConfig, FirecrackerDriver};
use common::{assert_storage_clean, fresh_storage};

struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_runs_a_vm_on_the_firecracker_backend() {
    let ts = fresh_storage();
    let scratch = tempfile::Builder::new()
        .prefix("fcm")
        .tempdir_in("/tmp")
        .unwrap();
    let agent_sock = scratch.path().join("agent.sock");
    let _agent = Agent(
        std::process::Command::new(common::agent_bin())
            .arg("--listen-unix")
            .arg(&agent_sock)
            .spawn()
            .unwrap(),
    );
    // This test binary is also the fake `firecracker` and `jailer` (see fake_fc.rs).
    let agent = agent_sock.display().to_string();
    let fakes = fc::fake_fc::install(
        scratch.path(),
        &fc::fake_fc::FakeOptions {
            agent: &agent,
            ..Default::default()
        },
    );
    let log = fakes.requests.clone();
    let mut config = FirecrackerConfig::new(
        fakes.firecracker.clone(),
        Some(fakes.jailer.clone()),
        ts.root().join("jail"),
    );
    config.cgroup_mounts = fakes.mounts.clone();
    let driver = Arc::new(FirecrackerDriver::new(config));
    let mgr = Manager::with_driver(ManagerConfig::new(ts.storage.clone()), driver)
        .await
        .unwrap();
    assert_eq!(mgr.backend(), ("firecracker", "kvm"));

    let vm = mgr
        .create_vm(CreateVm::new("bandsox/busybox"))
        .await
        .unwrap();
    assert_eq!(vm.status, VmStatus::Running);
    assert_eq!(vm.vmm, "firecracker");
    let jail = ts.root().join("jail/firecracker").join(&vm.id).join("root");
    assert!(jail.join("api.sock").exists() && jail.join("v.sock").exists());

    let out = mgr
        .exec(
            &vm.id,
            ExecRequest {
                command: Some("echo through-vsock".into()),
                timeout_ms: Some(10_000),
                ..Default::default()
            },
            None,
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(out.status.exit_code, Some(0));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "through-vsock\n");

    assert_eq!(mgr.pause_vm(&vm.id).await.unwrap().status, VmStatus::Paused);
    assert_eq!(
        mgr.resume_vm(&vm.id).await.unwrap().status,
        VmStatus::Running
    );

    // A snapshot holds Firecracker's state file and the guest memory next to it.
    let snap = mgr.snapshot_vm(&vm.id, "s", None).await.unwrap();
    let snap_dir = ts.root().join("snapshots").join(&snap.id);
    assert!(snap_dir.join("state").is_file(), "{snap_dir:?}");
    assert_eq!(
        std::fs::metadata(snap_dir.join("state.mem")).unwrap().len(),
        u64::from(vm.mem_mib) << 20
    );
    assert_eq!(mgr.get_vm(&vm.id).unwrap().status, VmStatus::Running);
    // Snapshots are backend-specific: one without Firecracker's memory file is refused.
    std::fs::remove_file(snap_dir.join("state.mem")).unwrap();
    let err = mgr
        .restore_snapshot(&snap.id, Default::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("was taken under qemu; this server runs firecracker"),
        "{err}"
    );
    mgr.delete_snapshot(&snap.id).unwrap();

    let pid = mgr.get_vm(&vm.id).unwrap().pid.unwrap();
    mgr.delete_vm(&vm.id).await.unwrap();
    assert!(
        !bandsox_vmm::process_alive(pid),
        "VMM {pid} survived delete"
    );
    assert!(!ts.root().join("jail/firecracker").join(&vm.id).exists());
    assert_storage_clean(ts.root());

    // Every request the manager caused was valid under the API spec.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"/actions\""), "{text}");
    for line in text.lines() {
        assert!(!line.contains("contract violation"), "{line}");
        assert!(!line.contains("\"status\":400"), "{line}");
    }
}
