//! `bench/lifecycle`: cold boot -> first exec next to restore -> first exec (goal: restore
//! <= 0.15x cold boot), pause and resume latency, snapshot time for a 256 MiB and a 1 GiB
//! guest, and the wall time of 5 concurrent clones of one snapshot. When a Firecracker
//! binary is found, a Firecracker column follows, measured at the VMM API (spawn -> API
//! ready, configure + InstanceStart, snapshot create of a 256 MiB guest, load -> running):
//! the guest need not boot, so it also runs where KVM cannot run ordinary guests.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use bandsox_core::snapshots::RestoreOptions;
use bandsox_core::{CreateVm, Manager, ManagerConfig};
use bandsox_protocol::ExecRequest;

use crate::util::{median, row_ms as row};

pub async fn run(runs: usize, fork_only: bool) -> Result<()> {
    crate::util::in_scratch("lifecycle", |work| async move {
        let storage = crate::util::prepare_storage(&work)?;
        let mgr = Manager::open(ManagerConfig::new(storage.clone())).await?;
        if fork_only {
            let base = vm_with_mem(&mgr, 256).await?;
            first_exec(&mgr, &base).await?;
            let r = fork_five(&mgr, &base).await;
            mgr.delete_vm(&base).await?;
            print_fork(mgr.backend(), r?);
            return Ok(());
        }
        measure(&mgr, runs).await?;
        firecracker_api(&work, &storage, runs).await
    })
    .await
}

async fn first_exec(mgr: &Manager, id: &str) -> Result<()> {
    let req = ExecRequest {
        argv: Some(vec!["true".into()]),
        timeout_ms: Some(30_000),
        ..Default::default()
    };
    let out = mgr.exec(id, req, None, 1024).await?;
    anyhow::ensure!(
        out.status.exit_code == Some(0),
        "`true` failed: {:?}",
        out.status
    );
    Ok(())
}

async fn vm_with_mem(mgr: &Arc<Manager>, mem_mib: u32) -> Result<String> {
    let mut req = CreateVm::new("bandsox/busybox");
    // Cold boots: templates are measured by bench/create.
    req.template = Some(false);
    req.mem_mib = mem_mib;
    Ok(mgr.create_vm(req).await?.id)
}

async fn measure(mgr: &Arc<Manager>, runs: usize) -> Result<()> {
    let (backend, accel) = mgr.backend();
    // The VM that is snapshotted and restored; it dirties 64 MiB of page cache first so the
    // state file is not trivially small.
    let base = vm_with_mem(mgr, 256).await?;
    first_exec(mgr, &base).await?;
    let dirty = ExecRequest {
        command: Some("head -c 67108864 /dev/urandom > /dev/shm/dirty".into()),
        timeout_ms: Some(120_000),
        ..Default::default()
    };
    mgr.exec(&base, dirty, None, 1024).await?;
    let snap = mgr.snapshot_vm(&base, "bench", None).await?;

    let (mut cold, mut restore) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let vm = vm_with_mem(mgr, 256).await?;
        first_exec(mgr, &vm).await?;
        cold.push(t.elapsed());
        mgr.delete_vm(&vm).await?;

        let t = Instant::now();
        let vm = mgr
            .restore_snapshot(&snap.id, RestoreOptions::default())
            .await?;
        first_exec(mgr, &vm.id).await?;
        restore.push(t.elapsed());
        mgr.delete_vm(&vm.id).await?;
    }

    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        mgr.pause_vm(&base).await?;
        pause.push(t.elapsed());
        let t = Instant::now();
        mgr.resume_vm(&base).await?;
        resume.push(t.elapsed());
    }

    let mut snap_small = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let s = mgr.snapshot_vm(&base, "bench-256", None).await?;
        snap_small.push(t.elapsed());
        mgr.delete_snapshot(&s.id)?;
    }
    let big = vm_with_mem(mgr, 1024).await?;
    let fill = ExecRequest {
        command: Some("head -c 268435456 /dev/urandom > /dev/shm/dirty".into()),
        timeout_ms: Some(300_000),
        ..Default::default()
    };
    mgr.exec(&big, fill, None, 1024).await?;
    let mut snap_big = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let s = mgr.snapshot_vm(&big, "bench-1g", None).await?;
        snap_big.push(t.elapsed());
        mgr.delete_snapshot(&s.id)?;
    }
    mgr.delete_vm(&big).await?;

    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let mgr = Arc::clone(mgr);
        let sid = snap.id.clone();
        tasks.push(tokio::spawn(async move {
            let vm = mgr
                .restore_snapshot(&sid, RestoreOptions::default())
                .await?;
            first_exec(&mgr, &vm.id).await?;
            Ok::<_, anyhow::Error>(vm.id)
        }));
    }
    let mut clones = Vec::new();
    for task in tasks {
        clones.push(task.await??);
    }
    let five = t.elapsed();
    for c in clones {
        mgr.delete_vm(&c).await?;
    }
    mgr.delete_snapshot(&snap.id)?;
    let forked = fork_five(mgr, &base).await?;
    mgr.delete_vm(&base).await?;

    let (mc, mr) = (median(&mut cold), median(&mut restore));
    println!("bench/lifecycle  backend={backend} accel={accel} runs={runs} (busybox image)");
    println!("| measurement | median ms | min ms | max ms |");
    println!("| --- | --- | --- | --- |");
    row("cold boot -> first exec (256 MiB)", mc, &cold);
    row(
        "restore -> first exec (256 MiB, 64 MiB dirtied)",
        mr,
        &restore,
    );
    row("pause", median(&mut pause), &pause);
    row("resume", median(&mut resume), &resume);
    row(
        "snapshot, 256 MiB guest (64 MiB dirtied)",
        median(&mut snap_small),
        &snap_small,
    );
    row(
        "snapshot, 1 GiB guest (256 MiB dirtied)",
        median(&mut snap_big),
        &snap_big,
    );
    row(
        "5 concurrent clones -> first exec each (wall)",
        five,
        &[five],
    );
    println!(
        "ratio restore/cold: {:.2}x (goal <= 0.15x)",
        mr.as_secs_f64() / mc.as_secs_f64()
    );
    print_fork((backend, accel), forked);
    Ok(())
}

