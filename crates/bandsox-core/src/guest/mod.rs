//! What a user does inside a running VM, on top of the agent protocol: streaming exec, durable
//! background commands, PTY sessions, files and `exec_python`. Every operation is an
//! `impl Manager` method taking the VM id; the REST/WS layer maps them one to one.
//!
//! Guest-side failures come back as [`CoreError::Guest`] carrying the agent's closed error code
//! (`bandsox_protocol::ErrorCode`: `not_found`, `is_a_directory`, `no_match`, `exited`, ...).

pub mod commands;
pub mod files;
pub(crate) mod offline;
pub mod pty;
pub mod python;

use bandsox_protocol::{ExecRequest, ReplyBody};

use crate::error::{CoreError, Result};
use crate::manager::Manager;

pub use commands::{CmdStarted, ExecEvent, ExecStdin, ExecStream, LogEvent, LogStream, Logs};
pub use files::{FileContent, TextWindow, WriteOptions};
pub use pty::PtyStart;
pub use python::{PythonRequest, PythonResult};

/// An unexpected reply body: a protocol mismatch between host and agent.
pub(crate) fn unexpected(op: &str, body: &ReplyBody) -> CoreError {
    CoreError::Agent(format!("unexpected reply to {op}: {body:?}"))
}

impl Manager {
    /// Path of the VM's agent channel socket (for tools that speak to it directly, such as
    /// `bench/agent`'s raw floor). Close the manager's connection first: the channel takes
    /// one host at a time.
    pub fn agent_socket(&self, id: &str) -> Result<std::path::PathBuf> {
        let vm = self.get_vm(id)?;
        let handle = self
            .entry(id)
            .and_then(|e| e.handle())
            .ok_or_else(|| CoreError::Conflict(format!("VM {} is not running", vm.id)))?;
        Ok(handle.agent_socket())
    }

    /// `req` with the defaults under it: the image's `Env` < the VM's `env_vars` < the
    /// request's own variables, and the image's `WorkingDir` and `User` when the request
    /// names none.
    pub(crate) fn with_vm_env(&self, id: &str, mut req: ExecRequest) -> Result<ExecRequest> {
        let vm = self.get_vm(id)?;
        let mut env = vm.env_vars.clone();
        env.append(&mut req.env);
        req.env = env;
        crate::images::apply_exec_defaults(
            self.store(),
            self.storage(),
            &vm.image_digest,
            &mut req,
        );
        Ok(req)
    }
}
