//! WebSockets: BandSox's terminal (`/api/vms/{id}/terminal`) and exec stream
//! (`/api/vms/{id}/exec-stream`).
//!
//! Terminal frames: client -> server text JSON `{"type":"input","data":<base64>}` and
//! `{"type":"resize","cols":N,"rows":N}`; server -> client PTY output as base64 text frames
//! when the client offered the `bandsox.terminal` subprotocol (what BandSox's TypeScript SDK
//! expects), as binary frames with `bandsox.terminal.binary` (exact bytes), else as plain text
//! (UTF-8, invalid bytes replaced: BandSox's server behaviour). The session ends when either
//! side closes; closing the socket kills the shell.
//!
//! Exec stream: the first client frame is `{"command", "timeout"}` (`timeout: 0`: no limit;
//! `"stdin": true`: the client then sends the program's input as `{"type":"stdin","data":
//! <base64>}` or binary frames, and ends it with `{"type":"stdin_eof"}`); the server sends
//! `{"type":"stdout"|"stderr","data"}` as output arrives, then `{"type":"exit","exit_code"}`
//! or `{"type":"error","error"}`.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bandsox_core::guest::{ExecEvent, LogEvent, PtyStart};
use bandsox_protocol::ExecRequest;
use base64::Engine;
use serde::Deserialize;

use super::AppState;
use crate::auth::{Credential, AUTH_PROTOCOL_PREFIX};

/// Subprotocol of BandSox's TypeScript SDK: output as base64 text frames.
pub const TERMINAL_PROTOCOL: &str = "bandsox.terminal";
/// Our binary-safe variant: output as binary frames.
pub const TERMINAL_BINARY_PROTOCOL: &str = "bandsox.terminal.binary";
/// Subprotocol our exec-stream clients offer (selected when offered).
pub const EXEC_PROTOCOL: &str = "bandsox.exec";
/// How often an open socket checks its credential even when nothing changed here (a key
/// revoked by another process on the same storage).
const CREDENTIAL_RECHECK: Duration = Duration::from_secs(10);

/// Sets the subprotocols a handshake may select: the first of `ours` the client offered;
/// failing that, an offered `bandsox.auth.*` entry, echoed back (clients such as tungstenite
/// and `ws` fail a handshake that selects none of what they offered).
pub(super) fn negotiate(
    ws: WebSocketUpgrade,
    headers: &HeaderMap,
    ours: &[&'static str],
) -> WebSocketUpgrade {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let mut supported: Vec<std::borrow::Cow<'static, str>> = ours
        .iter()
        .map(|p| std::borrow::Cow::Borrowed(*p))
        .collect();
    if !offered.iter().any(|o| ours.contains(&o.as_str())) {
        if let Some(auth) = offered
            .into_iter()
            .find(|o| o.starts_with(AUTH_PROTOCOL_PREFIX))
        {
            supported.push(std::borrow::Cow::Owned(auth));
        }
    }
    ws.protocols(supported)
}

/// Resolves once `cred` no longer grants access: checked whenever credentials change on this
/// server and every [`CREDENTIAL_RECHECK`].
pub(super) async fn revoked(s: AppState, cred: Credential) {
    let mut epoch = s.credentials_epoch.subscribe();
    loop {
        if !cred.still_valid(&s.manager) {
            return;
        }
        tokio::select! {
            _ = epoch.changed() => {}
            _ = tokio::time::sleep(CREDENTIAL_RECHECK) => {}
        }
    }
}

/// The credential the guard authenticated the handshake with ([`Credential::Public`], which
/// is never valid on a socket, when none was recorded).
pub(super) fn credential_of(cred: Option<Extension<Credential>>) -> Credential {
    cred.map_or(Credential::Public, |Extension(c)| c)
}

/// Close code of a socket whose credential was revoked.
pub(super) const CLOSE_UNAUTHORIZED: u16 = 4001;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    #[serde(default = "cols")]
    cols: u16,
    #[serde(default = "rows")]
    rows: u16,
    /// A shell command line to run instead of the shell (`bandsox exec -t`).
    #[serde(default)]
    command: Option<String>,
}

fn cols() -> u16 {
    80
}

fn rows() -> u16 {
    24
}

#[derive(Clone, Copy)]
enum Output {
    Base64,
    Binary,
    Text,
}

/// `GET /api/vms/{id}/terminal?cols=80&rows=24` (WebSocket).
#[utoipa::path(
    get,
    path = "/api/vms/{id}/terminal",
    tag = "websockets",
    summary = "PTY terminal (WebSocket; subprotocols `bandsox.terminal`, `bandsox.terminal.binary`)",
    operation_id = "websockets_terminal",
    params(("id" = String, Path, description = "VM id"), TerminalQuery),
    responses((status = 101, description = "switching to the WebSocket protocol"))
)]
pub async fn terminal(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
    cred: Option<Extension<Credential>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = negotiate(ws, &headers, &[TERMINAL_BINARY_PROTOCOL, TERMINAL_PROTOCOL]);
    let output = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(TERMINAL_BINARY_PROTOCOL) => Output::Binary,
        Some(TERMINAL_PROTOCOL) => Output::Base64,
        _ => Output::Text,
    };
    let cred = credential_of(cred);
    ws.on_upgrade(move |socket| run_terminal(s, id, q, output, cred, socket))
}

