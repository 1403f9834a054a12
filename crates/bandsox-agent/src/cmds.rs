//! Durable background commands and PTY sessions.
//!
//! A command is not tied to the stream that started it: its output goes into two ring buffers
//! (stdout, stderr; a PTY has only stdout) of [`RING_BYTES`] each with absolute byte offsets,
//! and any later stream can replay and follow it (`CmdLogs`), write its stdin (`CmdStdin`),
//! signal its process group (`CmdKill`), wait for it, or resize its terminal. A host disconnect
//! cancels those streams, never the command. Finished commands are kept for at least
//! [`KEEP_FINISHED`]; at most [`MAX_COMMANDS`] are tracked at once, so memory stays bounded
//! (`MAX_COMMANDS` x 2 x `RING_BYTES` in the worst case; rings grow only as output arrives).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bandsox_protocol::frame::DATA_CHUNK_LEN;
use bandsox_protocol::{
    Channel, CmdInfo, CmdLogsRequest, CmdStartRequest, ErrorBody, ErrorCode, Event, ExitStatus,
    Reply, ReplyBody,
};

use crate::exec::{base_command, spawn_error};
use crate::log::log;
use crate::server::{Handler, StdinCredit, StdinMsg};
use crate::util::lock;
use crate::{reaper, sys};

/// Output kept per stream of each command.
pub const RING_BYTES: usize = 1 << 20;
/// Finished commands are forgotten no earlier than this.
pub const KEEP_FINISHED: Duration = Duration::from_secs(15 * 60);
/// Commands tracked at once (running and finished).
pub const MAX_COMMANDS: usize = 512;
/// After the main process exits, stop reading an output that has been idle this long (a
/// background grandchild may hold it open).
const EXIT_IDLE_GRACE: Duration = Duration::from_millis(200);
/// How often blocked waits look at cancellation.
const TICK: Duration = Duration::from_millis(100);

/// A byte ring with absolute offsets: holds bytes `[start, start + buf.len())`.
#[derive(Default)]
pub struct Ring {
    buf: VecDeque<u8>,
    start: u64,
}

impl Ring {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
        let over = self.buf.len().saturating_sub(RING_BYTES);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
    }

    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Up to `max` bytes from absolute offset `from` (clamped into the ring).
    fn read_at(&self, from: u64, max: usize) -> (u64, Vec<u8>) {
        let from = from.clamp(self.start, self.end());
        let i = (from - self.start) as usize;
        let n = max.min(self.buf.len() - i);
        let (a, b) = self.buf.as_slices();
        let mut out = Vec::with_capacity(n);
        if i < a.len() {
            let take = n.min(a.len() - i);
            out.extend_from_slice(&a[i..i + take]);
            out.extend_from_slice(&b[..n - take]);
        } else {
            out.extend_from_slice(&b[i - a.len()..i - a.len() + n]);
        }
        (from, out)
    }
}

struct CmdState {
    rings: [Ring; 2],
    status: Option<ExitStatus>,
    /// Output pumps still reading.
    open_pumps: u32,
    exited_at: Option<Instant>,
    /// Stdin pipe (or a dup of the PTY master); `None` once closed or never opened.
    stdin: Option<Arc<OwnedFd>>,
}

/// One durable command.
pub struct Cmd {
    id: String,
    pid: AtomicU32,
    command: Vec<String>,
    /// The PTY master, for resizing.
    master: Option<OwnedFd>,
    started: Instant,
    started_at_ms: u64,
    state: Mutex<CmdState>,
    cond: Condvar,
    /// Set by the timeout thread before it kills the group, so the exit status that the
    /// reaper publishes already says `timed_out` (no window where a waiter sees it without).
    timed_out: AtomicBool,
}

impl Cmd {
    fn info(&self) -> CmdInfo {
        let st = lock(&self.state);
        CmdInfo {
            cmd_id: self.id.clone(),
            pid: self.pid.load(Ordering::Relaxed),
            command: self.command.clone(),
            pty: self.master.is_some(),
            running: st.status.is_none(),
            status: st.status.clone(),
            stdout_start: st.rings[0].start,
            stdout_end: st.rings[0].end(),
            stderr_start: st.rings[1].start,
            stderr_end: st.rings[1].end(),
            started_at_ms: self.started_at_ms,
        }
    }

