//! `bandsox init`.

use std::path::PathBuf;
use std::process::ExitCode;

use bandsox_core::init::{initialise, InitRequest};
use bandsox_image::assets::KernelSource;
use clap::Args;

use super::{core_error, storage};
use crate::client::CliError;
use crate::CliResult;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Storage root [env: BANDSOX_STORAGE] [default: /var/lib/bandsox].
    #[arg(long)]
    storage: Option<PathBuf>,
    /// A Firecracker-compatible ELF vmlinux to boot instead of Debian's kernel.
    #[arg(long, conflicts_with = "kernel_deb")]
    kernel: Option<PathBuf>,
    /// Debian `linux-image-*-cloud-amd64` package [default: newest in /var/cache/bandsox].
    #[arg(long)]
    kernel_deb: Option<PathBuf>,
    /// Static guest agent binary [default: `bandsox-agent` next to this binary].
    #[arg(long, env = "BANDSOX_AGENT_BIN")]
    agent: Option<PathBuf>,
    /// Static busybox for the default image `bandsox/busybox`.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Skip building the default image.
    #[arg(long)]
    no_default_image: bool,
    /// Rebuild everything even if it is current.
    #[arg(long)]
    force: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InitArgs) -> CliResult {
    let storage = storage(a.storage)?;
    let agent_bin = match a.agent {
        Some(p) => p,
        None => find_agent()?,
    };
    let kernel = match (a.kernel, a.kernel_deb) {
        (Some(k), _) => Some(KernelSource::Vmlinux(k)),
        (None, Some(d)) => Some(KernelSource::Deb(d)),
        (None, None) => None,
    };
    let outcome = initialise(&InitRequest {
        storage: storage.clone(),
        kernel,
        agent_bin,
        busybox: (!a.no_default_image).then_some(a.busybox),
        force: a.force,
    })
    .map_err(core_error)?;
    let k = &outcome.kernel;
    if a.json {
        let v = serde_json::json!({
            "storage": storage.root(),
            "kernel_version": k.kernel_version,
            "vmlinux": k.vmlinux,
            "initramfs": k.initramfs,
            "modules": k.modules,
            "kernel_changed": k.changed,
            "default_image": outcome.default_image.as_ref().map(|(img, built)| serde_json::json!({
                "reference": img.reference, "digest": img.digest, "built": built,
            })),
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("storage     {}", storage.root().display());
    if k.changed {
        println!(
            "kernel      {} -> {}",
            k.kernel_version,
            k.vmlinux.display()
        );
        println!(
            "initramfs   {} ({} modules)",
            k.initramfs.display(),
            k.modules.len()
        );
    } else {
        println!("kernel      {} (already current)", k.kernel_version);
    }
    match &outcome.default_image {
        Some((img, true)) => println!("image       {} built ({})", img.reference, img.digest),
        Some((img, false)) => println!("image       {} (already present)", img.reference),
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `bandsox-agent` next to this executable, or in cargo's static-target output directory.
fn find_agent() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(format!("cannot locate this binary: {e}")))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("bandsox-agent"),
        dir.join("../x86_64-unknown-linux-gnu/release/bandsox-agent"),
        dir.join("../../x86_64-unknown-linux-gnu/release/bandsox-agent"),
    ];
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        CliError::new("the static guest agent `bandsox-agent` was not found next to this binary")
            .with_hint(
                "pass --agent PATH or set BANDSOX_AGENT_BIN (scripts/setup builds and installs it)",
            )
    })
}
