//! `GET /api/vms/{id}/socket`: one persistent WebSocket per client and VM over which any number
//! of operations run at once (what the Vtrix SDK does), so a client pays one connection and
//! one authentication instead of one per call.
//!
//! Every frame is a JSON text frame tagged with the client's `id`:
//! - `{"id", "method", "path", "body"}` runs the REST operation `method /api/vms/{vm}{path}`
//!   (e.g. `"POST", "/exec"` or `"GET", "/files/stat?path=/etc"`) through the same handlers,
//!   limits and errors as HTTP, and answers `{"id", "status", "body"}`: the JSON body, or
//!   `{"encoding": "base64", "data"}` for other content (downloads, capped at 64 MiB).
//! - `{"id", "stream": {"command", "timeout", "env", "cwd", "user"}}` runs a command and sends the exec-stream frames
//!   (`{"id", "type": "stdout"|"stderr", "data"}`, then `{"id", "type": "exit", "exit_code"}`
//!   or `{"id", "type": "error", "error"}`) as output arrives.
//!
//! Answers come in completion order, not request order. A frame that cannot be parsed gets a
//! 400 problem with `id` null. Closing the socket cancels what still runs, as closing an HTTP
//! request does (a blocking exec is killed).
//!
//! Every operation checks the credential the socket was opened with again; once it is revoked
//! (a key deleted, the session logged out, the password changed) the operation is answered
//! 401 and the socket closes with 4001.

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::ws::{credential_of, negotiate, revoked, ExecStart, CLOSE_UNAUTHORIZED};
use super::AppState;
use crate::auth::Credential;
use crate::error::ApiError;

/// Subprotocol a client may offer (it is selected when offered).
pub const SOCKET_PROTOCOL: &str = "bandsox.socket";
/// Largest non-JSON body (a download) sent back in one frame.
const MAX_BINARY_BODY: usize = 64 << 20;
/// Largest JSON answer (file contents come base64-encoded in it).
const MAX_JSON_BODY: usize = 400 << 20;

#[derive(Debug, Deserialize)]
struct Frame {
    id: serde_json::Value,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<ExecStart>,
}

#[utoipa::path(
    get,
    path = "/api/vms/{id}/socket",
    tag = "websockets",
    summary = "Persistent socket: many REST operations and streamed commands at once (WebSocket)",
    operation_id = "websockets_socket",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 101, description = "switching to the WebSocket protocol"))
)]
pub async fn socket(
    State(s): State<AppState>,
    Path(id): Path<String>,
    cred: Option<Extension<Credential>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = negotiate(ws, &headers, &[SOCKET_PROTOCOL]);
    let cred = credential_of(cred);
    ws.on_upgrade(move |socket| run(s, id, cred, socket))
}