    fn finished(st: &CmdState) -> bool {
        st.status.is_some() && st.open_pumps == 0
    }

    fn on_exit(&self, raw: i32) {
        let (exit_code, signal) = reaper::decode_status(raw);
        let mut st = lock(&self.state);
        st.status = Some(ExitStatus {
            exit_code,
            signal,
            timed_out: self.timed_out.load(Ordering::SeqCst),
            duration_us: self.started.elapsed().as_micros() as u64,
        });
        st.exited_at = Some(Instant::now());
        // Input after exit is refused; closing our end also lets readers see EOF.
        st.stdin = None;
        self.cond.notify_all();
    }
}

struct Registry {
    cmds: Mutex<HashMap<String, Arc<Cmd>>>,
    next: AtomicU64,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry {
        cmds: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
    })
}

fn get(cmd_id: &str) -> Result<Arc<Cmd>, ErrorBody> {
    lock(&registry().cmds).get(cmd_id).cloned().ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::UnknownCommand,
            format!("no command with id `{cmd_id}`"),
        )
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Forgets finished commands older than [`KEEP_FINISHED`]; true when there is room for one more.
fn collect_garbage() -> bool {
    let mut cmds = lock(&registry().cmds);
    cmds.retain(|_, c| {
        let st = lock(&c.state);
        !(Cmd::finished(&st) && st.exited_at.is_some_and(|t| t.elapsed() > KEEP_FINISHED))
    });
    cmds.len() < MAX_COMMANDS
}

/// `CmdStart`.
pub fn start(req: CmdStartRequest, h: &Handler) -> Reply {
    match start_inner(req, h) {
        Ok((cmd_id, pid)) => Reply::Ok(ReplyBody::CmdStarted { cmd_id, pid }),
        Err(e) => Reply::Error(e),
    }
}

