//! Helpers every benchmark shares: a scratch storage root initialised with the real
//! `bandsox init` code, and table rows of medians.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bandsox_core::init::{initialise, InitRequest};
use bandsox_core::Storage;

/// Runs `body` in a fresh scratch directory that is removed afterwards, whatever happens.
pub async fn in_scratch<F, Fut>(name: &str, body: F) -> Result<()>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let work = std::env::temp_dir().join(format!("bandsox-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = body(work.clone()).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// `<work>/storage`, initialised (kernel, initramfs, `bandsox/busybox`).
pub fn prepare_storage(work: &Path) -> Result<Storage> {
    let storage = Storage::new(work.join("storage"))?;
    let agent = bandsox_config::get_os(bandsox_config::AGENT_BIN)
        .map(PathBuf::from)
        .context("set BANDSOX_AGENT_BIN to the static bandsox-agent (the bench/ scripts do)")?;
    initialise(&InitRequest {
        storage: storage.clone(),
        kernel: None,
        agent_bin: agent,
        busybox: Some("/bin/busybox".into()),
        skip_kernel: false,
        rootfs: None,
        force: false,
    })?;
    Ok(storage)
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints `| name | median | min | max |` in seconds.
pub fn row(name: &str, med: Duration, all: &[Duration]) {
    let min = all.iter().min().copied().unwrap_or_default();
    let max = all.iter().max().copied().unwrap_or_default();
    println!(
        "| {name} | {:.3} | {:.3} | {:.3} |",
        med.as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64()
    );
}

/// Prints `| name | median | min | max |` in milliseconds.
pub fn row_ms(name: &str, med: Duration, all: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let min = all.iter().min().copied().unwrap_or_default();
    let max = all.iter().max().copied().unwrap_or_default();
    println!(
        "| {name} | {:.1} | {:.1} | {:.1} |",
        ms(med),
        ms(min),
        ms(max)
    );
}
