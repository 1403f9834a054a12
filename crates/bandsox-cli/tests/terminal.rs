//! `bandsox terminal` on a real pseudo-terminal against a real server and VM: raw mode while
//! the session runs, the window size sent at start and on resize (SIGWINCH), the TTY's
//! settings restored after the shell exits. And `bandsox exec` streams output as it comes;
//! `exec -t` (a pty), `-i` (stdin), `--json` (exit code) and a broken pipe; durable commands
//! and their logs. Everything twice: with auth off and with a key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, init, start_server, TestRoot, BIN};

fn open_pty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds we then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded, so both descriptors are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn lflags(fd: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: termios is plain old data; zeroed is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills the termios we own from an open descriptor.
    let rc = unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) };
    assert_eq!(rc, 0);
    t.c_lflag
}

/// Waits until the pty output contains `needle`.
fn wait_for(out: &Mutex<Vec<u8>>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if String::from_utf8_lossy(&out.lock().unwrap()).contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "`{needle}` not seen in: {}",
        String::from_utf8_lossy(&out.lock().unwrap())
    );
}

#[test]
fn terminal_on_a_pty_and_streamed_exec() {
    session(false);
}

/// The same client paths with auth on: the key goes in `BANDSOX_API_KEY`.
#[test]
fn terminal_on_a_pty_and_streamed_exec_with_auth() {
    session(true);
}

/// A `bandsox` command for the test's server (and its key).
fn bandsox(url: &str, key: Option<&str>) -> Command {
    let mut c = Command::new(BIN);
    c.env("BANDSOX_URL", url).env_remove("BANDSOX_API_KEY");
    if let Some(k) = key {
        c.env("BANDSOX_API_KEY", k);
    }
    c
}

