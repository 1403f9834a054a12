//! One module per command group.

pub mod auth;
pub mod build;
pub mod cleanup;
pub mod cluster;
pub mod cp;
pub mod durable;
pub mod image;
pub mod init;
pub mod serve;
pub mod snapshot;
pub mod stats;
pub mod template;
pub mod terminal;
pub mod vm;

use std::path::PathBuf;

use bandsox_core::Storage;

use crate::client::CliError;

/// The storage root from `--storage`, `BANDSOX_STORAGE` or the default.
pub fn storage(arg: Option<PathBuf>) -> Result<Storage, CliError> {
    let s = match arg {
        Some(p) => Storage::new(p),
        None => Storage::from_env(),
    };
    s.map_err(|e| CliError::new(e.to_string()))
}

/// Turns a core error into a CLI error with its hint.
pub fn core_error(e: bandsox_core::CoreError) -> CliError {
    let mut err = CliError::new(e.to_string());
    if let Some(h) = e.hint() {
        err = err.with_hint(h);
    }
    err
}
