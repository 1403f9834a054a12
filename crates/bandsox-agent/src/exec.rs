//! `Exec`: spawn a program in its own process group, stream its stdout/stderr as flow-controlled
//! `Data` frames, feed its stdin from the host, enforce the timeout, and reply with how it ended.
//!
//! Threads per exec: this one (spawn, wait, reply), one pump per output pipe, and one stdin pump
//! when `stdin` is requested. The reply is sent only after both output pumps have sent their
//! `Eof`. A pump ends at end of file, when the stream is cancelled, or — once the main process
//! has exited — when its pipe stays idle for [`EXIT_IDLE_GRACE`] (a background grandchild that
//! still holds the pipe must not hold the reply forever), or at the latest [`EXIT_HARD_CAP`]
//! after the exit.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bandsox_protocol::frame::DATA_CHUNK_LEN;
use bandsox_protocol::{
    Channel, ErrorBody, ErrorCode, Event, ExecRequest, ExitStatus, Reply, ReplyBody,
};

use crate::log::log;
use crate::reaper;
use crate::server::{ExecEvent, Handler, StdinCredit, StdinMsg, StreamCtl, StreamTx};
use crate::sys;
use crate::util::lock;

/// After the main process exits, stop reading a pipe that has been idle this long.
pub const EXIT_IDLE_GRACE: Duration = Duration::from_millis(100);
/// After the main process exits, stop reading a pipe after this long regardless.
pub const EXIT_HARD_CAP: Duration = Duration::from_secs(2);

const PUMP_STACK_BYTES: usize = 256 << 10;

/// Runs one exec request to completion and returns its reply.
pub fn run(req: ExecRequest, h: Handler) -> Reply {
    let mut cmd = match build_command(&req, h.tx.base_env()) {
        Ok(c) => c,
        Err(e) => return Reply::Error(e),
    };
    let started = Instant::now();
    let events_tx = h.events_tx.clone();
    let waiter: reaper::Waiter = Box::new(move |status| {
        let _ = events_tx.send(ExecEvent::Exited(status));
    });
    let mut child = match reaper::spawn_registered(&mut cmd, waiter) {
        Ok(c) => c,
        Err(e) => return Reply::Error(spawn_error(&req, &e)),
    };
    let pid = child.id() as i32;
    h.tx.event(&Event::Started { pid: pid as u32 });

    let exit = Arc::new(ExitSignal::new());
    let mut pumps: Vec<JoinHandle<()>> = Vec::with_capacity(2);
    let outputs = [
        (child.stdout.take().map(OwnedFd::from), Channel::Stdout),
        (child.stderr.take().map(OwnedFd::from), Channel::Stderr),
    ];
    for (fd, channel) in outputs {
        let Some(fd) = fd else { continue };
        let (tx, ctl, exit) = (h.tx.clone(), Arc::clone(&h.ctl), Arc::clone(&exit));
        match std::thread::Builder::new()
            .name(format!("out-{pid}-{}", channel as u8))
            .stack_size(PUMP_STACK_BYTES)
            .spawn(move || pump_output(fd, channel, &tx, &ctl, &exit))
        {
            Ok(j) => pumps.push(j),
            Err(e) => log!("cannot start an output pump for pid {pid}: {e}"),
        }
    }
    let stdin_done = Arc::new(AtomicBool::new(false));
    if let Some(stdin) = child.stdin.take().map(OwnedFd::from) {
        let (tx, done) = (h.tx.clone(), Arc::clone(&stdin_done));
        let rx = h.stdin_rx;
        if let Err(e) = std::thread::Builder::new()
            .name(format!("in-{pid}"))
            .stack_size(PUMP_STACK_BYTES)
            .spawn(move || pump_stdin(stdin, &rx, &tx, &done))
        {
            log!("cannot start the stdin pump for pid {pid}: {e}");
        }
    }
    drop(child); // never waited on through std: the reaper owns exit statuses

    let deadline = req
        .timeout_ms
        .filter(|&ms| ms > 0)
        .map(|ms| started + Duration::from_millis(ms));
    let (status, timed_out) = wait_exit(pid, deadline, &h.events_rx);
    let duration_us = started.elapsed().as_micros() as u64;

    stdin_done.store(true, Ordering::Relaxed);
    h.ctl.close_stdin();
    exit.set();
    for p in pumps {
        let _ = p.join();
    }

    let (exit_code, signal) = match status {
        Some(s) => reaper::decode_status(s),
        None => (None, None),
    };
    Reply::Ok(ReplyBody::Exited(ExitStatus {
        exit_code,
        signal,
        timed_out,
        duration_us,
    }))
}

