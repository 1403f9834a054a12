//! `bandsox cleanup`: removes networking leftovers (namespaces `bsx-*`, interfaces `bsxv*`,
//! the `inet bandsox` nftables table) that no live VM uses. Anything else on the host, TAPs
//! and bridges included, is never touched.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{core_error, storage};
use crate::CliResult;

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Storage root [env: BANDSOX_STORAGE] [default: /var/lib/bandsox].
    #[arg(long)]
    storage: Option<PathBuf>,
}

pub fn run(a: CleanupArgs) -> CliResult {
    let storage = storage(a.storage)?;
    let cleaned = bandsox_core::network::cleanup_host(&storage.db_path()).map_err(core_error)?;
    for ns in &cleaned.namespaces {
        println!("removed network namespace {ns}");
    }
    for i in &cleaned.interfaces {
        println!("removed interface {i}");
    }
    if cleaned.host_table {
        println!("removed nftables table inet {}", bandsox_net::HOST_TABLE);
    }
    if cleaned == bandsox_net::Cleaned::default() {
        println!("nothing to clean up");
    }
    Ok(ExitCode::SUCCESS)
}