fn session(auth: bool) {
    let root = TestRoot::new("bsxterm");
    assert!(init(root.path()).status.success());
    let key = auth.then(|| common::auth_init(root.path()).1);
    let key = key.as_deref();
    let bearer = key.map(|k| format!("Bearer {k}")).unwrap_or_default();
    let port = free_port();
    let _server = start_server(root.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let r: serde_json::Value = ureq::post(&format!("{url}/api/vms"))
        .set("Authorization", &bearer)
        .send_json(serde_json::json!({"image": "bandsox/busybox"}))
        .unwrap()
        .into_json()
        .unwrap();
    let id = r["id"].as_str().unwrap().to_owned();

    let (master, slave) = open_pty(80, 24);
    let before = lflags(&slave);
    assert_ne!(before & libc::ICANON, 0, "a fresh pty is canonical");
    let slave_fd = slave.as_raw_fd();
    // SAFETY: the pre_exec hook only calls setsid and ioctl, both async-signal-safe.
    let mut child = unsafe {
        bandsox(&url, key)
            .args(["terminal", &id])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()))
            // Its own session with the pty as controlling terminal, so resizes signal it.
            .pre_exec(move || {
                libc::setsid();
                libc::ioctl(slave_fd, libc::TIOCSCTTY, 0);
                Ok(())
            })
            .spawn()
            .unwrap()
    };
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let sink = output.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut writer = std::fs::File::from(master.try_clone().unwrap());

    // Type only once the shell prompts (as a person would).
    wait_for(&output, "# ");
    writer.write_all(b"stty size; echo hi-$((1+2))\r").unwrap();
    wait_for(&output, "hi-3");
    assert!(
        String::from_utf8_lossy(&output.lock().unwrap()).contains("24 80"),
        "initial size not sent"
    );
    assert_eq!(
        lflags(&slave) & libc::ICANON,
        0,
        "raw mode while the session runs"
    );

    // Resize the window: the kernel sends SIGWINCH, the CLI sends the new size.
    let ws = libc::winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we own.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0);
    std::thread::sleep(Duration::from_millis(300));
    writer.write_all(b"stty size\r").unwrap();
    wait_for(&output, "30 100");

    writer.write_all(b"exit\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "terminal did not end after exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(lflags(&slave), before, "the TTY's settings are restored");

    // `exec -t`: a command on a terminal of the window's size, its input typed, its exit code.
    output.lock().unwrap().clear();
    // SAFETY: the pre_exec hook only calls setsid and ioctl, both async-signal-safe.
    let mut child = unsafe {
        bandsox(&url, key)
            .args([
                "exec",
                "-it",
                &id,
                "--",
                "stty size; tty; read -r line; echo got-$line; exit 3",
            ])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()))
            .pre_exec(move || {
                libc::setsid();
                libc::ioctl(slave_fd, libc::TIOCSCTTY, 0);
                Ok(())
            })
            .spawn()
            .unwrap()
    };
    wait_for(&output, "30 100");
    wait_for(&output, "/dev/pts/");
    assert_eq!(lflags(&slave) & libc::ICANON, 0, "raw mode while it runs");
    writer.write_all(b"typed\r").unwrap();
    wait_for(&output, "got-typed");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "exec -t did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert_eq!(lflags(&slave), before, "the TTY's settings are restored");

    // `exec -i`: stdin goes to the command until it ends.
    let mut child = bandsox(&url, key)
        .args(["exec", "-i", &id, "--", "cat; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"world\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nworld\nend\n");
    // Without -i the command's stdin is empty, whatever the CLI's is.
    let mut child = bandsox(&url, key)
        .args(["exec", &id, "--", "cat; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ignored\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "end\n");
    drop(stdin);

    // `--json` exits with the command's code; `--timeout` still kills.
    let out = bandsox(&url, key)
        .args([
            "exec",
            "--json",
            &id,
            "--",
            "echo out; echo err >&2; exit 2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["exit_code"], &v["stdout"], &v["stderr"]),
        (
            &serde_json::json!(2),
            &serde_json::json!("out\n"),
            &serde_json::json!("err\n")
        ),
        "{v}"
    );
    let out = bandsox(&url, key)
        .args(["exec", "--timeout", "1", &id, "--", "sleep 5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out after 1 s"),
        "{out:?}"
    );

    // A reader that goes away (`| head -1`) ends the CLI quietly: SIGPIPE, no panic.
    let mut child = bandsox(&url, key)
        .args(["exec", &id, "--", "echo first; sleep 1; seq 1 100000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.signal() == Some(libc::SIGPIPE) || out.status.code() == Some(141),
        "{out:?}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An unknown VM: one line, exit code 3.
    let out = bandsox(&url, key)
        .args(["terminal", "no-such-vm"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // `bandsox exec` streams: the first line arrives a second before the command ends.
    let mut child = bandsox(&url, key)
        .args([
            "exec",
            &id,
            "--",
            "echo first; sleep 2; echo second; exit 7",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let t = Instant::now();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    let first_at = t.elapsed();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let end_at = t.elapsed();
    assert_eq!((&first, rest.as_str()), (b"first\n", "second\n"));
    assert_eq!(status.code(), Some(7));
    assert!(
        end_at - first_at >= Duration::from_millis(1500),
        "output was not streamed: first after {first_at:?}, end after {end_at:?}"
    );

    // A durable command: started detached, listed, its logs followed to the end.
    let run = |args: &[&str]| {
        bandsox(&url, key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&[
        "exec",
        "--detach",
        &id,
        "--",
        "echo one; sleep 1; echo two; exit 5",
    ]);
    assert!(out.status.success(), "{out:?}");
    let cmd = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = run(&["commands", &id, "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["cmd_id"] == cmd.as_str()),
        "{list}"
    );
    let out = run(&["logs", "--follow", &id, &cmd]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    assert_eq!(
        out.status.code(),
        Some(5),
        "logs --follow exits with the command's code"
    );
    let out = run(&["logs", &id, &cmd, "--stdout-from", "4"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "two\n",
        "replay from an offset"
    );
    let out = run(&["logs", &id, "no-such-command"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no command with id `no-such-command` in this VM\n\
         hint: list the VM's commands with `bandsox commands VM`\n"
    );

    ureq::delete(&format!("{url}/api/vms/{id}"))
        .set("Authorization", &bearer)
        .call()
        .unwrap();
}