fn start_inner(req: CmdStartRequest, h: &Handler) -> Result<(String, u32), ErrorBody> {
    if !collect_garbage() {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("{MAX_COMMANDS} commands are tracked already; wait for some to finish"),
        ));
    }
    let exec = &req.exec;
    let shell = req.pty.map(|_| crate::users::default_shell());
    let mut cmd = base_command(exec, h.tx.base_env(), shell.as_deref(), req.pty.is_some())?;
    let mut command = match (&exec.argv, &exec.command) {
        (Some(argv), _) => argv.clone(),
        (None, Some(c)) => vec!["/bin/sh".into(), "-c".into(), c.clone()],
        (None, None) => shell.clone().into_iter().collect(),
    };
    if command.is_empty() {
        command.push(String::new());
    }
    let io_err = |e: io::Error| crate::server::io_error_body("set up the command's stdio", &e);
    let mut master = None;
    let mut stdin_fd = None;
    let mut outputs: Vec<(OwnedFd, usize)> = Vec::new();
    if let Some(size) = req.pty {
        if size.cols == 0 || size.rows == 0 {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "cols and rows must be > 0",
            ));
        }
        let (m, s) = sys::openpty(size.cols, size.rows).map_err(io_err)?;
        let s = File::from(s);
        cmd.stdin(Stdio::from(s.try_clone().map_err(io_err)?))
            .stdout(Stdio::from(s.try_clone().map_err(io_err)?))
            .stderr(Stdio::from(s));
        if !exec.env.contains_key("TERM") {
            cmd.env("TERM", "xterm-256color");
        }
        // No COLUMNS/LINES: programs such as busybox prefer them over the terminal's real
        // size, so they would stay stale after a resize.
        stdin_fd = Some(Arc::new(m.try_clone().map_err(io_err)?));
        outputs.push((m.try_clone().map_err(io_err)?, 0));
        master = Some(m);
    } else {
        crate::exec::pipe_stdio(&mut cmd, exec.stdin);
    }

    let n = registry().next.fetch_add(1, Ordering::Relaxed);
    let id = format!("cmd-{n}");
    let entry = Arc::new(Cmd {
        id: id.clone(),
        pid: AtomicU32::new(0),
        command,
        master,
        started: Instant::now(),
        started_at_ms: now_ms(),
        state: Mutex::new(CmdState {
            rings: [Ring::default(), Ring::default()],
            status: None,
            open_pumps: 0,
            exited_at: None,
            stdin: stdin_fd,
        }),
        cond: Condvar::new(),
        timed_out: AtomicBool::new(false),
    });
    let waiter_cmd = Arc::clone(&entry);
    let waiter: reaper::Waiter = Box::new(move |status| waiter_cmd.on_exit(status));
    let mut child =
        reaper::spawn_registered(&mut cmd, waiter).map_err(|e| spawn_error(exec, &e))?;
    drop(cmd); // closes our copies of the PTY slave
    let pid = child.id();
    entry.pid.store(pid, Ordering::Relaxed);
    if let Some(p) = child.stdout.take() {
        outputs.push((OwnedFd::from(p), 0));
    }
    if let Some(p) = child.stderr.take() {
        outputs.push((OwnedFd::from(p), 1));
    }
    if let Some(p) = child.stdin.take() {
        lock(&entry.state).stdin = Some(Arc::new(OwnedFd::from(p)));
    }
    drop(child);
    lock(&entry.state).open_pumps = outputs.len() as u32;
    for (fd, ring) in outputs {
        let c = Arc::clone(&entry);
        let spawned = std::thread::Builder::new()
            .name(format!("cmd-{n}-{ring}"))
            .stack_size(256 << 10)
            .spawn(move || pump(&c, &fd, ring));
        if let Err(e) = spawned {
            log!("cannot start an output pump for {id}: {e}");
            let mut st = lock(&entry.state);
            st.open_pumps -= 1;
        }
    }
    if let Some(ms) = exec.timeout_ms.filter(|&ms| ms > 0) {
        let c = Arc::clone(&entry);
        let _ = std::thread::Builder::new()
            .name(format!("cmd-{n}-timeout"))
            .stack_size(64 << 10)
            .spawn(move || {
                let deadline = Instant::now() + Duration::from_millis(ms);
                let mut st = lock(&c.state);
                while st.status.is_none() {
                    let now = Instant::now();
                    if now >= deadline {
                        // Still under the state lock: the reaper cannot publish the status
                        // between the flag and the kill.
                        c.timed_out.store(true, Ordering::SeqCst);
                        drop(st);
                        let _ = sys::kill(-(pid as i32), libc::SIGKILL);
                        return;
                    }
                    st = c
                        .cond
                        .wait_timeout(st, deadline - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
            });
    }
    lock(&registry().cmds).insert(id.clone(), entry);
    Ok((id, pid))
}

/// Copies one output (pipe or PTY master) into the command's ring.
fn pump(c: &Cmd, fd: &OwnedFd, ring: usize) {
    let mut buf = vec![0u8; 64 << 10];
    let mut last_data = Instant::now();
    loop {
        let exited_at = lock(&c.state).exited_at;
        if let Some(t) = exited_at {
            if Instant::now() >= t.max(last_data) + EXIT_IDLE_GRACE {
                break;
            }
        }
        let mut fds = [sys::pollfd(fd.as_raw_fd(), libc::POLLIN)];
        match sys::poll(&mut fds, TICK.as_millis() as i32) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log!("{}: poll: {e}", c.id);
                break;
            }
        }
        match sys::read(fd.as_fd(), &mut buf) {
            // EIO: every holder of the PTY slave closed it.
            Ok(0) => break,
            Ok(n) => {
                last_data = Instant::now();
                let mut st = lock(&c.state);
                st.rings[ring].push(&buf[..n]);
                c.cond.notify_all();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                log!("{}: read output: {e}", c.id);
                break;
            }
        }
    }
    let mut st = lock(&c.state);
    st.open_pumps = st.open_pumps.saturating_sub(1);
    c.cond.notify_all();
}

