//! PTY sessions: durable commands under a pseudo-terminal. Output (the terminal's, stdout and
//! stderr merged as a terminal does) is replayed and followed like any command's stdout; input,
//! resize, wait and kill address the session by its `cmd_id`. Input after exit fails with the
//! `exited` code.

use std::collections::BTreeMap;

use bandsox_protocol::{CmdStartRequest, ExecRequest, PtySize, ReplyBody, Request};

use super::commands::{CmdStarted, LogStream, CALL_TIMEOUT};
use super::unexpected;
use crate::error::{CoreError, Result};
use crate::manager::Manager;

/// A PTY session to start.
#[derive(Debug, Clone, Default)]
pub struct PtyStart {
    /// Program and arguments; default the image's shell (root's login shell), else `/bin/sh`.
    pub argv: Option<Vec<String>>,
    /// Or a shell command line.
    pub command: Option<String>,
    pub cols: u16,
    pub rows: u16,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
}

impl Manager {
    /// Starts a PTY session (a durable command with a terminal).
    pub async fn pty_start(&self, id: &str, req: PtyStart) -> Result<CmdStarted> {
        if req.argv.is_some() && req.command.is_some() {
            return Err(CoreError::InvalidInput(
                "give at most one of `command` and `argv`".into(),
            ));
        }
        if req.cols == 0 || req.rows == 0 {
            return Err(CoreError::InvalidInput("cols and rows must be > 0".into()));
        }
        let exec = self.with_vm_env(
            id,
            ExecRequest {
                argv: req.argv,
                command: req.command,
                env: req.env,
                cwd: req.cwd,
                stdin: true,
                timeout_ms: None,
                user: req.user,
            },
        )?;
        self.cmd_start_raw(
            id,
            CmdStartRequest {
                exec,
                pty: Some(PtySize {
                    cols: req.cols,
                    rows: req.rows,
                }),
            },
        )
        .await
    }

    /// Types `data` into the terminal.
    pub async fn pty_input(&self, id: &str, cmd_id: &str, data: &[u8]) -> Result<()> {
        self.cmd_stdin(id, cmd_id, data, false).await
    }

    /// Changes the terminal size (the program gets SIGWINCH).
    pub async fn pty_resize(&self, id: &str, cmd_id: &str, cols: u16, rows: u16) -> Result<()> {
        let agent = self.agent(id).await?;
        let req = Request::CmdResize {
            cmd_id: cmd_id.to_owned(),
            cols,
            rows,
        };
        match agent.call(&req, CALL_TIMEOUT).await? {
            ReplyBody::Done => Ok(()),
            other => Err(unexpected("cmd_resize", &other)),
        }
    }

    /// The terminal's output from absolute offset `from`, following until the session ends.
    pub async fn pty_output(&self, id: &str, cmd_id: &str, from: u64) -> Result<LogStream> {
        self.cmd_logs_stream(id, cmd_id, from, 0, true).await
    }
}
