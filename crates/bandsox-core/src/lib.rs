//! The heart of bandsox: VM lifecycle, persistent state and the host side of the agent
//! protocol. Handlers (HTTP, CLI) parse and validate input, then call [`Manager`]; they never
//! touch VMM processes, sockets or the database directly.

pub mod agent;
pub mod auth;
pub mod backend;
pub mod dockerfile;
pub mod error;
pub mod fork;
pub mod guest;
pub mod images;
pub mod init;
pub mod manager;
pub mod network;
pub mod observe;
pub mod pool;
pub mod resolve;
pub mod snapshots;
pub mod storage;
pub mod store;
pub(crate) mod sys;
pub mod template;
pub mod ttl;

pub use agent::{AgentClient, ExecOutput};
pub use backend::{select_driver, VmmChoice};
pub use error::{CoreError, Result};
pub use manager::{CreateVm, Limits, Manager, ManagerConfig};
pub use pool::{PoolSpec, PoolStatus};
pub use storage::Storage;
pub use store::{ImageRecord, StopReason, VmRecord, VmStatus};
pub use template::{TemplateRecord, TemplateShape};
