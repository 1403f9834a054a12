//! Guest boot assets and root filesystems: everything that turns packages and directories into
//! files a microVM boots from.
//!
//! This crate owns the ELF `vmlinux` extraction from a bzImage ([`kernel`]), kernel module
//! dependency resolution ([`modules`]), the cpio "newc" writer for the initramfs ([`cpio`]), the
//! `bandsox init` asset installer and its manifest under `<storage>/kernels/` ([`assets`]), and
//! root filesystem builders: a minimal busybox tree and `mkfs.ext4 -d` images ([`rootfs`]). It
//! runs no VM and speaks no protocol.

pub mod assets;
pub mod cpio;
pub mod kernel;
pub mod modules;
pub mod rootfs;
mod util;

use std::path::PathBuf;

/// Everything that can go wrong while building images and boot assets.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a bzImage the extractor understands.
    #[error("not a usable bzImage: {0}")]
    NotBzImage(String),
    /// The bzImage payload uses a compression we do not decode.
    #[error(
        "the kernel payload is {0}-compressed; only LZ4 (CONFIG_KERNEL_LZ4) bzImages are supported \
         — pass an uncompressed ELF vmlinux instead"
    )]
    UnsupportedCompression(&'static str),
    /// The LZ4 payload is corrupt or truncated.
    #[error("corrupt LZ4 kernel payload: {0}")]
    CorruptPayload(String),
    /// The extracted or supplied kernel is not an ELF file.
    #[error("{0} is not an ELF vmlinux")]
    NotElf(String),
    /// The kernel package does not have the expected layout.
    #[error("unusable kernel package: {0}")]
    BadKernelPackage(String),
    /// `modules.dep` is missing, unreadable or inconsistent.
    #[error("modules.dep: {0}")]
    ModulesDep(String),
    /// A wanted kernel module is neither built in nor present as a file.
    #[error("kernel module `{name}` is neither built into the kernel nor present in {dir}")]
    ModuleNotFound { name: String, dir: PathBuf },
    /// An external tool is not installed.
    #[error("`{tool}` was not found on PATH ({hint})")]
    ToolMissing {
        tool: &'static str,
        hint: &'static str,
    },
    /// An external tool ran and failed.
    #[error("`{tool}` failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    /// Kernel assets are missing from the storage directory.
    #[error("kernel assets are not initialised ({detail}); run `bandsox init` first")]
    NotInitialised { detail: String },
    /// The manifest could not be written or read.
    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// An argument is unusable (a path that cannot be stored, an empty name, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl ImageError {
    /// Builds an [`ImageError::Io`] with a context string.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