/// `CmdLogs`: replay from the requested offsets, then follow.
pub fn logs(req: CmdLogsRequest, h: &Handler) -> Reply {
    let c = match get(&req.cmd_id) {
        Ok(c) => c,
        Err(e) => return Reply::Error(e),
    };
    let channels = [Channel::Stdout, Channel::Stderr];
    let mut offsets = {
        let st = lock(&c.state);
        [
            req.stdout_from.clamp(st.rings[0].start, st.rings[0].end()),
            req.stderr_from.clamp(st.rings[1].start, st.rings[1].end()),
        ]
    };
    h.tx.event(&Event::LogStart {
        stdout_offset: offsets[0],
        stderr_offset: offsets[1],
    });
    let mut scratch = Vec::with_capacity(DATA_CHUNK_LEN + 16);
    loop {
        if h.ctl.is_cancelled() {
            return Reply::Error(ErrorBody::new(ErrorCode::Internal, "cancelled"));
        }
        let mut sent = false;
        let mut blocked = false;
        let mut gap = false;
        for (i, ch) in channels.iter().enumerate() {
            let window = h.ctl.window_now(*ch) as usize;
            let (from, bytes) = {
                let st = lock(&c.state);
                if offsets[i] >= st.rings[i].end() {
                    continue;
                }
                if window == 0 {
                    blocked = true;
                    continue;
                }
                st.rings[i].read_at(offsets[i], window.min(DATA_CHUNK_LEN))
            };
            if from != offsets[i] {
                gap = true; // the reader fell behind the ring
            }
            h.ctl.consume(*ch, bytes.len());
            h.tx.data(*ch, &bytes, &mut scratch);
            offsets[i] = from + bytes.len() as u64;
            sent = true;
        }
        if gap {
            h.tx.event(&Event::LogStart {
                stdout_offset: offsets[0],
                stderr_offset: offsets[1],
            });
        }
        if sent {
            continue;
        }
        if blocked {
            h.ctl.wait_credit(TICK);
            continue;
        }
        // Caught up on both streams.
        let st = lock(&c.state);
        if !req.follow || Cmd::finished(&st) {
            break;
        }
        let _ = c.cond.wait_timeout(st, TICK);
    }
    h.tx.eof(Channel::Stdout);
    h.tx.eof(Channel::Stderr);
    Reply::Ok(ReplyBody::CmdLogs {
        stdout_offset: offsets[0],
        stderr_offset: offsets[1],
        info: c.info(),
    })
}

/// `CmdWait`: until exit (and output drained), the timeout, or cancellation.
pub fn wait(cmd_id: &str, timeout_ms: Option<u64>, h: &Handler) -> Reply {
    let c = match get(cmd_id) {
        Ok(c) => c,
        Err(e) => return Reply::Error(e),
    };
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut st = lock(&c.state);
    while !Cmd::finished(&st) && !h.ctl.is_cancelled() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        st = c
            .cond
            .wait_timeout(st, TICK)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    drop(st);
    Reply::Ok(ReplyBody::Cmd(c.info()))
}

/// `CmdKill`: signal the command's process group.
pub fn kill(cmd_id: &str, signal: &str) -> Reply {
    let c = match get(cmd_id) {
        Ok(c) => c,
        Err(e) => return Reply::Error(e),
    };
    let Some(sig) = signal_number(signal) else {
        return Reply::Error(ErrorBody::new(
            ErrorCode::UnknownSignal,
            format!("unknown signal `{signal}`"),
        ));
    };
    let pid = c.pid.load(Ordering::Relaxed) as i32;
    match sys::kill(-pid, sig) {
        Ok(()) => Reply::Ok(ReplyBody::Done),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Reply::Error(ErrorBody::new(
            ErrorCode::Exited,
            format!("command {cmd_id} has exited and left no process"),
        )),
        Err(e) => Reply::Error(crate::server::io_error_body("kill", &e)),
    }
}

