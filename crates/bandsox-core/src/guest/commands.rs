//! Streaming exec and durable background commands.

use std::time::Duration;

use bandsox_protocol::frame::Channel;
use bandsox_protocol::{
    CmdInfo, CmdLogsRequest, CmdStartRequest, Event, ExecRequest, ExitStatus, ReplyBody, Request,
};

use super::unexpected;
use crate::agent::{AgentStream, StreamItem, StreamSender};
use crate::error::{CoreError, Result};
use crate::manager::Manager;

/// Bound on single-reply control calls (the agent answers them at once).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One event of a streaming exec, in the order the guest produced them per stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last event.
    Exited(ExitStatus),
}

/// A running streaming exec. Dropping it kills the program (its process group).
pub struct ExecStream {
    stream: AgentStream,
    done: bool,
}

/// Writes the stdin of a streaming exec started with `stdin: true`, while another task reads
/// its output.
pub struct ExecStdin(StreamSender);

impl ExecStdin {
    /// Sends bytes (waits while the guest's stdin window is full).
    pub async fn write(&self, bytes: &[u8]) -> Result<()> {
        self.0.send_data(Channel::Stdin, bytes).await
    }

    /// Ends the program's stdin.
    pub async fn close(&self) -> Result<()> {
        self.0.send_eof(Channel::Stdin).await
    }
}

impl ExecStream {
    /// A writer of the program's stdin (only useful when the request had `stdin: true`).
    pub fn stdin(&self) -> ExecStdin {
        ExecStdin(self.stream.sender())
    }

    /// The next event; `None` after [`ExecEvent::Exited`].
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        if self.done {
            return Ok(None);
        }
        loop {
            return Ok(Some(match self.stream.next().await? {
                StreamItem::Event(Event::Started { pid }) => ExecEvent::Started { pid },
                StreamItem::Data(Channel::Stdout, b) => ExecEvent::Stdout(b),
                StreamItem::Data(Channel::Stderr, b) => ExecEvent::Stderr(b),
                StreamItem::Reply(ReplyBody::Exited(s)) => {
                    self.done = true;
                    ExecEvent::Exited(s)
                }
                StreamItem::Reply(other) => return Err(unexpected("exec", &other)),
                _ => continue,
            }));
        }
    }
}

/// A started durable command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdStarted {
    pub cmd_id: String,
    pub pid: u32,
}

/// One event of a log replay/follow.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEvent {
    /// The data that follows starts at these absolute offsets. Sent first, and again if the
    /// reader fell so far behind that output left the ring buffer (a gap).
    Start {
        stdout_offset: u64,
        stderr_offset: u64,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last event: where the data ended and the command's state.
    End {
        stdout_offset: u64,
        stderr_offset: u64,
        info: CmdInfo,
    },
}

/// A log replay (and follow). Dropping it stops following; the command keeps running.
pub struct LogStream {
    stream: AgentStream,
    done: bool,
}

impl LogStream {
    /// The next event; `None` after [`LogEvent::End`].
    pub async fn next(&mut self) -> Result<Option<LogEvent>> {
        if self.done {
            return Ok(None);
        }
        loop {
            return Ok(Some(match self.stream.next().await? {
                StreamItem::Event(Event::LogStart {
                    stdout_offset,
                    stderr_offset,
                }) => LogEvent::Start {
                    stdout_offset,
                    stderr_offset,
                },
                StreamItem::Data(Channel::Stdout, b) => LogEvent::Stdout(b),
                StreamItem::Data(Channel::Stderr, b) => LogEvent::Stderr(b),
                StreamItem::Reply(ReplyBody::CmdLogs {
                    stdout_offset,
                    stderr_offset,
                    info,
                }) => {
                    self.done = true;
                    LogEvent::End {
                        stdout_offset,
                        stderr_offset,
                        info,
                    }
                }
                StreamItem::Reply(other) => return Err(unexpected("cmd_logs", &other)),
                _ => continue,
            }));
        }
    }
}

/// Collected logs (see [`Manager::cmd_logs`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Logs {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Absolute offsets of the first byte of `stdout`/`stderr` (later than asked if older
    /// output already left the ring buffer).
    pub stdout_from: u64,
    pub stderr_from: u64,
    /// Offsets just past the data: pass them as `from` to continue.
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    pub info: CmdInfo,
}

