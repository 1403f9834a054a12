//! Templates with real VMs: a cold create builds the template in the background, the next
//! create of that image and shape is a restore, every clone is its own machine, a shape that
//! does not match never gets a template VM, and a stale template is never used.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bandsox_core::TemplateRecord;
use bandsox_core::{CreateVm, Manager, ManagerConfig};
use bandsox_protocol::ExecRequest;
use common::{assert_storage_clean, fresh_storage};

async fn wait_for(mgr: &Manager, done: impl Fn(&[TemplateRecord]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ts = mgr.list_templates().unwrap();
        if done(&ts) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "templates never became as expected: {ts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn req(name: &str) -> CreateVm {
    CreateVm {
        name: Some(name.into()),
        enable_networking: false,
        ..CreateVm::new("bandsox/busybox")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_clones_are_fast_and_each_its_own_machine() {
    let ts = fresh_storage();
    let mut config = ManagerConfig::new(ts.storage.clone());
    config.auto_template = true;
    let mgr = Manager::open(config).await.unwrap();

    // Cold create; the template is built behind it.
    let t0 = Instant::now();
    let cold = mgr.create_vm(req("cold")).await.unwrap();
    sh(&mgr, &cold.id, "true").await;
    let cold_s = t0.elapsed().as_secs_f64();
    assert_eq!(cold.restored_from, None);
    wait_for(&mgr, |ts| !ts.is_empty()).await;
    let templates = mgr.list_templates().unwrap();
    assert_eq!(templates.len(), 1);
    let t = &templates[0];
    assert!(mgr.template_is_current(t));
    assert_eq!((t.vcpu, t.mem_mib, t.enable_networking), (1, 128, false));

    // Old template: the clone's clock must still be the host's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut clones = Vec::new();
    let mut clone_s = Vec::new();
    for name in ["clone-a", "clone-b"] {
        let t0 = Instant::now();
        let vm = mgr.create_vm(req(name)).await.unwrap();
        sh(&mgr, &vm.id, "true").await;
        clone_s.push(t0.elapsed().as_secs_f64());
        assert_eq!(vm.restored_from, Some(format!("template:{}", t.id)));
        clones.push(vm);
    }
    eprintln!(
        "cold create -> first exec {cold_s:.3} s; template create -> first exec {clone_s:?} s"
    );
    let (a, b) = (&clones[0].id, &clones[1].id);
    let probe = "cat /etc/machine-id; hostname; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";
    let pa: Vec<String> = sh(&mgr, a, probe)
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    let pb: Vec<String> = sh(&mgr, b, probe)
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(pa.len(), 4, "{pa:?}");
    assert_ne!(pa[0], pb[0], "machine ids");
    assert_eq!(pa[0].len(), 32);
    assert_eq!((pa[1].as_str(), pb[1].as_str()), ("clone-a", "clone-b"));
    assert_ne!(pa[2], pb[2], "16 bytes of /dev/urandom");
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for p in [&pa, &pb] {
        let guest: i64 = p[3].parse().unwrap();
        assert!(
            (guest - host).abs() <= 2,
            "guest clock {guest} vs host {host}"
        );
    }

    // Disks are the clones' own.
    sh(&mgr, a, "echo only-a > /root-a.txt; sync").await;
    sh(&mgr, b, "test ! -e /root-a.txt").await;
    let c = mgr.create_vm(req("clone-c")).await.unwrap();
    assert!(c.restored_from.is_some());
    sh(&mgr, &c.id, "test ! -e /root-a.txt").await;

    // Another shape never gets this template (it cold boots and gets its own), nor does a
    // VM that opts out (which builds nothing either).
    let opted_out = mgr
        .create_vm(CreateVm {
            template: Some(false),
            ..req("opted-out")
        })
        .await
        .unwrap();
    assert_eq!(opted_out.restored_from, None);
    let other = mgr
        .create_vm(CreateVm {
            mem_mib: 192,
            ..req("other-shape")
        })
        .await
        .unwrap();
    assert_eq!(other.restored_from, None);
    wait_for(&mgr, |ts| ts.len() == 2).await;
    let other_t = mgr
        .list_templates()
        .unwrap()
        .into_iter()
        .find(|x| x.mem_mib == 192)
        .expect("a template of the other shape");

    // A new initramfs (a new agent) makes both stale: never used, rebuilt on the next
    // create, and the superseded template of that shape is removed.
    let (_, initramfs) = bandsox_image::assets::kernel_paths(ts.root()).unwrap();
    let bytes = std::fs::read(&initramfs).unwrap();
    std::fs::remove_file(&initramfs).unwrap();
    std::fs::write(&initramfs, bytes).unwrap();
    assert!(!mgr.template_is_current(&mgr.get_template(&t.id).unwrap()));
    let after = mgr.create_vm(req("after-init")).await.unwrap();
    assert_eq!(after.restored_from, None);
    wait_for(&mgr, |ts| {
        ts.len() == 1 && ts[0].id != t.id && ts[0].id != other_t.id
    })
    .await;
    let fresh = mgr.create_vm(req("after-rebuild")).await.unwrap();
    assert!(fresh.restored_from.is_some());
    sh(&mgr, &fresh.id, "true").await;

    for vm in mgr.list_vms().unwrap() {
        mgr.delete_vm(&vm.id).await.unwrap();
    }
    for t in mgr.list_templates().unwrap() {
        mgr.delete_template(&t.id).unwrap();
    }
    assert!(mgr.list_templates().unwrap().is_empty());
    drop(mgr);
    assert_storage_clean(ts.root());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_keeps_processes_and_files_and_the_source_runs_on() {
    let ts = fresh_storage();
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let src = mgr
        .create_vm(CreateVm {
            mem_mib: 256,
            template: Some(false),
            ..req("src")
        })
        .await
        .unwrap();
    sh(
        &mgr,
        &src.id,
        "echo before-fork > /tmp/f; setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done' >/dev/null 2>&1 &",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(mgr.fork_vm(&src.id, 0, None).await.is_err());
    assert!(mgr
        .fork_vm(&src.id, 2, Some(vec!["only-one".into()]))
        .await
        .is_err());
    let t0 = Instant::now();
    let clones = mgr
        .fork_vm(&src.id, 2, Some(vec!["fork-a".into(), "fork-b".into()]))
        .await
        .unwrap();
    eprintln!("fork x2 -> running in {:.3} s", t0.elapsed().as_secs_f64());
    assert_eq!(clones.len(), 2);
    assert!(
        mgr.list_snapshots().unwrap().is_empty(),
        "the fork's snapshot is removed"
    );
    let mut ids = Vec::new();
    for (vm, name) in clones.iter().zip(["fork-a", "fork-b"]) {
        assert_eq!(sh(&mgr, &vm.id, "cat /tmp/f").await, "before-fork");
        assert_eq!(sh(&mgr, &vm.id, "hostname").await, name);
        let a: u64 = sh(&mgr, &vm.id, "cat /tmp/counter").await.parse().unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let b: u64 = sh(&mgr, &vm.id, "cat /tmp/counter").await.parse().unwrap();
        assert!(b > a, "the background loop runs on in {name}: {a} -> {b}");
        ids.push(sh(&mgr, &vm.id, "cat /etc/machine-id").await);
    }
    assert_ne!(ids[0], ids[1]);
    // The source runs on and its later writes stay its own.
    sh(&mgr, &src.id, "echo after-fork > /tmp/f").await;
    assert_eq!(sh(&mgr, &clones[0].id, "cat /tmp/f").await, "before-fork");
    assert_eq!(
        mgr.get_vm(&src.id).unwrap().status,
        bandsox_core::VmStatus::Running
    );

    for vm in mgr.list_vms().unwrap() {
        mgr.delete_vm(&vm.id).await.unwrap();
    }
    drop(mgr);
    assert_storage_clean(ts.root());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_is_claimed_refilled_and_drained() {
    use bandsox_core::{PoolSpec, TemplateShape};
    let ts = fresh_storage();
    let mut config = ManagerConfig::new(ts.storage.clone());
    config.warm_pools = vec![PoolSpec {
        image: "bandsox/busybox".into(),
        shape: TemplateShape {
            vcpu: 1,
            mem_mib: 128,
            disk_size_mib: 4096,
            enable_networking: false,
        },
        size: 1,
    }];
    let mgr = Manager::open(config).await.unwrap();
    let ready = |mgr: &Manager| mgr.pools().unwrap()[0].ready;
    let wait_ready = |mgr: std::sync::Arc<Manager>| async move {
        let deadline = Instant::now() + Duration::from_secs(240);
        while ready(&mgr) < 1 {
            assert!(Instant::now() < deadline, "the pool never filled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // The template is built, then one VM restored and paused; it is no user VM.
    wait_ready(mgr.clone()).await;
    assert!(mgr.list_vms().unwrap().is_empty());
    let pooled = mgr.store().list_pool_vms().unwrap();
    assert_eq!(pooled.len(), 1);
    assert_eq!(pooled[0].0.status, bandsox_core::VmStatus::Paused);
    assert!(mgr.get_vm(&pooled[0].0.id).is_err(), "found by id");

    // A create of that image and shape takes it.
    let t0 = Instant::now();
    let vm = mgr.create_vm(req("claimed")).await.unwrap();
    assert_eq!(sh(&mgr, &vm.id, "hostname").await, "claimed");
    let claim_s = t0.elapsed().as_secs_f64();
    assert_eq!(vm.id, pooled[0].0.id, "the pool VM was claimed");
    assert_eq!(vm.name, "claimed");
    assert_eq!(mgr.list_vms().unwrap().len(), 1);

    // Refilled behind it; the next claim is another machine.
    wait_ready(mgr.clone()).await;
    let refill = mgr.store().list_pool_vms().unwrap();
    assert_eq!(refill.len(), 1);
    assert_ne!(refill[0].0.id, vm.id);
    let vm2 = mgr.create_vm(req("claimed-2")).await.unwrap();
    assert_eq!(vm2.id, refill[0].0.id);
    let probe = "cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    assert_ne!(
        sh(&mgr, &vm.id, probe).await,
        sh(&mgr, &vm2.id, probe).await
    );
    eprintln!("warm-pool create -> first exec {claim_s:.3} s");

    // Another shape never takes a pool VM.
    let other = mgr
        .create_vm(CreateVm {
            mem_mib: 192,
            ..req("other")
        })
        .await
        .unwrap();
    assert_eq!(other.restored_from, None);

    // Drained: no pool VM, VMM or file is left; user VMs are untouched.
    wait_ready(mgr.clone()).await;
    mgr.drain_pools().await;
    assert!(mgr.store().list_pool_vms().unwrap().is_empty());
    assert_eq!(mgr.list_vms().unwrap().len(), 3);
    for vm in mgr.list_vms().unwrap() {
        mgr.delete_vm(&vm.id).await.unwrap();
    }
    drop(mgr);
    assert_storage_clean(ts.root());
}