/// Waits for the exit status, killing the process group on timeout or cancel. Returns the raw
/// status (None if the reaper went away) and whether the timeout fired.
fn wait_exit(
    pid: i32,
    deadline: Option<Instant>,
    events: &Receiver<ExecEvent>,
) -> (Option<i32>, bool) {
    let mut timed_out = false;
    let mut killed = false;
    loop {
        let event = match deadline {
            Some(d) if !killed => {
                let now = Instant::now();
                if now >= d {
                    Err(RecvTimeoutError::Timeout)
                } else {
                    events.recv_timeout(d - now)
                }
            }
            _ => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(ExecEvent::Exited(status)) => return (Some(status), timed_out),
            Ok(ExecEvent::Cancel) => {
                kill_group(pid);
                killed = true;
            }
            Err(RecvTimeoutError::Timeout) => {
                kill_group(pid);
                killed = true;
                timed_out = true;
            }
            Err(RecvTimeoutError::Disconnected) => return (None, timed_out),
        }
    }
}

fn kill_group(pid: i32) {
    if let Err(e) = sys::kill(-pid, libc::SIGKILL) {
        if e.raw_os_error() != Some(libc::ESRCH) {
            log!("kill process group {pid}: {e}");
        }
    }
}

/// Builds the command, or the error reply for a request that cannot run.
fn build_command(req: &ExecRequest, base_env: &[(String, String)]) -> Result<Command, ErrorBody> {
    let mut cmd = base_command(req, base_env, None, false)?;
    pipe_stdio(&mut cmd, req.stdin);
    Ok(cmd)
}

/// Pipes for stdout and stderr, a pipe or /dev/null for stdin, and a process group of its
/// own (so a timeout or kill reaches everything the program starts).
pub fn pipe_stdio(cmd: &mut Command, stdin: bool) {
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(cmd, 0);
}

/// Program, arguments, working directory, environment and user of `req`; stdio and process
/// group are the caller's. `default_program` runs when neither `argv` nor `command` is given
/// (PTY sessions); `pty_session` makes the child a session leader with its stdin as
/// controlling terminal.
pub fn base_command(
    req: &ExecRequest,
    base_env: &[(String, String)],
    default_program: Option<&str>,
    pty_session: bool,
) -> Result<Command, ErrorBody> {
    let mut cmd = match (&req.argv, &req.command, default_program) {
        (Some(argv), None, _) => {
            let Some((program, args)) = argv.split_first() else {
                return Err(ErrorBody::new(ErrorCode::BadRequest, "argv is empty"));
            };
            let mut c = Command::new(program);
            c.args(args);
            c
        }
        (None, Some(command), _) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(command);
            c
        }
        (None, None, Some(program)) => Command::new(program),
        _ => {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "exactly one of argv and command must be given",
            ))
        }
    };
    if let Some(cwd) = &req.cwd {
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ErrorBody::new(
                    ErrorCode::NotADirectory,
                    format!("cwd {cwd} is not a directory"),
                ))
            }
            Err(e) => return Err(crate::server::io_error_body(&format!("cwd {cwd}"), &e)),
        }
        cmd.current_dir(cwd);
    }
    cmd.env_clear().envs(base_env.iter().map(|(k, v)| (k, v)));
    let identity = match &req.user {
        Some(spec) => {
            let user = crate::users::resolve(spec)?;
            cmd.env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
            if req.cwd.is_none() && Path::new(&user.home).is_dir() {
                cmd.current_dir(&user.home);
            }
            Some(sys::ChildIdentity {
                uid: user.uid,
                gid: user.gid,
                groups: user.groups,
            })
        }
        None => None,
    };
    cmd.envs(&req.env);
    sys::child_setup(&mut cmd, identity, pty_session);
    Ok(cmd)
}

/// The error reply for a program that could not be spawned.
pub fn spawn_error(req: &ExecRequest, e: &io::Error) -> ErrorBody {
    let program = match (&req.argv, &req.command) {
        (Some(argv), _) => argv.first().cloned().unwrap_or_default(),
        _ => "/bin/sh".to_owned(),
    };
    let code = match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        io::ErrorKind::InvalidInput => ErrorCode::BadRequest,
        _ => ErrorCode::SpawnFailed,
    };
    let what = if code == ErrorCode::NotFound && !Path::new(&program).is_absolute() {
        format!("program `{program}` not found in PATH")
    } else {
        format!("cannot run `{program}`")
    };
    ErrorBody::new(code, format!("{what}: {e}"))
}