impl Manager {
    /// Starts a command and streams its output as it is produced. `stdin` is sent and closed
    /// when given. The VM's environment applies as for [`Manager::exec`].
    pub async fn exec_stream(
        &self,
        id: &str,
        mut req: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecStream> {
        check_one_program(&req)?;
        // `req.stdin` alone: the caller writes it through [`ExecStream::stdin`].
        req.stdin |= stdin.is_some();
        let req = self.with_vm_env(id, req)?;
        let agent = self.agent(id).await?;
        let stream = agent.open(&Request::Exec(req)).await?;
        if let Some(data) = stdin {
            let sender = stream.sender();
            tokio::spawn(async move {
                if sender.send_data(Channel::Stdin, &data).await.is_ok() {
                    let _ = sender.send_eof(Channel::Stdin).await;
                }
            });
        }
        Ok(ExecStream {
            stream,
            done: false,
        })
    }

    /// Starts a durable background command: it keeps running when clients disconnect, its
    /// output is kept (1 MiB per stream, absolute offsets) for [`Manager::cmd_logs`].
    /// `req.stdin` opens a stdin pipe for [`Manager::cmd_stdin`]; `req.timeout_ms` kills it.
    pub async fn cmd_start(&self, id: &str, req: ExecRequest) -> Result<CmdStarted> {
        check_one_program(&req)?;
        let exec = self.with_vm_env(id, req)?;
        self.cmd_start_raw(id, CmdStartRequest { exec, pty: None })
            .await
    }

    pub(crate) async fn cmd_start_raw(&self, id: &str, req: CmdStartRequest) -> Result<CmdStarted> {
        let agent = self.agent(id).await?;
        match agent.call(&Request::CmdStart(req), CALL_TIMEOUT).await? {
            ReplyBody::CmdStarted { cmd_id, pid } => Ok(CmdStarted { cmd_id, pid }),
            other => Err(unexpected("cmd_start", &other)),
        }
    }

    /// Replays a command's output from absolute offsets and, with `follow`, streams new output
    /// until it exits.
    pub async fn cmd_logs_stream(
        &self,
        id: &str,
        cmd_id: &str,
        stdout_from: u64,
        stderr_from: u64,
        follow: bool,
    ) -> Result<LogStream> {
        let agent = self.agent(id).await?;
        let stream = agent
            .open(&Request::CmdLogs(CmdLogsRequest {
                cmd_id: cmd_id.to_owned(),
                stdout_from,
                stderr_from,
                follow,
            }))
            .await?;
        Ok(LogStream {
            stream,
            done: false,
        })
    }

    /// Collects a command's output from absolute offsets (to its current end, or with
    /// `follow` to its exit).
    pub async fn cmd_logs(
        &self,
        id: &str,
        cmd_id: &str,
        stdout_from: u64,
        stderr_from: u64,
        follow: bool,
    ) -> Result<Logs> {
        let mut s = self
            .cmd_logs_stream(id, cmd_id, stdout_from, stderr_from, follow)
            .await?;
        let mut logs = Logs::default();
        let mut first = true;
        while let Some(ev) = s.next().await? {
            match ev {
                LogEvent::Start {
                    stdout_offset,
                    stderr_offset,
                } if first => {
                    first = false;
                    logs.stdout_from = stdout_offset;
                    logs.stderr_from = stderr_offset;
                }
                LogEvent::Start { .. } => {
                    return Err(CoreError::Agent(
                        "output left the ring buffer while it was read".into(),
                    ))
                }
                LogEvent::Stdout(b) => logs.stdout.extend_from_slice(&b),
                LogEvent::Stderr(b) => logs.stderr.extend_from_slice(&b),
                LogEvent::End {
                    stdout_offset,
                    stderr_offset,
                    info,
                } => {
                    logs.stdout_offset = stdout_offset;
                    logs.stderr_offset = stderr_offset;
                    logs.info = info;
                }
            }
        }
        Ok(logs)
    }

    /// Waits until the command exits and its output is drained, or `timeout_ms` passes (then
    /// `running` is still true).
    pub async fn cmd_wait(
        &self,
        id: &str,
        cmd_id: &str,
        timeout_ms: Option<u64>,
    ) -> Result<CmdInfo> {
        let agent = self.agent(id).await?;
        let bound = timeout_ms.map_or(Duration::from_secs(365 * 24 * 3600), |ms| {
            Duration::from_millis(ms) + CALL_TIMEOUT
        });
        let req = Request::CmdWait {
            cmd_id: cmd_id.to_owned(),
            timeout_ms,
        };
        match agent.call(&req, bound).await? {
            ReplyBody::Cmd(info) => Ok(info),
            other => Err(unexpected("cmd_wait", &other)),
        }
    }

    /// Sends `signal` (a name such as `TERM`/`SIGKILL`, or a number) to the command's whole
    /// process group.
    pub async fn cmd_kill(&self, id: &str, cmd_id: &str, signal: &str) -> Result<()> {
        let agent = self.agent(id).await?;
        let req = Request::CmdKill {
            cmd_id: cmd_id.to_owned(),
            signal: signal.to_owned(),
        };
        match agent.call(&req, CALL_TIMEOUT).await? {
            ReplyBody::Done => Ok(()),
            other => Err(unexpected("cmd_kill", &other)),
        }
    }

    /// Writes `data` to the command's stdin (a PTY's input); `close` closes it afterwards (a
    /// PTY gets ^D). Fails with `exited` once the command has exited.
    pub async fn cmd_stdin(&self, id: &str, cmd_id: &str, data: &[u8], close: bool) -> Result<()> {
        let agent = self.agent(id).await?;
        let mut stream = agent
            .open(&Request::CmdStdin {
                cmd_id: cmd_id.to_owned(),
                close,
            })
            .await?;
        let sender = stream.sender();
        let send = async {
            if sender.send_data(Channel::Stdin, data).await.is_ok() {
                let _ = sender.send_eof(Channel::Stdin).await;
            }
        };
        let recv = async {
            loop {
                match stream.next().await? {
                    StreamItem::Reply(ReplyBody::Done) => return Ok(()),
                    StreamItem::Reply(other) => return Err(unexpected("cmd_stdin", &other)),
                    _ => {}
                }
            }
        };
        let ((), r) = tokio::join!(send, recv);
        r
    }

    /// Every command the guest knows, running and finished (kept ≥ 10 minutes after exit).
    pub async fn cmd_list(&self, id: &str) -> Result<Vec<CmdInfo>> {
        let agent = self.agent(id).await?;
        match agent.call(&Request::CmdList, CALL_TIMEOUT).await? {
            ReplyBody::Cmds { commands } => Ok(commands),
            other => Err(unexpected("cmd_list", &other)),
        }
    }
}

fn check_one_program(req: &ExecRequest) -> Result<()> {
    if req.argv.is_some() == req.command.is_some() {
        return Err(CoreError::InvalidInput(
            "give exactly one of `command` and `argv`".into(),
        ));
    }
    Ok(())
}
