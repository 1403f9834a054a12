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
pub mod oci;
pub mod pull;
pub mod rootfs;
mod sys;
pub mod unpack;
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
    /// Content does not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// A layer is not a readable tar stream.
    #[error("corrupt layer: {0}")]
    CorruptLayer(String),
    /// A manifest, config or layer has a media type we cannot use.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The image is built for another OS or CPU architecture.
    #[error("the image is for {0}; only linux/amd64 images run here")]
    UnsupportedPlatform(String),
    /// An image archive or layout is malformed (missing index, bad JSON, missing blob, ...).
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// The registry has no such image (or repository).
    #[error("image `{reference}` not found in its registry: {detail}")]
    NotInRegistry { reference: String, detail: String },
    /// The registry could not be reached.
    #[error("registry {registry} is unreachable: {detail}")]
    RegistryUnreachable { registry: String, detail: String },
    /// The registry refused our credentials (or demands some).
    #[error("registry {registry} refused authentication: {detail}")]
    RegistryAuth { registry: String, detail: String },
    /// Any other registry failure.
    #[error("registry error: {0}")]
    Registry(String),
    /// The image unpacks to more than the unpacked-size limit allows.
    #[error("the image unpacks to more than {} MiB", limit_bytes >> 20)]
    TooLarge { limit_bytes: u64 },
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
