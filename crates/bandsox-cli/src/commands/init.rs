//! `bandsox init`, with BandSox's flags too: `--kernel-url`/`--rootfs-url` (a local path,
//! `file://` or http(s); the SHA-256 of what was fetched is printed), `--skip-kernel`,
//! `--skip-rootfs`, `--force`; `--skip-cni`/`--cni-*` are accepted and explained (bandsox
//! needs no CNI plugins).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

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
    #[arg(long, conflicts_with_all = ["kernel_deb", "kernel_url", "skip_kernel"])]
    kernel: Option<PathBuf>,
    /// BandSox's: the vmlinux from a local path, file:// or http(s) URL (SHA-256 printed).
    #[arg(long, value_name = "URL", conflicts_with_all = ["kernel_deb", "skip_kernel"])]
    kernel_url: Option<String>,
    /// BandSox's: an ext4 root filesystem (local path, file:// or http(s) URL) imported as
    /// image `bandsox-base`.
    #[arg(long, value_name = "URL", conflicts_with = "skip_rootfs")]
    rootfs_url: Option<String>,
    /// Leave the kernel and initramfs as they are (VMs need them: run init without it once).
    #[arg(long)]
    skip_kernel: bool,
    /// Build no image (neither the default image nor `--rootfs-url`).
    #[arg(long)]
    skip_rootfs: bool,
    /// Accepted for BandSox scripts: bandsox needs no CNI plugins.
    #[arg(long)]
    skip_cni: bool,
    /// Accepted for BandSox scripts and ignored: bandsox needs no CNI plugins.
    #[arg(long, value_name = "URL")]
    cni_url: Option<String>,
    /// Accepted for BandSox scripts and ignored: bandsox needs no CNI plugins.
    #[arg(long, value_name = "DIR")]
    cni_dir: Option<PathBuf>,
    /// Accepted for BandSox scripts and ignored: the kernel goes into the storage root.
    #[arg(long, value_name = "PATH")]
    kernel_output: Option<PathBuf>,
    /// Accepted for BandSox scripts and ignored: images go into the storage root.
    #[arg(long, value_name = "PATH")]
    rootfs_output: Option<PathBuf>,
    /// Debian `linux-image-*-cloud-amd64` package [default: newest in /var/cache/bandsox].
    #[arg(long)]
    kernel_deb: Option<PathBuf>,
    /// Static guest agent binary [default: `bandsox-agent` next to this binary].
    #[arg(long, env = bandsox_config::AGENT_BIN)]
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
    if a.skip_cni || a.cni_url.is_some() || a.cni_dir.is_some() {
        eprintln!(
            "note: --skip-cni/--cni-url/--cni-dir are ignored: bandsox sets up VM networking \
             itself and needs no CNI plugins"
        );
    }
    if a.kernel_output.is_some() || a.rootfs_output.is_some() {
        eprintln!(
            "note: --kernel-output/--rootfs-output are ignored: everything goes into the \
             storage root {}",
            storage.root().display()
        );
    }
    // The agent goes into the initramfs: not needed when the kernel is skipped.
    let agent_bin = match a.agent {
        Some(p) => p,
        None if a.skip_kernel => PathBuf::new(),
        None => find_agent()?,
    };
    // Fetched files live in the storage root until init is done.
    let fetch_dir = storage.root().join(".init-fetch");
    let _cleanup = RemoveOnDrop(fetch_dir.clone());
    let mut fetched = Vec::new();
    let mut fetch = |what: &str, src: &str| -> Result<PathBuf, CliError> {
        let (path, sha) = fetch(src, &fetch_dir, what)?;
        fetched.push(serde_json::json!({"what": what, "source": src, "sha256": sha}));
        if !a.json {
            println!("{what:<11} {src} sha256:{sha}");
        }
        Ok(path)
    };
    let kernel = match (a.kernel, a.kernel_url, a.kernel_deb) {
        (Some(k), _, _) => Some(KernelSource::Vmlinux(k)),
        (None, Some(u), _) => Some(KernelSource::Vmlinux(fetch("kernel", &u)?)),
        (None, None, Some(d)) => Some(KernelSource::Deb(d)),
        (None, None, None) => None,
    };
    let rootfs = match &a.rootfs_url {
        Some(u) => Some(fetch("rootfs", u)?),
        None => None,
    };
    let outcome = initialise(&InitRequest {
        storage: storage.clone(),
        kernel,
        agent_bin,
        busybox: (!a.no_default_image && !a.skip_rootfs).then_some(a.busybox),
        skip_kernel: a.skip_kernel,
        rootfs,
        force: a.force,
    })
    .map_err(core_error)?;
    let image_json = |i: &Option<(bandsox_core::store::ImageRecord, bool)>| {
        i.as_ref().map(|(img, built)| {
            serde_json::json!({"reference": img.reference, "digest": img.digest, "built": built})
        })
    };
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        let k = outcome.kernel.as_ref();
        let v = serde_json::json!({
            "storage": storage.root(),
            "kernel_version": k.map(|k| &k.kernel_version),
            "vmlinux": k.map(|k| &k.vmlinux),
            "initramfs": k.map(|k| &k.initramfs),
            "modules": k.map(|k| &k.modules),
            "kernel_changed": k.map(|k| k.changed),
            "kernel_skipped": k.is_none(),
            "default_image": image_json(&outcome.default_image),
            "base_image": image_json(&outcome.base_image),
            "fetched": fetched,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("storage     {}", storage.root().display());
    let Some(k) = &outcome.kernel else {
        println!("kernel      skipped (--skip-kernel)");
        print_images(&outcome);
        return Ok(ExitCode::SUCCESS);
    };
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
    print_images(&outcome);
    Ok(ExitCode::SUCCESS)
}

fn print_images(outcome: &bandsox_core::init::InitOutcome) {
    for image in [&outcome.default_image, &outcome.base_image] {
        match image {
            Some((img, true)) => println!("image       {} built ({})", img.reference, img.digest),
            Some((img, false)) => println!("image       {} (already present)", img.reference),
            None => {}
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a local path, `file://` or http(s) URL into `dir`; returns the copy and its SHA-256.
fn fetch(src: &str, dir: &Path, what: &str) -> Result<(PathBuf, String), CliError> {
    let fail =
        |e: &dyn std::fmt::Display| CliError::new(format!("cannot fetch the {what} {src}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    let dest = dir.join(what);
    let mut reader: Box<dyn Read> = if src.starts_with("http://") || src.starts_with("https://") {
        let resp = ureq::get(src)
            .timeout(std::time::Duration::from_secs(3600))
            .call()
            .map_err(|e| fail(&e))?;
        Box::new(resp.into_reader())
    } else {
        let path = src.strip_prefix("file://").unwrap_or(src);
        if src.contains("://") && !src.starts_with("file://") {
            return Err(CliError::new(format!(
                "the {what} `{src}` is not a path or an http(s)/file URL"
            ))
            .with_hint("give a local path, file:///path or https://..."));
        }
        Box::new(std::fs::File::open(path).map_err(|e| fail(&e))?)
    };
    let mut out = std::fs::File::create(&dest).map_err(|e| fail(&e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| fail(&e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| fail(&e))?;
    }
    Ok((dest, hex::encode(hash.finalize())))
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