/// `CmdStdin`: copy the stream's stdin data into the command.
pub fn stdin(cmd_id: &str, close: bool, h: Handler) -> Reply {
    let c = match get(cmd_id) {
        Ok(c) => c,
        Err(e) => return Reply::Error(e),
    };
    let fd = {
        let st = lock(&c.state);
        if st.status.is_some() {
            return Reply::Error(ErrorBody::new(
                ErrorCode::Exited,
                format!("command {cmd_id} has exited; it takes no more input"),
            ));
        }
        match &st.stdin {
            Some(fd) => Arc::clone(fd),
            None => {
                return Reply::Error(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("command {cmd_id} has no open stdin (start it with stdin: true)"),
                ))
            }
        }
    };
    if let Err(e) = sys::set_nonblocking(fd.as_fd()) {
        log!("{cmd_id}: stdin nonblocking: {e}");
    }
    let mut written = 0u64;
    let mut credit = StdinCredit::new(&h.tx);
    while let Ok(msg) = h.stdin_rx.recv() {
        let bytes = match msg {
            StdinMsg::Data(b) => b,
            StdinMsg::Eof => break,
        };
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match sys::write(fd.as_fd(), rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if h.ctl.is_cancelled() || lock(&c.state).status.is_some() {
                        return Reply::Error(ErrorBody::new(
                            ErrorCode::Exited,
                            format!("command {cmd_id} exited while input was pending"),
                        ));
                    }
                    let mut fds = [sys::pollfd(fd.as_raw_fd(), libc::POLLOUT)];
                    let _ = sys::poll(&mut fds, TICK.as_millis() as i32);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Reply::Error(ErrorBody::new(
                        ErrorCode::Exited,
                        format!("command {cmd_id} closed its stdin"),
                    ))
                }
                Err(e) => return Reply::Error(crate::server::io_error_body("write stdin", &e)),
            }
        }
        written += bytes.len() as u64;
        credit.consumed(bytes.len());
    }
    if close {
        let mut st = lock(&c.state);
        if c.master.is_none() {
            st.stdin = None;
        } else if st.status.is_none() {
            // A terminal has no EOF of its own: send ^D.
            let _ = sys::write(fd.as_fd(), b"\x04");
        }
    }
    let _ = written;
    Reply::Ok(ReplyBody::Done)
}

/// `CmdResize`.
pub fn resize(cmd_id: &str, cols: u16, rows: u16) -> Reply {
    let c = match get(cmd_id) {
        Ok(c) => c,
        Err(e) => return Reply::Error(e),
    };
    let Some(master) = &c.master else {
        return Reply::Error(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("command {cmd_id} has no terminal"),
        ));
    };
    if lock(&c.state).status.is_some() {
        return Reply::Error(ErrorBody::new(
            ErrorCode::Exited,
            format!("command {cmd_id} has exited"),
        ));
    }
    if cols == 0 || rows == 0 {
        return Reply::Error(ErrorBody::new(
            ErrorCode::BadRequest,
            "cols and rows must be > 0",
        ));
    }
    match sys::set_winsize(master.as_fd(), cols, rows) {
        Ok(()) => Reply::Ok(ReplyBody::Done),
        Err(e) => Reply::Error(crate::server::io_error_body("resize", &e)),
    }
}

/// `CmdList`.
pub fn list() -> Reply {
    collect_garbage();
    let cmds: Vec<Arc<Cmd>> = lock(&registry().cmds).values().cloned().collect();
    let mut commands: Vec<CmdInfo> = cmds.iter().map(|c| c.info()).collect();
    commands.sort_by_key(|c| (c.started_at_ms, c.cmd_id.clone()));
    Reply::Ok(ReplyBody::Cmds { commands })
}

/// A signal by number or name (`TERM`, `SIGTERM`, `sigterm`).
pub fn signal_number(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => {
            let rt = name.strip_prefix("RTMIN")?;
            let off = if rt.is_empty() {
                0
            } else {
                rt.strip_prefix('+')?.parse::<i32>().ok()?
            };
            let n = libc::SIGRTMIN() + off;
            return (n <= libc::SIGRTMAX()).then_some(n);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_absolute_offsets() {
        let mut r = Ring::default();
        let data: Vec<u8> = (0..RING_BYTES + 1000).map(|i| (i % 251) as u8).collect();
        r.push(&data[..500]);
        r.push(&data[500..]);
        assert_eq!(r.start, 1000);
        assert_eq!(r.end(), data.len() as u64);
        let (from, got) = r.read_at(0, 10);
        assert_eq!(from, 1000);
        assert_eq!(got, &data[1000..1010]);
        let (from, got) = r.read_at(5000, 70_000);
        assert_eq!(from, 5000);
        assert_eq!(got, &data[5000..75_000]);
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("TERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("sigkill"), Some(9));
        assert_eq!(signal_number("SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(signal_number("2"), Some(2));
        assert_eq!(signal_number("RTMIN+2"), Some(libc::SIGRTMIN() + 2));
        assert_eq!(signal_number("NOPE"), None);
        assert_eq!(signal_number("0"), None);
    }
}
