//! The one error type of the core, with a stable machine-readable code per variant.

use bandsox_protocol::ErrorBody;

/// Everything that can go wrong in a core operation.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{kind} `{}` not found", short(.id))]
    NotFound { kind: &'static str, id: String },
    /// A reference (name or id prefix) matches several objects.
    #[error("{kind} reference `{}` is ambiguous; it matches {}", short(.reference), .candidates.join(", "))]
    Ambiguous {
        kind: &'static str,
        reference: String,
        candidates: Vec<String>,
    },
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Conflict(String),
    /// An operation that needs a running VM, on one that is not.
    #[error("VM `{id}` is {status}, not running")]
    NotRunning {
        id: String,
        status: crate::store::VmStatus,
    },
    /// `extend` on a VM that has no timeout (extending "never" is refused).
    #[error("VM `{id}` has no timeout to extend")]
    NoTimeout { id: String },
    #[error("{0}")]
    NotInitialised(String),
    /// Another process owns the storage root.
    #[error("{0}")]
    Locked(String),
    /// A server limit (`bandsox serve --max-vms`) would be exceeded.
    #[error("{0}")]
    LimitReached(String),
    /// An image is still used by a VM or snapshot.
    #[error("{0}")]
    ImageInUse(String),
    /// `disk_size_mib` cannot hold the image.
    #[error("disk_size_mib {disk_size_mib} is too small for image `{image}`, which needs at least {needed_mib} MiB")]
    DiskTooSmall {
        image: String,
        disk_size_mib: u64,
        needed_mib: u64,
    },
    /// An image unpacks to more than the unpacked-size limit or the free space allows.
    #[error("{0}")]
    ImageTooLarge(String),
    /// An image reference is taken and the import or pull was not forced.
    #[error("image reference `{0}` already exists; it is not replaced unless forced")]
    ImageExists(String),
    /// A Dockerfile build step failed (its output tail is in the message).
    #[error("build failed: {0}")]
    BuildFailed(String),
    #[error("VM did not become ready within {timeout_s} s: {detail}")]
    BootTimeout { timeout_s: u64, detail: String },
    /// The VMM exited while the VM booted (the detail ends with its own last words).
    #[error("the VM failed to boot: {0}")]
    BootFailed(String),
    #[error("command timed out after {timeout_s} s")]
    ExecTimeout { timeout_s: u64 },
    #[error("guest agent: {0}")]
    Agent(String),
    #[error("{}", guest_message(.0))]
    Guest(ErrorBody),
    #[error("VMM: {0}")]
    Vmm(#[from] bandsox_vmm::VmmError),
    #[error("image: {0}")]
    Image(#[from] bandsox_image::ImageError),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Setting up or tearing down VM networking failed.
    #[error("network: {0}")]
    Network(String),
}

/// A user-supplied id or reference as messages show it: at most 80 characters (a 5 KB id is
/// not echoed back), control characters escaped.
pub fn short(s: &str) -> String {
    const MAX: usize = 80;
    let escaped: String = s.escape_debug().collect();
    if escaped.chars().count() <= MAX {
        escaped
    } else {
        let mut out: String = escaped.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

static STORAGE_ROOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names the storage root [`scrub`] hides (the first one a process opens; a process owns one).
pub(crate) fn set_storage_root(root: &std::path::Path) {
    let _ = STORAGE_ROOT.set(root.display().to_string());
}

/// A message for a remote client without this host's storage paths: the storage root (where
/// disks, sockets, kernels and images live) reads `<storage>`. Guest paths are left alone.
pub fn scrub(text: &str) -> String {
    scrub_root(text, STORAGE_ROOT.get().map_or("", String::as_str))
}

fn scrub_root(text: &str, root: &str) -> String {
    if root.len() > 1 {
        text.replace(root, "<storage>")
    } else {
        text.to_owned()
    }
}

impl CoreError {
    pub fn vm_not_found(id: &str) -> Self {
        Self::NotFound {
            kind: "VM",
            id: id.to_owned(),
        }
    }

    /// Stable code for APIs (`problem+json` `code`, CLI messages).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { kind: "VM", .. } => "vm_not_found",
            Self::NotFound { kind: "image", .. } => "image_not_found",
            Self::NotFound { .. } => "not_found",
            Self::Ambiguous { .. } => "ambiguous_reference",
            Self::InvalidInput(_) => "invalid_input",
            Self::Conflict(_) | Self::NoTimeout { .. } | Self::NotRunning { .. } => "conflict",
            Self::NotInitialised(_) => "not_initialised",
            Self::Locked(_) => "storage_locked",
            Self::ImageInUse(_) => "image_in_use",
            Self::LimitReached(_) => "limit_reached",
            Self::DiskTooSmall { .. } => "disk_too_small",
            Self::ImageTooLarge(_) => "image_too_large",
            Self::ImageExists(_) => "image_exists",
            Self::BootTimeout { .. } => "boot_timeout",
            Self::BootFailed(_) => "boot_failed",
            Self::ExecTimeout { .. } => "exec_timeout",
            Self::BuildFailed(_) => "build_failed",
            Self::Agent(_) => "agent_unavailable",
            Self::Guest(b) => guest_code(b.code),
            Self::Vmm(_) => "vmm_error",
            Self::Image(e) => image_code(e),
            Self::Db(_) => "database_error",
            Self::Io(_) => "io_error",
            Self::Network(_) => "network_error",
        }
    }

    /// A short suggestion for the user, where one helps.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::NotInitialised(_)
            | Self::Image(bandsox_image::ImageError::NotInitialised { .. }) => {
                Some("run `bandsox init` (or scripts/setup) first")
            }
            Self::Locked(_) => Some(
                "one process owns a storage root: stop that one first, talk to its server (--url), or pass another --storage",
            ),
            Self::NotFound { kind: "VM", .. } => Some("list VMs with `bandsox vm list`"),
            Self::NotFound { kind: "image", .. } => Some("list images with `bandsox image ls`"),
            Self::NotFound {
                kind: "snapshot", ..
            } => Some("list snapshots with `bandsox snapshot ls`"),
            Self::Ambiguous { .. } => Some("use the full id, or a longer id prefix"),
            Self::Guest(b) if b.code == bandsox_protocol::ErrorCode::UnknownCommand => {
                Some("list the VM's commands with `bandsox commands VM`")
            }
            Self::NotRunning { status, .. } => Some(match status {
                crate::store::VmStatus::Paused => "resume it with `bandsox vm resume VM`",
                crate::store::VmStatus::Creating => "it is still booting; try again in a moment",
                _ => "start it with `bandsox start VM`",
            }),
            Self::NoTimeout { .. } => {
                Some("set one with `bandsox timeout VM SECONDS` (POST /api/vms/{id}/timeout)")
            }
            Self::ImageInUse(_) => Some("delete the VMs and snapshots that use it first"),
            Self::LimitReached(_) => Some(
                "delete VMs you no longer need, or raise the limit (`bandsox serve --max-vms`)",
            ),
            Self::DiskTooSmall { .. } => Some("pass a larger disk_size_mib (--disk-size)"),
            Self::ImageTooLarge(_) => Some(
                "free disk space under the storage root, or raise BANDSOX_MAX_UNPACKED_MIB for the server",
            ),
            Self::ImageExists(_) => Some(
                "pick another reference, or replace it on purpose with --force (API: ?force=true)",
            ),
            Self::Image(e) => image_hint(e),
            Self::BootTimeout { .. } => Some(
                "the guest console log is in <storage>/vms/<id>/console.log while the VM exists",
            ),
            Self::BootFailed(_) => Some(
                "the VMM's reason is above; ask for less memory or fewer vCPUs if the host cannot give them",
            ),
            _ => None,
        }
    }
}

