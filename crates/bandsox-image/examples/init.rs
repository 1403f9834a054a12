//! Installs kernel assets the way `bandsox init` will:
//!
//! ```text
//! cargo run -p bandsox-image --example init -- --storage DIR (--deb PKG | --vmlinux FILE) --agent BIN [--force]
//! ```

use std::path::PathBuf;

use bandsox_image::assets::{install_kernel_assets, InitOptions, KernelSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut storage = None;
    let mut kernel = None;
    let mut agent = None;
    let mut force = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .map(PathBuf::from)
                .ok_or(format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--storage" => storage = Some(value()?),
            "--deb" => kernel = Some(KernelSource::Deb(value()?)),
            "--vmlinux" => kernel = Some(KernelSource::Vmlinux(value()?)),
            "--agent" => agent = Some(value()?),
            "--force" => force = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let opts = InitOptions {
        storage: storage.ok_or("--storage is required")?,
        kernel: kernel.ok_or("--deb or --vmlinux is required")?,
        agent_bin: agent.ok_or("--agent is required")?,
        force,
    };
    let started = std::time::Instant::now();
    let report = install_kernel_assets(&opts)?;
    println!(
        "kernel {} changed={} in {} ms\n  vmlinux   {}\n  initramfs {}\n  modules   {}",
        report.kernel_version,
        report.changed,
        started.elapsed().as_millis(),
        report.vmlinux.display(),
        report.initramfs.display(),
        report.modules.join(" ")
    );
    Ok(())
}