async fn run(s: AppState, vm: String, cred: Credential, mut socket: WebSocket) {
    if s.manager.get_vm(&vm).is_err() {
        return super::ws::close(socket, 4004, "VM not found").await;
    }
    // The request was authenticated when the socket opened; operations skip the guard but
    // check the credential again.
    let app = super::routes_for(s.clone());
    let (tx, mut rx) = mpsc::channel::<serde_json::Value>(256);
    let mut running = JoinSet::new();
    let revoked = revoked(s.clone(), cred.clone());
    tokio::pin!(revoked);
    loop {
        tokio::select! {
            () = &mut revoked => {
                running.abort_all();
                return super::ws::close(socket, CLOSE_UNAUTHORIZED, "the credential of this socket was revoked").await;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Frame>(&t) {
                    Ok(f) if !cred.still_valid(&s.manager) => {
                        let p = problem_json(StatusCode::UNAUTHORIZED, "unauthorized", "the credential of this socket was revoked".into());
                        let v = serde_json::json!({"id": f.id, "status": 401, "body": p});
                        let _ = socket.send(Message::Text(v.to_string().into())).await;
                        running.abort_all();
                        return super::ws::close(socket, CLOSE_UNAUTHORIZED, "the credential of this socket was revoked").await;
                    }
                    Ok(f) => {
                        let (s, vm, app, tx) = (s.clone(), vm.clone(), app.clone(), tx.clone());
                        running.spawn(async move { handle(s, vm, app, f, tx).await });
                    }
                    Err(e) => {
                        let p = problem_json(StatusCode::BAD_REQUEST, "invalid_body", format!("bad frame: {e}"));
                        let v = serde_json::json!({"id": null, "status": 400, "body": p});
                        if socket.send(Message::Text(v.to_string().into())).await.is_err() {
                            break;
                        }
                    }
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            Some(v) = rx.recv() => {
                if socket.send(Message::Text(v.to_string().into())).await.is_err() {
                    break;
                }
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    // Dropping the set cancels what still runs.
    running.abort_all();
}

fn problem_json(status: StatusCode, code: &'static str, detail: String) -> serde_json::Value {
    let p = ApiError::new(status, code, detail).problem();
    serde_json::to_value(p).unwrap_or_default()
}

async fn handle(
    s: AppState,
    vm: String,
    app: Router,
    f: Frame,
    tx: mpsc::Sender<serde_json::Value>,
) {
    let id = f.id.clone();
    if let Some(start) = f.stream {
        return stream(s, vm, id, start, tx).await;
    }
    let (status, body) = match (f.method.as_deref(), f.path.as_deref()) {
        (Some(m), Some(p)) => call(app, &vm, m, p, f.body).await,
        _ => (
            400,
            problem_json(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "a frame needs `method` and `path`, or `stream`".into(),
            ),
        ),
    };
    let _ = tx
        .send(serde_json::json!({"id": id, "status": status, "body": body}))
        .await;
}

/// Runs one REST operation of `vm` through the router.
async fn call(
    app: Router,
    vm: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let bad = |detail: String| {
        (
            400,
            problem_json(StatusCode::BAD_REQUEST, "invalid_input", detail),
        )
    };
    if !path.starts_with('/') || path.split(['/', '?']).any(|seg| seg == "..") {
        return bad(format!(
            "path must start with `/` and name an operation of this VM (like `/exec`), got `{path}`"
        ));
    }
    let Ok(method) = method.to_ascii_uppercase().parse::<axum::http::Method>() else {
        return bad(format!("unknown method `{method}`"));
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("/api/vms/{vm}{path}"));
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let req = match req.body(body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid request: {e}")),
    };
    let Ok(resp) = app.oneshot(req).await;
    let status = resp.status().as_u16();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let limit = if is_json {
        MAX_JSON_BODY
    } else {
        MAX_BINARY_BODY
    };
    let bytes = match axum::body::to_bytes(resp.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => {
            return (
                413,
                problem_json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!(
                    "the answer is larger than {limit} bytes; use the HTTP endpoint, which streams"
                ),
                ),
            )
        }
    };
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else if is_json {
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    } else {
        serde_json::json!({
            "encoding": "base64",
            "data": base64::engine::general_purpose::STANDARD.encode(&bytes),
        })
    };
    (status, body)
}

/// A streamed command, framed like `/exec-stream` with the client's id.
async fn stream(
    s: AppState,
    vm: String,
    id: serde_json::Value,
    start: ExecStart,
    tx: mpsc::Sender<serde_json::Value>,
) {
    let send = |mut v: serde_json::Value| {
        v["id"] = id.clone();
        tx.send(v)
    };
    let Some(_permit) = s.vm_ops.try_start(&vm) else {
        let _ = send(serde_json::json!({"type": "error", "error": "too many operations on this VM; retry when one ends", "code": "too_many_operations"})).await;
        return;
    };
    let (req, timeout_s) = start.into_request();
    let mut events = match s.manager.exec_stream(&vm, req, None).await {
        Ok(st) => st,
        Err(e) => {
            let _ = send(super::ws::error_frame(&e)).await;
            return;
        }
    };
    loop {
        match events.next().await {
            Ok(Some(ev)) => {
                let Some((v, last)) = super::ws::exec_event_json(ev, timeout_s) else {
                    continue;
                };
                if send(v).await.is_err() || last {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = send(super::ws::error_frame(&e)).await;
                return;
            }
        }
    }
}