/// When the main process exited; wakes the output pumps through a pipe.
struct ExitSignal {
    at: Mutex<Option<Instant>>,
    wake: Option<(OwnedFd, OwnedFd)>,
}

impl ExitSignal {
    fn new() -> Self {
        let wake = sys::pipe().map_err(|e| log!("wake pipe: {e}")).ok();
        Self {
            at: Mutex::new(None),
            wake,
        }
    }

    fn set(&self) {
        *lock(&self.at) = Some(Instant::now());
        if let Some((_, w)) = &self.wake {
            let _ = sys::write(w.as_fd(), b"x");
        }
    }

    fn get(&self) -> Option<Instant> {
        *lock(&self.at)
    }
}

/// Copies one output pipe to `Data` frames within the flow-control window, then sends `Eof`.
fn pump_output(fd: OwnedFd, channel: Channel, tx: &StreamTx, ctl: &StreamCtl, exit: &ExitSignal) {
    let mut buf = vec![0u8; DATA_CHUNK_LEN];
    let mut scratch = Vec::with_capacity(DATA_CHUNK_LEN + 16);
    let mut last_data = Instant::now();
    // `wait_window` returns None once the stream is cancelled.
    while let Some(window) = ctl.wait_window(channel) {
        let readable = match exit.get() {
            None => {
                let mut fds = vec![sys::pollfd(fd.as_raw_fd(), libc::POLLIN)];
                if let Some((r, _)) = &exit.wake {
                    fds.push(sys::pollfd(r.as_raw_fd(), libc::POLLIN));
                }
                match sys::poll(&mut fds, -1) {
                    Ok(_) => fds[0].revents != 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                    Err(e) => {
                        log!("poll: {e}");
                        break;
                    }
                }
            }
            Some(exited_at) => {
                let now = Instant::now();
                let until =
                    (exited_at.max(last_data) + EXIT_IDLE_GRACE).min(exited_at + EXIT_HARD_CAP);
                if now >= until {
                    break;
                }
                let wait_ms = (until - now).as_millis().clamp(1, i32::MAX as u128) as i32;
                let mut fds = [sys::pollfd(fd.as_raw_fd(), libc::POLLIN)];
                match sys::poll(&mut fds, wait_ms) {
                    Ok(_) => fds[0].revents != 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                    Err(e) => {
                        log!("poll: {e}");
                        break;
                    }
                }
            }
        };
        if !readable {
            continue;
        }
        let want = (window as usize).min(DATA_CHUNK_LEN);
        match sys::read(fd.as_fd(), &mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                ctl.consume(channel, n);
                tx.data(channel, &buf[..n], &mut scratch);
                last_data = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                log!("read {channel:?}: {e}");
                break;
            }
        }
    }
    drop(fd);
    if !ctl.is_cancelled() {
        tx.eof(channel);
    }
}

/// Writes stdin `Data` from the host into the program, granting credit back as bytes are
/// written (or discarded once the program stopped reading). Ends at `Eof`, when the stream
/// closes stdin, or when the program exits.
fn pump_stdin(fd: OwnedFd, rx: &Receiver<StdinMsg>, tx: &StreamTx, done: &AtomicBool) {
    if let Err(e) = sys::set_nonblocking(fd.as_fd()) {
        log!("stdin pipe: {e}");
    }
    let mut broken = false;
    let mut credit = StdinCredit::new(tx);
    while let Ok(msg) = rx.recv() {
        let bytes = match msg {
            StdinMsg::Data(bytes) => bytes,
            StdinMsg::Eof => break,
        };
        if !broken && !done.load(Ordering::Relaxed) {
            broken = write_all_nonblocking(&fd, &bytes, done).is_err();
        }
        credit.consumed(bytes.len());
    }
    drop(fd); // closes the program's stdin
}

fn write_all_nonblocking(fd: &OwnedFd, mut bytes: &[u8], done: &AtomicBool) -> io::Result<()> {
    while !bytes.is_empty() {
        match sys::write(fd.as_fd(), bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if done.load(Ordering::Relaxed) {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "program exited"));
                }
                let mut fds = [sys::pollfd(fd.as_raw_fd(), libc::POLLOUT)];
                let _ = sys::poll(&mut fds, 50);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