pub(super) async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        })))
        .await;
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TerminalInput {
    Input { data: String },
    Resize { cols: u16, rows: u16 },
}

async fn run_terminal(
    s: AppState,
    id: String,
    q: TerminalQuery,
    output: Output,
    cred: Credential,
    mut socket: WebSocket,
) {
    if s.manager.get_vm(&id).is_err() {
        return close(socket, 4004, "VM not found").await;
    }
    let start = PtyStart {
        cols: q.cols.max(1),
        rows: q.rows.max(1),
        command: q.command.filter(|c| !c.trim().is_empty()),
        ..Default::default()
    };
    let cmd = match s.manager.pty_start(&id, start).await {
        Ok(c) => c.cmd_id,
        Err(e) => return close(socket, 4000, &e.to_string()).await,
    };
    let mut out = match s.manager.pty_output(&id, &cmd, 0).await {
        Ok(o) => o,
        Err(e) => return close(socket, 4000, &e.to_string()).await,
    };
    let revoked = revoked(s.clone(), cred);
    tokio::pin!(revoked);
    loop {
        tokio::select! {
            () = &mut revoked => {
                close(socket, CLOSE_UNAUTHORIZED, "the credential of this socket was revoked").await;
                break;
            }
            ev = out.next() => match ev {
                Ok(Some(LogEvent::Stdout(b) | LogEvent::Stderr(b))) => {
                    let msg = match output {
                        Output::Binary => Message::Binary(b.into()),
                        Output::Base64 => Message::Text(base64::engine::general_purpose::STANDARD.encode(&b).into()),
                        Output::Text => Message::Text(String::from_utf8_lossy(&b).into_owned().into()),
                    };
                    if socket.send(msg).await.is_err() {
                        break;
                    }
                }
                Ok(Some(LogEvent::Start { .. })) => {}
                Ok(Some(LogEvent::End { info, .. })) => {
                    // The reason carries the exit code (128 + n for signal n).
                    let reason = match info.status {
                        Some(st) => format!("exit_code {}", st.exit_code.or(st.signal.map(|s| 128 + s)).unwrap_or(1)),
                        None => "session ended".to_owned(),
                    };
                    close(socket, 1000, &reason).await;
                    return;
                }
                Ok(None) => {
                    close(socket, 1000, "session ended").await;
                    return;
                }
                Err(e) => {
                    close(socket, 1011, &e.to_string()).await;
                    return;
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<TerminalInput>(&t) {
                    Ok(TerminalInput::Input { data }) => {
                        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) else { continue };
                        if s.manager.pty_input(&id, &cmd, &bytes).await.is_err() {
                            break;
                        }
                    }
                    Ok(TerminalInput::Resize { cols, rows }) => {
                        let _ = s.manager.pty_resize(&id, &cmd, cols.max(1), rows.max(1)).await;
                    }
                    // Malformed frames are ignored, as BandSox does.
                    Err(_) => {}
                },
                Some(Ok(Message::Binary(b))) => {
                    if s.manager.pty_input(&id, &cmd, &b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    // The client went away: end the shell and everything it started.
    let _ = s.manager.cmd_kill(&id, &cmd, "KILL").await;
}

/// The first frame of an exec stream (`timeout` in seconds, 1 to 3600, default 600, 0 for no
/// limit; `env`, `cwd`, `user` and `stdin` are our extensions).
#[derive(Debug, Deserialize)]
pub(super) struct ExecStart {
    command: String,
    #[serde(default)]
    timeout: Option<u64>,
    /// The client streams stdin frames (only on `/exec-stream`).
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

impl ExecStart {
    /// The agent request and the timeout in seconds (0: none). Stdin stays closed: the
    /// caller that forwards it opens it.
    pub(super) fn into_request(self) -> (ExecRequest, u64) {
        let timeout_s = match self.timeout {
            Some(0) => 0,
            t => t.unwrap_or(600).clamp(1, 3600),
        };
        let req = ExecRequest {
            command: Some(self.command),
            timeout_ms: (timeout_s > 0).then_some(timeout_s * 1000),
            env: self.env,
            cwd: self.cwd,
            user: self.user,
            ..Default::default()
        };
        (req, timeout_s)
    }
}

/// Client frames of an exec stream after the first.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StdinFrame {
    Stdin { data: String },
    StdinEof,
}

/// `GET /api/vms/{id}/exec-stream` (WebSocket).
#[utoipa::path(
    get,
    path = "/api/vms/{id}/exec-stream",
    tag = "websockets",
    summary = "Run a command and stream its output (WebSocket)",
    operation_id = "websockets_exec_stream",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 101, description = "switching to the WebSocket protocol"))
)]
pub async fn exec_stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    cred: Option<Extension<Credential>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = negotiate(ws, &headers, &[EXEC_PROTOCOL]);
    let cred = credential_of(cred);
    ws.on_upgrade(move |socket| run_exec_stream(s, id, cred, socket))
}

