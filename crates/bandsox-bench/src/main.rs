//! `bandsox-bench`: the programs behind `bench/*`. Each prints a table of medians measured
//! side by side in one run: ours next to the raw floor, with the ratio.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bandsox_core::{CreateVm, Manager, ManagerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

mod agent;
mod api;
mod create;
mod lifecycle;
mod net;
mod util;

use util::{median, row};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>())
        .transpose()
        .context("--runs takes a number")?
        .unwrap_or(7);
    match args.first().map(String::as_str) {
        Some("boot") => boot(runs.max(5)).await,
        Some("create") => {
            create::run(runs.max(3), args.iter().any(|a| a == "--templates-only")).await
        }
        Some("lifecycle") => {
            lifecycle::run(runs.max(5), args.iter().any(|a| a == "--fork-only")).await
        }
        Some("agent") => agent::run().await,
        Some("api") => api::run(runs.max(200)).await,
        Some("net") => net::run(runs.max(20)).await,
        _ => bail!("usage: bandsox-bench boot|create|lifecycle|agent|api|net [--runs N]"),
    }
}

/// Cold boot to agent-ready (through the real create path) next to a bare QEMU boot of the
/// same kernel to a trivial init, alternating A B A B.
async fn boot(runs: usize) -> Result<()> {
    util::in_scratch("boot", |work| async move { boot_in(&work, runs).await }).await
}

async fn boot_in(work: &Path, runs: usize) -> Result<()> {
    let storage = util::prepare_storage(work)?;
    let floor_initrd = work.join("floor-initrd.cpio");
    write_floor_initramfs(&floor_initrd)?;
    let (vmlinux, _) = bandsox_image::assets::kernel_paths(storage.root())?;
    let mgr = Manager::open(ManagerConfig::new(storage.clone())).await?;
    let (backend, accel) = mgr.backend();

    let mut ours = Vec::new();
    let mut floor = Vec::new();
    for i in 0..runs + 1 {
        let t = Instant::now();
        let vm = mgr
            .create_vm(CreateVm {
                template: Some(false),
                ..CreateVm::new("bandsox/busybox")
            })
            .await?;
        let a = t.elapsed();
        mgr.delete_vm(&vm.id).await?;
        let b = floor_boot(&vmlinux, &floor_initrd, work).await?;
        if i > 0 {
            // The first pair warms the page cache.
            ours.push(a);
            floor.push(b);
        }
        eprintln!(
            "run {i}: ours {:.3} s, floor {:.3} s",
            a.as_secs_f64(),
            b.as_secs_f64()
        );
    }
    let (mo, mf) = (median(&mut ours), median(&mut floor));
    println!("bench/boot  backend={backend} accel={accel} runs={runs} (median; min..max)");
    println!("| measurement | median s | min s | max s |");
    println!("| --- | --- | --- | --- |");
    row("bandsox create -> agent ready", mo, &ours);
    row("floor: qemu -kernel -initrd, trivial init", mf, &floor);
    println!(
        "ratio ours/floor: {:.2}x (goal <= 1.20x)",
        mo.as_secs_f64() / mf.as_secs_f64()
    );
    Ok(())
}

/// An initramfs whose `/init` prints a marker on the console and powers off.
fn write_floor_initramfs(path: &Path) -> Result<()> {
    let busybox = std::fs::read("/bin/busybox").context("read /bin/busybox (busybox-static)")?;
    let mut w = bandsox_image::cpio::CpioWriter::new(std::fs::File::create(path)?);
    w.dir("bin", 0o755)?;
    w.dir("dev", 0o755)?;
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, &busybox)?;
    w.file(
        "init",
        0o755,
        b"#!/bin/busybox sh\necho FLOOR-USERSPACE-READY > /dev/console\n/bin/busybox poweroff -f\n",
    )?;
    w.finish()?;
    Ok(())
}

/// QEMU start to the marker line, same machine type, accelerator and memory as our VMs.
async fn floor_boot(vmlinux: &Path, initrd: &Path, work: &Path) -> Result<Duration> {
    let accel = bandsox_vmm::qemu::Accel::detect();
    let mut append = String::from("console=ttyS0 quiet panic=-1");
    if accel == bandsox_vmm::qemu::Accel::Tcg {
        if let Some(khz) = bandsox_vmm::qemu::host_tsc_khz() {
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
        append.push_str(" tsc=reliable");
    }
    let (accel_arg, cpu) = match accel {
        bandsox_vmm::qemu::Accel::Tcg => ("tcg,tb-size=32", "max"),
        bandsox_vmm::qemu::Accel::Kvm => ("kvm", "host"),
    };
    let t = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=on",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-monitor", "none", "-accel", accel_arg, "-cpu", cpu, "-m", "128M", "-smp", "1",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("FLOOR-USERSPACE-READY") {
                return Ok::<_, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    let elapsed = t.elapsed();
    let _ = child.kill().await;
    match found {
        Ok(Ok(true)) => Ok(elapsed),
        _ => bail!("the floor VM never printed its marker"),
    }
}
