//! Commands inside a real VM (QEMU/TCG): blocking exec extras, streaming exec, durable
//! background commands (logs by offset across a reconnect, kill of a process tree, stdin,
//! ring buffer), PTY sessions and exec_python's error path. One VM for the whole file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bandsox_core::guest::{ExecEvent, LogEvent, LogStream, PtyStart, PythonRequest};
use bandsox_core::{CoreError, CreateVm, Manager, ManagerConfig};
use bandsox_protocol::{ErrorCode, ExecRequest};
use common::fresh_storage;

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        timeout_ms: Some(60_000),
        ..Default::default()
    }
}

fn guest_code(r: Result<impl std::fmt::Debug, CoreError>) -> ErrorCode {
    match r {
        Err(CoreError::Guest(e)) => e.code,
        other => panic!("expected a guest error, got {other:?}"),
    }
}

async fn out(mgr: &Manager, id: &str, cmd: &str) -> String {
    let o = mgr.exec(id, sh(cmd), None, 1 << 20).await.unwrap();
    String::from_utf8(o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_in_a_real_vm() {
    let ts = fresh_storage();
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let vm = mgr
        .create_vm(CreateVm::new("bandsox/busybox"))
        .await
        .unwrap();
    let id = vm.id.clone();
    let t = Instant::now();

    blocking_exec_extras(&mgr, &id).await;
    eprintln!("blocking exec: {:?}", t.elapsed());
    streaming_exec(&mgr, &id).await;
    eprintln!("streaming: {:?}", t.elapsed());
    durable_commands_survive_reconnect(&mgr, &id).await;
    eprintln!("durable: {:?}", t.elapsed());
    kill_process_tree(&mgr, &id).await;
    eprintln!("kill: {:?}", t.elapsed());
    background_stdin_ring_and_list(&mgr, &id).await;
    eprintln!("stdin/ring: {:?}", t.elapsed());
    pty_session(&mgr, &id).await;
    eprintln!("pty: {:?}", t.elapsed());
    python_without_python(&mgr, &id).await;

    mgr.delete_vm(&id).await.unwrap();
}

async fn blocking_exec_extras(mgr: &Manager, id: &str) {
    // User by name and by uid, resolved from the image's /etc/passwd.
    let mut req = sh("id -u; id -g; echo $HOME");
    req.user = Some("nobody".into());
    let o = mgr.exec(id, req, None, 1 << 20).await.unwrap();
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "65534\n65534\n/nonexistent\n"
    );
    let mut req = sh("id -u");
    req.user = Some("0".into());
    let o = mgr.exec(id, req, None, 1 << 20).await.unwrap();
    assert_eq!(o.stdout, b"0\n");
    let mut req = sh("true");
    req.user = Some("mallory".into());
    assert_eq!(
        guest_code(mgr.exec(id, req, None, 1 << 20).await),
        ErrorCode::UnknownUser
    );

    // stdin bytes (every byte value) round trip through cat.
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let req = ExecRequest {
        argv: Some(vec!["cat".into()]),
        ..Default::default()
    };
    let o = mgr
        .exec(id, req, Some(data.clone()), 1 << 20)
        .await
        .unwrap();
    assert_eq!(o.status.exit_code, Some(0));
    assert_eq!(o.stdout, data);

    // Output beyond the cap is counted, not silently dropped.
    let o = mgr
        .exec(id, sh("head -c 300000 /dev/zero"), None, 1000)
        .await
        .unwrap();
    assert_eq!(o.stdout.len(), 1000);
    assert_eq!(o.stdout_dropped, 299_000);

    // The timeout kills the whole process group.
    let mut req = sh("sleep 1000 & sleep 1000");
    req.timeout_ms = Some(500);
    let o = mgr.exec(id, req, None, 1 << 20).await.unwrap();
    assert!(o.status.timed_out);
    assert_eq!(sleepers(mgr, id).await, 0);
}

/// Number of processes named `sleep` in the guest.
async fn sleepers(mgr: &Manager, id: &str) -> usize {
    let s = out(
        mgr,
        id,
        "for f in /proc/[0-9]*/comm; do cat $f 2>/dev/null; done | grep -c '^sleep$'",
    )
    .await;
    s.trim().parse().unwrap()
}

async fn streaming_exec(mgr: &Manager, id: &str) {
    let mut s = mgr
        .exec_stream(id, sh("echo a; sleep 0.5; echo b >&2; exit 5"), None)
        .await
        .unwrap();
    let mut events = Vec::new();
    let mut times = Vec::new();
    let t = Instant::now();
    while let Some(ev) = s.next().await.unwrap() {
        times.push(t.elapsed());
        events.push(ev);
    }
    assert!(matches!(events[0], ExecEvent::Started { .. }), "{events:?}");
    assert_eq!(events[1], ExecEvent::Stdout(b"a\n".to_vec()));
    assert_eq!(events[2], ExecEvent::Stderr(b"b\n".to_vec()));
    assert!(matches!(&events[3], ExecEvent::Exited(st) if st.exit_code == Some(5)));
    // "a" arrived before the sleep ended: output is streamed, not batched.
    assert!(
        times[2] - times[1] >= Duration::from_millis(300),
        "{times:?}"
    );
}

async fn durable_commands_survive_reconnect(mgr: &Manager, id: &str) {
    let started = mgr
        .cmd_start(
            id,
            ExecRequest {
                command: Some(
                    "i=0; while [ $i -lt 40 ]; do echo line$i; echo e$i >&2; i=$((i+1)); sleep 0.05; done".into(),
                ),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(started.pid > 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let first = mgr
        .cmd_logs(id, &started.cmd_id, 0, 0, false)
        .await
        .unwrap();
    assert_eq!(first.stdout_from, 0);
    assert!(first.stdout.starts_with(b"line0\nline1\n"), "{first:?}");
    assert_eq!(first.stdout_offset, first.stdout.len() as u64);

    // Drop the connection: blocking calls would fail, the command keeps running.
    let client = mgr.agent(id).await.unwrap();
    client.close().await;
    assert!(client.is_closed());

    // Exact replay by offset, then follow to the end.
    let again = mgr
        .cmd_logs(id, &started.cmd_id, 0, 0, false)
        .await
        .unwrap();
    assert!(again.stdout.starts_with(&first.stdout));
    let rest = mgr
        .cmd_logs(
            id,
            &started.cmd_id,
            first.stdout_offset,
            first.stderr_offset,
            true,
        )
        .await
        .unwrap();
    assert_eq!(rest.stdout_from, first.stdout_offset);
    let mut all = first.stdout.clone();
    all.extend_from_slice(&rest.stdout);
    let expected: String = (0..40).map(|i| format!("line{i}\n")).collect();
    assert_eq!(String::from_utf8(all).unwrap(), expected);
    let mut err = first.stderr.clone();
    err.extend_from_slice(&rest.stderr);
    let expected: String = (0..40).map(|i| format!("e{i}\n")).collect();
    assert_eq!(String::from_utf8(err).unwrap(), expected);
    assert!(!rest.info.running);
    assert_eq!(rest.info.status.as_ref().unwrap().exit_code, Some(0));
    let info = mgr.cmd_wait(id, &started.cmd_id, None).await.unwrap();
    assert_eq!(info.status.unwrap().exit_code, Some(0));

    // A streaming follow can be resumed mid-way on a new connection too.
    let c = mgr
        .cmd_start(id, sh("for i in 1 2 3 4 5 6; do echo $i; sleep 0.2; done"))
        .await
        .unwrap();
    let mut s = mgr
        .cmd_logs_stream(id, &c.cmd_id, 0, 0, true)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        if let Some(LogEvent::Stdout(b)) = s.next().await.unwrap() {
            got.extend_from_slice(&b);
        }
    }
    mgr.agent(id).await.unwrap().close().await;
    assert!(
        s.next().await.is_err(),
        "a follow fails when its connection drops"
    );
    let rest = mgr
        .cmd_logs(id, &c.cmd_id, got.len() as u64, 0, true)
        .await
        .unwrap();
    got.extend_from_slice(&rest.stdout);
    assert_eq!(got, b"1\n2\n3\n4\n5\n6\n");

    // A durable command's timeout kills its whole group; the status says so on the first wait.
    let mut req = sh("sleep 1000 & sleep 1000");
    req.timeout_ms = Some(500);
    let t = mgr.cmd_start(id, req).await.unwrap();
    let info = mgr.cmd_wait(id, &t.cmd_id, None).await.unwrap();
    let status = info.status.unwrap();
    assert!(status.timed_out, "{status:?}");
    assert_eq!(status.signal, Some(9));
    assert_eq!(sleepers(mgr, id).await, 0);
}

async fn kill_process_tree(mgr: &Manager, id: &str) {
    let c = mgr
        .cmd_start(id, sh("sleep 1000 & sleep 1000"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sleepers(mgr, id).await, 2);
    let list = mgr.cmd_list(id).await.unwrap();
    let me = list.iter().find(|i| i.cmd_id == c.cmd_id).unwrap();
    assert!(me.running);
    mgr.cmd_kill(id, &c.cmd_id, "TERM").await.unwrap();
    let info = mgr.cmd_wait(id, &c.cmd_id, Some(10_000)).await.unwrap();
    assert!(!info.running);
    assert_eq!(info.status.unwrap().signal, Some(15));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sleepers(mgr, id).await, 0, "the background sleep survived");
    // Signals by number; unknown commands and signals are clear errors.
    assert_eq!(
        guest_code(mgr.cmd_kill(id, &c.cmd_id, "9").await),
        ErrorCode::Exited
    );
    assert_eq!(
        guest_code(mgr.cmd_kill(id, "cmd-999999", "TERM").await),
        ErrorCode::UnknownCommand
    );
    assert_eq!(
        guest_code(mgr.cmd_kill(id, &c.cmd_id, "SIGNOPE").await),
        ErrorCode::UnknownSignal
    );
}

async fn background_stdin_ring_and_list(mgr: &Manager, id: &str) {
    let c = mgr
        .cmd_start(
            id,
            ExecRequest {
                argv: Some(vec!["cat".into()]),
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    mgr.cmd_stdin(id, &c.cmd_id, b"hello\n", false)
        .await
        .unwrap();
    mgr.cmd_stdin(id, &c.cmd_id, b"bye", true).await.unwrap();
    let info = mgr.cmd_wait(id, &c.cmd_id, Some(10_000)).await.unwrap();
    assert_eq!(info.status.unwrap().exit_code, Some(0));
    let logs = mgr.cmd_logs(id, &c.cmd_id, 0, 0, false).await.unwrap();
    assert_eq!(logs.stdout, b"hello\nbye");
    assert_eq!(
        guest_code(mgr.cmd_stdin(id, &c.cmd_id, b"late", false).await),
        ErrorCode::Exited
    );

    // A flood keeps only the ring (1 MiB) with absolute offsets.
    let f = mgr
        .cmd_start(id, sh("head -c 3145728 /dev/zero | tr '\\0' x"))
        .await
        .unwrap();
    let info = mgr.cmd_wait(id, &f.cmd_id, Some(60_000)).await.unwrap();
    assert_eq!(info.stdout_end, 3 << 20);
    assert_eq!(info.stdout_end - info.stdout_start, 1 << 20);
    let logs = mgr.cmd_logs(id, &f.cmd_id, 0, 0, false).await.unwrap();
    assert_eq!(logs.stdout_from, 2 << 20);
    assert_eq!(logs.stdout.len(), 1 << 20);
    assert!(logs.stdout.iter().all(|&b| b == b'x'));

    let list = mgr.cmd_list(id).await.unwrap();
    assert!(list.len() >= 4);
    assert!(list.iter().any(|i| i.cmd_id == c.cmd_id && !i.running));
}

async fn pty_session(mgr: &Manager, id: &str) {
    let p = mgr
        .pty_start(
            id,
            PtyStart {
                cols: 80,
                rows: 24,
                env: [("GREETING".to_owned(), "hi-pty".to_owned())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut out = mgr.pty_output(id, &p.cmd_id, 0).await.unwrap();
    wait_for(&mut out, "# ", &mut seen).await;
    mgr.pty_input(id, &p.cmd_id, b"echo $((6*7)) $GREETING; tty\n")
        .await
        .unwrap();
    wait_for(&mut out, "42 hi-pty", &mut seen).await;
    wait_for(&mut out, "/dev/pts/", &mut seen).await;
    mgr.pty_resize(id, &p.cmd_id, 100, 40).await.unwrap();
    mgr.pty_input(id, &p.cmd_id, b"stty size\n").await.unwrap();
    wait_for(&mut out, "40 100", &mut seen).await;
    mgr.pty_input(id, &p.cmd_id, b"exit 7\n").await.unwrap();
    let info = mgr.cmd_wait(id, &p.cmd_id, Some(20_000)).await.unwrap();
    assert!(info.pty);
    assert_eq!(info.status.unwrap().exit_code, Some(7));
    assert_eq!(
        guest_code(mgr.pty_input(id, &p.cmd_id, b"ls\n").await),
        ErrorCode::Exited
    );
    assert_eq!(
        guest_code(mgr.pty_resize(id, &p.cmd_id, 10, 10).await),
        ErrorCode::Exited
    );
}

async fn wait_for(out: &mut LogStream, needle: &str, seen: &mut Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(seen)
        );
        match tokio::time::timeout(Duration::from_secs(20), out.next()).await {
            Ok(Ok(Some(LogEvent::Stdout(b)))) => seen.extend_from_slice(&b),
            Ok(Ok(Some(_))) => {}
            other => panic!(
                "pty output ended: {other:?}; waiting for {needle:?} in {:?}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

async fn python_without_python(mgr: &Manager, id: &str) {
    let r = mgr
        .exec_python(
            id,
            PythonRequest {
                code: "print(1)".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!r.success);
    assert!(r.error.unwrap().contains("python3 not found"));
    let bad = mgr
        .exec_python(
            id,
            PythonRequest {
                code: "print(1)".into(),
                packages: vec!["--index-url=http://evil".into()],
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(CoreError::InvalidInput(_))));
}
