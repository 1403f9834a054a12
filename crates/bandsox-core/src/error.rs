//! The one error type of the core, with a stable machine-readable code per variant.

use bandsox_protocol::ErrorBody;

/// Everything that can go wrong in a core operation.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotInitialised(String),
    #[error("VM did not become ready within {timeout_s} s: {detail}")]
    BootTimeout { timeout_s: u64, detail: String },
    #[error("command timed out after {timeout_s} s")]
    ExecTimeout { timeout_s: u64 },
    #[error("guest agent: {0}")]
    Agent(String),
    #[error("guest agent error ({}): {}", .0.code, .0.message)]
    Guest(ErrorBody),
    #[error("VMM: {0}")]
    Vmm(#[from] bandsox_vmm::VmmError),
    #[error("image: {0}")]
    Image(#[from] bandsox_image::ImageError),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
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
            Self::InvalidInput(_) => "invalid_input",
            Self::Conflict(_) => "conflict",
            Self::NotInitialised(_) => "not_initialised",
            Self::BootTimeout { .. } => "boot_timeout",
            Self::ExecTimeout { .. } => "exec_timeout",
            Self::Agent(_) => "agent_unavailable",
            Self::Guest(b) => match b.code {
                bandsox_protocol::ErrorCode::NotFound => "guest_not_found",
                bandsox_protocol::ErrorCode::BadRequest => "invalid_input",
                _ => "guest_error",
            },
            Self::Vmm(_) => "vmm_error",
            Self::Image(bandsox_image::ImageError::NotInitialised { .. }) => "not_initialised",
            Self::Image(_) => "image_error",
            Self::Db(_) => "database_error",
            Self::Io(_) => "io_error",
        }
    }

    /// A short suggestion for the user, where one helps.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::NotInitialised(_)
            | Self::Image(bandsox_image::ImageError::NotInitialised { .. }) => {
                Some("run `bandsox init` (or scripts/setup) first")
            }
            Self::NotFound { kind: "VM", .. } => Some("list VMs with `bandsox vm list`"),
            Self::NotFound { kind: "image", .. } => Some("list images with `bandsox image ls`"),
            Self::BootTimeout { .. } => Some(
                "the guest console log is in <storage>/vms/<id>/console.log while the VM exists",
            ),
            _ => None,
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
