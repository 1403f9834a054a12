//! The agent outside a VM (`bandsox-agent --listen-unix`), driven by the host client: fast
//! checks of the command protocol on the test host itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bandsox_core::agent::{AgentClient, StreamItem};
use bandsox_protocol::frame::Channel;
use bandsox_protocol::{CmdLogsRequest, CmdStartRequest, ExecRequest, PtySize, ReplyBody, Request};

struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start() -> (Agent, AgentClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let child = std::process::Command::new(common::agent_bin())
        .arg("--listen-unix")
        .arg(&sock)
        .spawn()
        .unwrap();
    let client = AgentClient::connect(&sock, Duration::from_secs(10))
        .await
        .unwrap();
    (Agent(child), client, dir)
}

#[tokio::test]
async fn pty_follow_delivers_existing_and_new_output() {
    let (_a, c, _d) = start().await;
    let started = c
        .call(
            &Request::CmdStart(CmdStartRequest {
                exec: ExecRequest {
                    command: Some("echo ready; read x; echo got-$x; stty size".into()),
                    ..Default::default()
                },
                pty: Some(PtySize { cols: 80, rows: 24 }),
            }),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let ReplyBody::CmdStarted { cmd_id, .. } = started else {
        panic!("{started:?}")
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Other calls on the same command before following it.
    let r = c
        .call(
            &Request::CmdWait {
                cmd_id: cmd_id.clone(),
                timeout_ms: Some(10),
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(matches!(r, ReplyBody::Cmd(ref i) if i.running), "{r:?}");
    let r = c
        .call(
            &Request::CmdLogs(CmdLogsRequest {
                cmd_id: cmd_id.clone(),
                ..Default::default()
            }),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(r, ReplyBody::CmdLogs { stdout_offset, .. } if stdout_offset > 0),
        "{r:?}"
    );
    let mut s = c
        .open(&Request::CmdLogs(CmdLogsRequest {
            cmd_id: cmd_id.clone(),
            follow: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut sent_input = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("pty output stalled")
            .unwrap()
        {
            StreamItem::Data(Channel::Stdout, b) => seen.extend_from_slice(&b),
            StreamItem::Reply(ReplyBody::CmdLogs { info, .. }) => {
                assert_eq!(info.status.unwrap().exit_code, Some(0));
                break;
            }
            _ => {}
        }
        if !sent_input && String::from_utf8_lossy(&seen).contains("ready") {
            sent_input = true;
            let r = c
                .call(
                    &Request::CmdResize {
                        cmd_id: cmd_id.clone(),
                        cols: 100,
                        rows: 40,
                    },
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert_eq!(r, ReplyBody::Done);
            let mut w = c
                .open(&Request::CmdStdin {
                    cmd_id: cmd_id.clone(),
                    close: false,
                })
                .await
                .unwrap();
            w.send_data(Channel::Stdin, b"abc\n").await.unwrap();
            w.send_eof(Channel::Stdin).await.unwrap();
            loop {
                if let StreamItem::Reply(r) = w.next().await.unwrap() {
                    assert_eq!(r, ReplyBody::Done);
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("got-abc"), "{text}");
    assert!(text.contains("40 100"), "{text}");
}