/// The exec-stream frame of an error: BandSox's `error` text plus our stable `code` and `hint`.
pub(super) fn error_frame(e: &bandsox_core::CoreError) -> serde_json::Value {
    serde_json::json!({"type": "error", "error": e.to_string(), "code": e.code(), "hint": e.hint()})
}

/// The exec-stream frame of one event (`None` for events the protocol does not show), and
/// whether it is the last one.
pub(super) fn exec_event_json(ev: ExecEvent, timeout_s: u64) -> Option<(serde_json::Value, bool)> {
    Some(match ev {
        ExecEvent::Started { .. } => return None,
        ExecEvent::Stdout(b) => (
            serde_json::json!({"type": "stdout", "data": String::from_utf8_lossy(&b)}),
            false,
        ),
        ExecEvent::Stderr(b) => (
            serde_json::json!({"type": "stderr", "data": String::from_utf8_lossy(&b)}),
            false,
        ),
        ExecEvent::Exited(st) if st.timed_out => (
            serde_json::json!({"type": "error", "error": format!("Command timed out after {timeout_s} s"), "code": "exec_timeout"}),
            true,
        ),
        ExecEvent::Exited(st) => {
            let code = st.exit_code.or(st.signal.map(|s| 128 + s)).unwrap_or(1);
            (serde_json::json!({"type": "exit", "exit_code": code}), true)
        }
    })
}

async fn send_json(socket: &mut WebSocket, v: serde_json::Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

async fn run_exec_stream(s: AppState, id: String, cred: Credential, mut socket: WebSocket) {
    if s.manager.get_vm(&id).is_err() {
        send_json(
            &mut socket,
            serde_json::json!({"type": "error", "error": "VM not found", "code": "vm_not_found"}),
        )
        .await;
        return close(socket, 4004, "VM not found").await;
    }
    let first = match socket.recv().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<ExecStart>(&t).ok(),
        _ => None,
    };
    let Some(start) = first.filter(|s| !s.command.trim().is_empty()) else {
        return close(
            socket,
            4000,
            "the first frame must be {\"command\": \"...\"}",
        )
        .await;
    };
    let with_stdin = start.stdin;
    let (mut req, timeout_s) = start.into_request();
    req.stdin = with_stdin;
    let mut stream = match s.manager.exec_stream(&id, req, None).await {
        Ok(st) => st,
        Err(e) => {
            send_json(&mut socket, error_frame(&e)).await;
            return close(socket, 1000, "").await;
        }
    };
    // Stdin frames go to a task of their own, so a guest slow to read its input never holds
    // up its output. `None` ends the input.
    let stdin_tx = with_stdin.then(|| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
        let stdin = stream.stdin();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                let sent = match item {
                    Some(bytes) => stdin.write(&bytes).await,
                    None => {
                        let _ = stdin.close().await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            // The client went away without ending its input: end it.
            let _ = stdin.close().await;
        });
        tx
    });
    let mut reading = stdin_tx.is_some();
    let revoked = revoked(s.clone(), cred);
    tokio::pin!(revoked);
    loop {
        let next = tokio::select! {
            () = &mut revoked => {
                // The command stops with the socket, as when a client closes it.
                return close(socket, CLOSE_UNAUTHORIZED, "the credential of this socket was revoked").await;
            }
            msg = socket.recv(), if reading => {
                let input = match msg {
                    Some(Ok(Message::Binary(b))) => Some(Some(b.to_vec())),
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<StdinFrame>(&t) {
                        Ok(StdinFrame::Stdin { data }) => base64::engine::general_purpose::STANDARD
                            .decode(data.as_bytes())
                            .ok()
                            .map(Some),
                        Ok(StdinFrame::StdinEof) => Some(None),
                        Err(_) => None,
                    },
                    Some(Ok(_)) => None,
                    // The client is gone: its input ends (what happens to the command is
                    // decided where output is sent).
                    Some(Err(_)) | None => {
                        reading = false;
                        Some(None)
                    }
                };
                if let (Some(item), Some(tx)) = (input, &stdin_tx) {
                    if item.is_none() {
                        reading = false;
                    }
                    let _ = tx.send(item).await;
                }
                continue;
            }
            next = stream.next() => next,
        };
        let ev = match next {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                send_json(&mut socket, error_frame(&e)).await;
                break;
            }
        };
        let Some((msg, last)) = exec_event_json(ev, timeout_s) else {
            continue;
        };
        if last {
            send_json(&mut socket, msg).await;
            break;
        }
        if !send_json(&mut socket, msg).await {
            // BandSox lets the command finish when the client disconnects; dropping the
            // stream here would kill it, so drain it instead.
            while let Ok(Some(_)) = stream.next().await {}
            return;
        }
    }
    close(socket, 1000, "").await;
}
