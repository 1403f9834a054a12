//! `bandsox terminal VM`: an interactive shell in the VM over the terminal WebSocket (binary
//! subprotocol, exact bytes). The local TTY is put in raw mode and restored however the
//! session ends (shell exit, server gone, error, panic); the window size is sent at the start
//! and again on every SIGWINCH. With stdin not a TTY the input is piped to the shell and an
//! end of input ends the shell (a Ctrl-D is sent).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::client::{segment, CliError, Client};
use crate::ws;
use crate::CliResult;

/// Set by the SIGWINCH handler, taken by the session loop.
static WINDOW_CHANGED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_winch(_: libc::c_int) {
    WINDOW_CHANGED.store(true, Ordering::Relaxed);
}

/// The terminal's settings before raw mode, put back on drop.
struct RawMode(libc::termios);

impl RawMode {
    fn enable() -> Result<Self, CliError> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return Err(CliError::new(format!(
                    "cannot read the terminal settings: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return Err(CliError::new(format!(
                    "cannot switch the terminal to raw mode: {}",
                    std::io::Error::last_os_error()
                )));
            }
            Ok(Self(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

/// Columns and rows of the terminal on stdout (or stdin), if there is one.
fn window_size() -> Option<(u16, u16)> {
    for fd in [1, 0] {
        // SAFETY: winsize is plain old data; zeroed is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills the winsize we own.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_col > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

/// Reads stdin on its own thread in chunks of up to `chunk` bytes; `None` marks its end (EOF
/// or a read error). The thread stops when the receiver is dropped.
pub(crate) fn read_stdin(chunk: usize) -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; chunk];
        loop {
            match stdin.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

pub fn run(url: &str, vm: &str) -> CliResult {
    run_command(url, vm, None)
}

/// A terminal session running `command` (a shell command line) instead of the shell
/// (`bandsox exec -t`); exits with its exit code.
pub fn run_command(url: &str, vm: &str, command: Option<&str>) -> CliResult {
    let client = Client::new(url);
    let tty = std::io::stdin().is_terminal();
    let (cols, rows) = window_size().unwrap_or((80, 24));
    let command = command.map_or_else(String::new, |c| format!("&command={}", segment(c)));
    let mut sock = ws::connect(
        &client,
        &format!(
            "/api/vms/{}/terminal?cols={cols}&rows={rows}{command}",
            segment(vm)
        ),
        &["bandsox.terminal.binary"],
        Some(Duration::from_millis(20)),
    )?;
    // SAFETY: the handler only stores to an atomic; SA_RESTART keeps blocking reads going.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_winch as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGWINCH, &sa, std::ptr::null_mut());
    }
    let raw = if tty { Some(RawMode::enable()?) } else { None };

    let rx = read_stdin(4096);
    let result = session(&mut sock, &rx, vm);
    drop(raw);
    result
}

fn session(sock: &mut ws::Socket, input: &mpsc::Receiver<Option<Vec<u8>>>, vm: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    let mut stdin_open = true;
    loop {
        match sock.read() {
            Ok(Message::Binary(b)) => {
                let _ = out.write_all(&b);
                let _ = out.flush();
            }
            Ok(Message::Text(t)) => {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            Ok(Message::Close(frame)) => {
                return match frame {
                    Some(f) if f.code == CloseCode::Library(4004) => Err(CliError {
                        message: format!("VM `{vm}` not found"),
                        hint: Some("list VMs with `bandsox vm list`".into()),
                        exit_code: 3,
                    }),
                    Some(f) if f.code == CloseCode::Library(4000) => {
                        Err(CliError::new(format!("cannot start a shell: {}", f.reason)))
                    }
                    // `exit_code N`: how the shell or command ended.
                    Some(f) => Ok(f
                        .reason
                        .strip_prefix("exit_code ")
                        .and_then(|c| c.parse::<i64>().ok())
                        .map_or(ExitCode::SUCCESS, |c| ExitCode::from(c.clamp(0, 255) as u8))),
                    None => Ok(ExitCode::SUCCESS),
                };
            }
            Ok(_) => {}
            Err(e) if ws::timed_out(&e) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(ExitCode::SUCCESS)
            }
            Err(e) => return Err(CliError::new(format!("terminal connection lost: {e}"))),
        }
        while stdin_open {
            match input.try_recv() {
                Ok(Some(bytes)) => send(sock, Message::Binary(bytes.into()))?,
                // End of input: Ctrl-D ends the shell as it would at a prompt.
                Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                    stdin_open = false;
                    send(sock, Message::Binary(vec![4u8].into()))?;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if WINDOW_CHANGED.swap(false, Ordering::Relaxed) {
            if let Some((cols, rows)) = window_size() {
                let resize = serde_json::json!({"type": "resize", "cols": cols, "rows": rows});
                send(sock, Message::Text(resize.to_string().into()))?;
            }
        }
    }
}

fn send(sock: &mut ws::Socket, m: Message) -> Result<(), CliError> {
    sock.send(m)
        .map_err(|e| CliError::new(format!("terminal connection lost: {e}")))
}
