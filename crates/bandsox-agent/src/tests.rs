//! End-to-end tests of the protocol server over an in-process socket pair, running real
//! programs on the test host (no mounts: the agent is not PID 1 here).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bandsox_protocol::frame::{self, INITIAL_WINDOW};
use bandsox_protocol::{
    decode_json, Channel, ErrorCode, Event, ExitStatus, Frame, FrameDecoder, FrameKind, Reply,
    ReplyBody,
};

use crate::server::{Agent, AgentConfig, ShutdownAction};
use crate::transport::{Connection, OnceConnector};

struct Client {
    sock: UnixStream,
    decoder: FrameDecoder,
    next_id: u32,
    /// Frames read while looking for another stream's.
    backlog: Vec<Frame>,
}

#[derive(Debug, Default)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    eofs: Vec<Channel>,
    started_pid: Option<u32>,
    stdin_credit: u64,
    stdin_credit_frames: u32,
    reply: Option<Reply>,
}

impl Outcome {
    fn exited(&self) -> &ExitStatus {
        match &self.reply {
            Some(Reply::Ok(ReplyBody::Exited(s))) => s,
            other => panic!("expected exited, got {other:?}"),
        }
    }

    fn error_code(&self) -> ErrorCode {
        match &self.reply {
            Some(Reply::Error(e)) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

fn start() -> Client {
    crate::reaper::start();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let agent = Agent::new(AgentConfig {
        base_env: crate::boot::base_env(),
        shutdown: ShutdownAction::Ignore,
    });
    // Downloads are written to the socket from a file mapping, as to the serial port in a VM.
    let channel_fd: std::os::fd::OwnedFd = theirs.try_clone().unwrap().into();
    let conn = Connection {
        reader: Box::new(theirs.try_clone().unwrap()),
        writer: Box::new(theirs),
        channel_fd: Some(std::sync::Arc::new(channel_fd)),
    };
    std::thread::spawn(move || agent.serve(&mut OnceConnector(Some(conn))));
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    Client {
        sock: ours,
        decoder: FrameDecoder::new(),
        next_id: 1,
        backlog: Vec::new(),
    }
}

impl Client {
    fn send_raw(&mut self, kind: FrameKind, id: u32, payload: &[u8]) {
        let mut out = Vec::new();
        frame::encode_frame(&mut out, id, kind, payload);
        self.sock.write_all(&out).unwrap();
    }

    fn request(&mut self, json: &str) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(FrameKind::Request, id, json.as_bytes());
        id
    }

    fn next_frame(&mut self) -> Frame {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.decoder.next_frame().unwrap() {
                return f;
            }
            let n = self.sock.read(&mut buf).expect("agent answered in time");
            assert!(n > 0, "agent closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }

    fn frame_for(&mut self, id: u32) -> Frame {
        if let Some(i) = self.backlog.iter().position(|f| f.stream == id) {
            return self.backlog.remove(i);
        }
        loop {
            let f = self.next_frame();
            if f.stream == id {
                return f;
            }
            self.backlog.push(f);
        }
    }

    /// Reads stream `id` to its reply, granting credit for everything received when `credit`.
    fn collect(&mut self, id: u32, credit: bool) -> Outcome {
        let mut out = Outcome::default();
        loop {
            let f = self.frame_for(id);
            match f.kind {
                FrameKind::Data => {
                    let (ch, bytes) = f.channel_payload().unwrap();
                    match ch {
                        Channel::Stdout => out.stdout.extend_from_slice(bytes),
                        Channel::Stderr => out.stderr.extend_from_slice(bytes),
                        Channel::Stdin => panic!("stdin data from the agent"),
                    }
                    if credit {
                        let mut c = Vec::new();
                        frame::encode_credit(&mut c, id, ch, bytes.len() as u32);
                        self.sock.write_all(&c).unwrap();
                    }
                }
                FrameKind::Eof => out.eofs.push(f.channel_payload().unwrap().0),
                FrameKind::Credit => {
                    out.stdin_credit += u64::from(f.credit().unwrap().1);
                    out.stdin_credit_frames += 1;
                }
                FrameKind::Event => {
                    let Event::Started { pid } = decode_json(&f.payload).unwrap() else {
                        panic!("expected started")
                    };
                    out.started_pid = Some(pid);
                }
                FrameKind::Reply => {
                    out.reply = Some(decode_json(&f.payload).unwrap());
                    return out;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn call(&mut self, json: &str) -> Outcome {
        let id = self.request(json);
        self.collect(id, true)
    }
}

#[test]
fn hello_ping_and_bad_requests() {
    let mut c = start();
    let hello = c.call(r#"{"op":"hello","version":1}"#);
    match hello.reply {
        Some(Reply::Ok(ReplyBody::Hello(h))) => {
            assert_eq!(h.version, bandsox_protocol::PROTOCOL_VERSION);
            assert!(h.software.starts_with("bandsox-agent "));
            assert!(h.capabilities.iter().any(|c| c == "exec"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.call(r#"{"op":"ping"}"#).reply,
        Some(Reply::Ok(ReplyBody::Pong))
    );
    assert_eq!(
        c.call(r#"{"op":"teleport","to":"mars"}"#).error_code(),
        ErrorCode::Unsupported
    );
    assert_eq!(c.call("not json").error_code(), ErrorCode::BadRequest);
    assert_eq!(
        c.call(r#"{"op":"exec","argv":"no"}"#).error_code(),
        ErrorCode::BadRequest
    );
    assert_eq!(
        c.call(r#"{"op":"exec","argv":["true"],"command":"true"}"#)
            .error_code(),
        ErrorCode::BadRequest
    );
    assert_eq!(
        c.call(r#"{"op":"exec"}"#).error_code(),
        ErrorCode::BadRequest
    );
    assert_eq!(
        c.call(r#"{"op":"exec","argv":[]}"#).error_code(),
        ErrorCode::BadRequest
    );
    // A known operation with a bad body is a bad request, never "unsupported".
    assert_eq!(
        c.call(r#"{"op":"add_entropy","bytes":"no"}"#).error_code(),
        ErrorCode::BadRequest
    );
    // Garbage frame kinds reset the decoder; the connection stays usable.
    c.sock.write_all(&[1, 0, 0, 0, 9, 0, 0, 0, 99, 0]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        c.call(r#"{"op":"ping"}"#).reply,
        Some(Reply::Ok(ReplyBody::Pong))
    );
}

#[test]
fn exec_streams_output_and_exit_code() {
    let mut c = start();
    let o = c.call(r#"{"op":"exec","command":"echo hi; echo err >&2; exit 3"}"#);
    assert_eq!(o.stdout, b"hi\n");
    assert_eq!(o.stderr, b"err\n");
    assert!(o.started_pid.is_some());
    assert!(o.eofs.contains(&Channel::Stdout) && o.eofs.contains(&Channel::Stderr));
    let st = o.exited();
    assert_eq!(
        (st.exit_code, st.signal, st.timed_out),
        (Some(3), None, false)
    );
    assert!(st.duration_us > 0);

    let o = c.call(r#"{"op":"exec","argv":["sh","-c","echo \"$FOO:$PWD:$HOME\""],"env":{"FOO":"bar"},"cwd":"/tmp"}"#);
    assert_eq!(o.stdout, b"bar:/tmp:/root\n");
    assert_eq!(o.exited().exit_code, Some(0));

    let o = c.call(r#"{"op":"exec","argv":["sh","-c","kill -TERM $$"]}"#);
    assert_eq!(o.exited().signal, Some(libc::SIGTERM));
}

#[test]
fn exec_errors() {
    let mut c = start();
    let o = c.call(r#"{"op":"exec","argv":["definitely-not-a-program-xyz"]}"#);
    assert_eq!(o.error_code(), ErrorCode::NotFound);
    assert!(o.started_pid.is_none());
    let o = c.call(r#"{"op":"exec","command":"true","cwd":"/nonexistent/dir"}"#);
    assert_eq!(o.error_code(), ErrorCode::NotFound);
    let o = c.call(r#"{"op":"exec","argv":["/etc/passwd"]}"#);
    assert_eq!(o.error_code(), ErrorCode::PermissionDenied);
}

#[test]
fn exec_stdin_roundtrip_with_credit() {
    let mut c = start();
    let id = c.request(r#"{"op":"exec","argv":["cat"],"stdin":true}"#);
    let payload = vec![b'x'; 600_000];
    for chunk in payload.chunks(60_000) {
        let mut out = Vec::new();
        frame::encode_data(&mut out, id, Channel::Stdin, chunk);
        c.sock.write_all(&out).unwrap();
    }
    let mut out = Vec::new();
    frame::encode_eof(&mut out, id, Channel::Stdin);
    c.sock.write_all(&out).unwrap();
    let o = c.collect(id, true);
    assert_eq!(o.stdout.len(), payload.len());
    assert_eq!(o.exited().exit_code, Some(0));
    // Credit comes back in batches of at least CREDIT_BATCH_BYTES; a smaller tail is never
    // granted (the stream ended, nobody waits for it). 10 frames of 60 000: two batches of 5.
    assert_eq!(o.stdin_credit, payload.len() as u64);
    assert_eq!(o.stdin_credit_frames, 2);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let mut c = start();
    let t0 = Instant::now();
    let o = c.call(r#"{"op":"exec","command":"sleep 100 & sleep 100","timeout_ms":300}"#);
    let st = o.exited();
    assert!(st.timed_out);
    assert_eq!(st.signal, Some(libc::SIGKILL));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn background_grandchild_does_not_hold_the_reply() {
    let mut c = start();
    let t0 = Instant::now();
    let o = c.call(r#"{"op":"exec","command":"sleep 3 & echo started"}"#);
    assert_eq!(o.stdout, b"started\n");
    assert_eq!(o.exited().exit_code, Some(0));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn cancel_kills_the_program() {
    let mut c = start();
    let id = c.request(r#"{"op":"exec","command":"sleep 100"}"#);
    let f = c.frame_for(id);
    assert_eq!(f.kind, FrameKind::Event);
    c.send_raw(FrameKind::Cancel, id, &[]);
    let o = c.collect(id, true);
    assert_eq!(o.exited().signal, Some(libc::SIGKILL));
    assert!(!o.exited().timed_out);
}

#[test]
fn output_respects_the_credit_window() {
    let mut c = start();
    let total = 3 * INITIAL_WINDOW as usize;
    let id = c.request(&format!(
        r#"{{"op":"exec","command":"head -c {total} /dev/zero"}}"#
    ));
    // Read without granting credit: the agent must stop at the initial window.
    let mut got = 0usize;
    c.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 65536];
    loop {
        while let Some(f) = c.decoder.next_frame().unwrap() {
            if f.kind == FrameKind::Data {
                got += f.payload.len() - 1;
            }
        }
        match c.sock.read(&mut buf) {
            Ok(n) => c.decoder.push(&buf[..n]),
            Err(_) => break, // quiet: the agent is waiting for credit
        }
    }
    assert_eq!(got, INITIAL_WINDOW as usize);
    c.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut credit = Vec::new();
    frame::encode_credit(&mut credit, id, Channel::Stdout, INITIAL_WINDOW);
    c.sock.write_all(&credit).unwrap();
    let o = c.collect(id, true);
    assert_eq!(got + o.stdout.len(), total);
    assert_eq!(o.exited().exit_code, Some(0));
}

#[test]
fn concurrent_streams_are_independent() {
    let mut c = start();
    let slow = c.request(r#"{"op":"exec","command":"sleep 1; echo slow"}"#);
    let fast = c.request(r#"{"op":"exec","command":"echo fast"}"#);
    let t0 = Instant::now();
    let f = c.collect(fast, true);
    assert_eq!(f.stdout, b"fast\n");
    assert!(t0.elapsed() < Duration::from_millis(900));
    assert_eq!(c.collect(slow, true).stdout, b"slow\n");
}

#[test]
fn disconnect_cancels_running_programs() {
    let mut c = start();
    let id = c.request(r#"{"op":"exec","command":"sleep 100"}"#);
    let o = c.frame_for(id);
    let Event::Started { pid } = decode_json(&o.payload).unwrap() else {
        panic!("expected started")
    };
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "pid {pid} survived the disconnect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hello_starts_a_new_session() {
    let mut c = start();
    let id = c.request(r#"{"op":"exec","command":"sleep 100"}"#);
    let f = c.frame_for(id);
    let Event::Started { pid } = decode_json(&f.payload).unwrap() else {
        panic!("expected started")
    };
    // Same byte stream, but the host says hello again (as after a snapshot restore).
    let hello = c.call(r#"{"op":"hello","version":1}"#);
    assert!(matches!(hello.reply, Some(Reply::Ok(ReplyBody::Hello(_)))));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "pid {pid} survived the new hello"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The old stream's frames are dropped: the next thing on the wire is the ping's pong.
    let ping = c.request(r#"{"op":"ping"}"#);
    let f = c.next_frame();
    assert_eq!((f.stream, f.kind), (ping, FrameKind::Reply));
    assert!(c.backlog.iter().all(|f| f.stream != id));
}

#[test]
fn file_read_sends_whole_frames_from_a_mapping() {
    let mut c = start();
    let path = std::env::temp_dir().join(format!("bandsox-agent-read-{}", std::process::id()));
    // Larger than one mapping window, so the window moves.
    let data: Vec<u8> = (0..(9 << 20) + 12_345u32)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    // An unaligned start: the mapping starts at the page below it.
    let offset = 1000usize;
    let id = c.request(&format!(
        r#"{{"op":"file_read","path":"{}","offset":{offset}}}"#,
        path.display()
    ));
    let o = c.collect(id, true);
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(o.reply, Some(Reply::Ok(ReplyBody::FileRead { sent_bytes, truncated: false, .. })) if sent_bytes == (data.len() - offset) as u64),
        "{:?}",
        o.reply
    );
    assert_eq!(o.eofs, vec![Channel::Stdout]);
    assert!(o.stdout == data[offset..], "downloaded bytes differ");
}

#[test]
fn file_read_of_an_unmappable_file_falls_back_to_reading() {
    // A sysfs attribute: a regular file with a size of a page that cannot be mapped.
    let path = "/sys/kernel/uevent_seqnum";
    let Ok(expected) = std::fs::read(path) else {
        eprintln!("{path} is not readable here; skipping");
        return;
    };
    let mut c = start();
    let o = c.call(&format!(r#"{{"op":"file_read","path":"{path}"}}"#));
    assert!(
        matches!(o.reply, Some(Reply::Ok(ReplyBody::FileRead { .. }))),
        "{:?}",
        o.reply
    );
    // The counter may move between the two reads; the digits' shape is what matters.
    assert!(o.stdout.len().abs_diff(expected.len()) <= 1);
    assert!(o.stdout.ends_with(b"\n"));
}

#[test]
fn file_read_of_a_pseudo_file_reads_to_its_end() {
    // procfs files say size 0 and have content.
    let path = "/proc/self/status";
    let mut c = start();
    let o = c.call(&format!(r#"{{"op":"file_read","path":"{path}"}}"#));
    let Some(Reply::Ok(ReplyBody::FileRead {
        size, sent_bytes, ..
    })) = o.reply
    else {
        panic!("{:?}", o.reply)
    };
    assert!(sent_bytes > 0 && size == sent_bytes, "{size} {sent_bytes}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("VmRSS:") || text.contains("Name:"), "{text}");
}

#[test]
fn file_read_of_a_file_that_shrinks_fails_and_keeps_the_channel_in_step() {
    let mut c = start();
    let path = std::env::temp_dir().join(format!("bandsox-agent-shrink-{}", std::process::id()));
    std::fs::write(&path, vec![7u8; 20 << 20]).unwrap();
    let id = c.request(&format!(
        r#"{{"op":"file_read","path":"{}"}}"#,
        path.display()
    ));
    // Take the first window's worth without granting credit: the agent then waits.
    let mut got = 0usize;
    while got < INITIAL_WINDOW as usize {
        let f = c.frame_for(id);
        assert_eq!(f.kind, FrameKind::Data);
        got += f.channel_payload().unwrap().1.len();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut credit = Vec::new();
    frame::encode_credit(&mut credit, id, Channel::Stdout, INITIAL_WINDOW);
    c.sock.write_all(&credit).unwrap();
    let o = c.collect(id, true);
    std::fs::remove_file(&path).unwrap();
    match &o.reply {
        Some(Reply::Error(e)) => assert!(e.message.contains("shrank"), "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    // Every frame was whole: the next request is understood.
    let pong = c.call(r#"{"op":"ping"}"#);
    assert!(
        matches!(pong.reply, Some(Reply::Ok(ReplyBody::Pong))),
        "{:?}",
        pong.reply
    );
}