/// The line for an error from inside the guest: an unknown command id is the user's mistake
/// and its message names it ("no command with id `cmd-99`"); others keep the agent's code.
fn guest_message(b: &ErrorBody) -> String {
    match b.code {
        bandsox_protocol::ErrorCode::UnknownCommand => format!("{} in this VM", b.message),
        _ => format!("guest agent error ({}): {}", b.code, b.message),
    }
}

/// Stable codes of errors from inside the guest.
fn guest_code(c: bandsox_protocol::ErrorCode) -> &'static str {
    use bandsox_protocol::ErrorCode as E;
    match c {
        E::NotFound => "guest_not_found",
        E::UnknownCommand => "command_not_found",
        E::BadRequest | E::InvalidPath | E::UnknownUser | E::UnknownSignal => "invalid_input",
        E::PermissionDenied => "permission_denied",
        E::IsADirectory => "is_a_directory",
        E::NotADirectory => "not_a_directory",
        E::AlreadyExists => "already_exists",
        E::NotEmpty => "not_empty",
        E::NoMatch => "edit_no_match",
        E::MultipleMatches => "edit_multiple_matches",
        E::Exited => "command_exited",
        _ => "guest_error",
    }
}

/// Stable codes of image errors.
fn image_code(e: &bandsox_image::ImageError) -> &'static str {
    use bandsox_image::ImageError as E;
    match e {
        E::NotInitialised { .. } => "not_initialised",
        E::DigestMismatch { .. } => "digest_mismatch",
        E::UnsupportedMediaType(_) => "unsupported_media_type",
        E::UnsupportedPlatform(_) => "unsupported_platform",
        E::InvalidArchive(_) | E::CorruptLayer(_) => "invalid_image",
        E::NotInRegistry { .. } => "image_not_found",
        E::RegistryUnreachable { .. } => "registry_unreachable",
        E::RegistryAuth { .. } => "registry_auth_failed",
        E::Registry(_) => "registry_error",
        E::InvalidInput(_) => "invalid_input",
        _ => "image_error",
    }
}

fn image_hint(e: &bandsox_image::ImageError) -> Option<&'static str> {
    use bandsox_image::ImageError as E;
    match e {
        E::NotInitialised { .. } => Some("run `bandsox init` (or scripts/setup) first"),
        E::NotInRegistry { .. } => Some("check the name and tag; local images are listed by `bandsox image ls`"),
        E::RegistryUnreachable { .. } => Some(
            "check the registry address and network; plain-HTTP registries other than localhost need BANDSOX_INSECURE_REGISTRIES (or --insecure)",
        ),
        E::RegistryAuth { .. } => Some("log in (~/.docker/config.json) or pass --username/--password"),
        E::DigestMismatch { .. } => Some("the content is corrupt; pull or export the image again"),
        E::UnsupportedMediaType(_) => Some("only container images (OCI or Docker v2, tar/gzip/zstd layers) can be used"),
        E::InvalidArchive(_) => Some("pass a `docker save` tarball or an OCI image layout (directory or tar)"),
        _ => None,
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_are_cut_in_messages() {
        let e = CoreError::vm_not_found(&"a".repeat(5000));
        let m = e.to_string();
        assert!(m.len() < 200, "{m}");
        assert!(m.contains('…'));
        let e = CoreError::vm_not_found("x\u{0}y");
        assert_eq!(e.to_string(), "VM `x\\0y` not found");
    }

    #[test]
    fn the_storage_root_is_scrubbed() {
        assert_eq!(
            scrub_root(
                "cannot connect via /srv/bsx-root/vms/1/agent.sock: refused; guest /root/x",
                "/srv/bsx-root"
            ),
            "cannot connect via <storage>/vms/1/agent.sock: refused; guest /root/x"
        );
    }
}