/// Fork x5 of the running VM `base` until all five answer exec, and the five clones' host
/// memory right after (VmRSS and PSS of each VMM process).
async fn fork_five(mgr: &Arc<Manager>, base: &str) -> Result<(std::time::Duration, u64, u64)> {
    let t = Instant::now();
    let clones = mgr.fork_vm(base, 5, None).await?;
    let mut tasks = Vec::new();
    for c in &clones {
        let (mgr, id) = (Arc::clone(mgr), c.id.clone());
        tasks.push(tokio::spawn(async move { first_exec(&mgr, &id).await }));
    }
    for task in tasks {
        task.await??;
    }
    let wall = t.elapsed();
    let (mut rss, mut pss) = (0, 0);
    for c in &clones {
        let pid = mgr.get_vm(&c.id)?.pid.unwrap_or(0);
        rss += kib_field(&format!("/proc/{pid}/status"), "VmRSS:");
        pss += kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
    }
    for c in clones {
        mgr.delete_vm(&c.id).await?;
    }
    Ok((wall, rss, pss))
}

fn kib_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn print_fork((backend, accel): (&str, &str), (wall, rss, pss): (std::time::Duration, u64, u64)) {
    println!("bench/lifecycle fork  backend={backend} accel={accel} (256 MiB busybox VM, running)");
    println!("| measurement | value |");
    println!("| --- | --- |");
    println!(
        "| fork x5 -> all five answer exec (wall, goal <= 1.5 s) | {:.3} s |",
        wall.as_secs_f64()
    );
    println!(
        "| host RSS of the 5 clones: total / per clone | {} / {} MiB |",
        rss / 1024,
        rss / 5 / 1024
    );
    println!(
        "| host PSS of the 5 clones: total / per clone | {} / {} MiB |",
        pss / 1024,
        pss / 5 / 1024
    );
}

/// The Firecracker column, at the VMM API level.
async fn firecracker_api(
    work: &std::path::Path,
    storage: &bandsox_core::Storage,
    runs: usize,
) -> Result<()> {
    use bandsox_vmm::firecracker::{find_firecracker, FirecrackerConfig, FirecrackerDriver};
    use bandsox_vmm::{Disk, VmHandle, VmSpec};

    if find_firecracker().is_none() {
        println!("firecracker: not available (set BANDSOX_FIRECRACKER_BIN or install it; see docs/firecracker.md)");
        return Ok(());
    }
    let driver = FirecrackerDriver::new(FirecrackerConfig::from_env(work.join("jail"))?);
    let (kernel, initramfs) = bandsox_image::assets::kernel_paths(storage.root())?;
    let spec = |id: String| -> Result<VmSpec> {
        let run_dir = work.join("fc").join(&id);
        std::fs::create_dir_all(&run_dir)?;
        let disk = run_dir.join("disk.img");
        std::fs::File::create(&disk)?.set_len(64 << 20)?;
        Ok(VmSpec {
            id,
            run_dir,
            vcpu: 1,
            mem_mib: 256,
            kernel: kernel.clone(),
            initramfs: initramfs.clone(),
            kernel_args: vec![],
            disks: vec![Disk {
                path: disk,
                read_only: false,
            }],
            network: None,
        })
    };
    let (mut ready, mut start, mut create, mut load) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let h = driver.spawn_handle(&spec(format!("fc-bench-{i}"))?).await?;
        ready.push(h.timings().api_ready);
        start.push(h.timings().configured);
        h.pause().await?;
        let state = work.join("fc").join(format!("state-{i}"));
        let t = Instant::now();
        h.save_state(&state).await?;
        create.push(t.elapsed());
        h.kill().await?;
        let r = driver
            .restore_handle(&spec(format!("fc-bench-r{i}"))?, &state)
            .await?;
        load.push(r.timings().configured);
        r.kill().await?;
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(bandsox_vmm::firecracker::mem_path(&state));
    }
    println!("bench/lifecycle  backend=firecracker (VMM API level) runs={runs}");
    println!("| measurement | median ms | min ms | max ms |");
    println!("| --- | --- | --- | --- |");
    row(
        "firecracker: spawn -> API ready",
        median(&mut ready),
        &ready,
    );
    row(
        "firecracker: configure + InstanceStart",
        median(&mut start),
        &start,
    );
    row(
        "firecracker: snapshot create, 256 MiB",
        median(&mut create),
        &create,
    );
    row("firecracker: load -> running", median(&mut load), &load);
    Ok(())
}
