//! Durable background commands: `/api/vms/{id}/commands/...`. A command keeps running when
//! the client goes away; its output stays in ring buffers (absolute byte offsets) for replay.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bandsox_protocol::{CmdInfo, ExecRequest};
use base64::Engine;
use serde::Deserialize;

use super::AppState;
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct StartRequest {
    /// A shell command line; or give `argv`.
    command: Option<String>,
    argv: Option<Vec<String>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    /// User name or uid in the guest.
    user: Option<String>,
    /// Seconds after which the whole process group is killed (none when absent).
    timeout: Option<u64>,
    /// Open a stdin pipe (write with `.../stdin`).
    #[serde(default)]
    stdin: bool,
}

/// `POST /api/vms/{id}/commands` -> `{"cmd_id", "pid"}`.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/commands",
    tag = "commands",
    summary = "Start a durable background command",
    operation_id = "commands_start",
    params(("id" = String, Path, description = "VM id")),
    request_body = StartRequest,
    responses((status = 201, description = "created", body = serde_json::Value))
)]
pub async fn start(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let Json(req) = body?;
    let exec = ExecRequest {
        command: req.command,
        argv: req.argv,
        env: req.env.unwrap_or_default(),
        cwd: req.cwd,
        user: req.user,
        stdin: req.stdin,
        timeout_ms: req.timeout.map(|t| t.saturating_mul(1000)),
    };
    let started = s.manager.cmd_start(&id, exec).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "cmd_id": started.cmd_id, "pid": started.pid })),
    ))
}

/// `GET /api/vms/{id}/commands`.
#[utoipa::path(
    get,
    path = "/api/vms/{id}/commands",
    tag = "commands",
    summary = "List durable commands",
    operation_id = "commands_list",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = Vec<CmdInfo>))
)]
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<CmdInfo>>> {
    Ok(Json(s.manager.cmd_list(&id).await?))
}

/// `GET /api/vms/{id}/commands/{cmd_id}`.
#[utoipa::path(
    get,
    path = "/api/vms/{id}/commands/{cmd_id}",
    tag = "commands",
    summary = "One durable command",
    operation_id = "commands_get",
    params(("id" = String, Path, description = "VM id"), ("cmd_id" = String, Path, description = "command id")),
    responses((status = 200, description = "success", body = CmdInfo))
)]
pub async fn get(
    State(s): State<AppState>,
    Path((id, cmd_id)): Path<(String, String)>,
) -> ApiResult<Json<CmdInfo>> {
    s.manager
        .cmd_list(&id)
        .await?
        .into_iter()
        .find(|c| c.cmd_id == cmd_id)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "command_not_found",
                format!("command `{cmd_id}` not found"),
            )
        })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    #[serde(default)]
    stdout_from: u64,
    #[serde(default)]
    stderr_from: u64,
    /// `utf-8` (default; invalid bytes replaced) or `base64` (exact bytes).
    encoding: Option<String>,
}

/// `GET /api/vms/{id}/commands/{cmd_id}/logs?stdout_from=&stderr_from=`: the output kept
/// from those absolute offsets, and the offsets to continue from.
#[utoipa::path(
    get,
    path = "/api/vms/{id}/commands/{cmd_id}/logs",
    tag = "commands",
    summary = "Output of a command from absolute byte offsets",
    operation_id = "commands_logs",
    params(("id" = String, Path, description = "VM id"), ("cmd_id" = String, Path, description = "command id"), LogsQuery),
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn logs(
    State(s): State<AppState>,
    Path((id, cmd_id)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let l = s
        .manager
        .cmd_logs(&id, &cmd_id, q.stdout_from, q.stderr_from, false)
        .await?;
    let enc = |b: &[u8]| match q.encoding.as_deref() {
        Some("base64") => base64::engine::general_purpose::STANDARD.encode(b),
        _ => String::from_utf8_lossy(b).into_owned(),
    };
    Ok(Json(serde_json::json!({
        "stdout": enc(&l.stdout), "stderr": enc(&l.stderr),
        "stdout_from": l.stdout_from, "stderr_from": l.stderr_from,
        "stdout_offset": l.stdout_offset, "stderr_offset": l.stderr_offset,
        "info": l.info,
    })))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct WaitRequest {
    /// Seconds to wait at most (forever when absent).
    timeout: Option<u64>,
}

/// `POST /api/vms/{id}/commands/{cmd_id}/wait` -> the command's state once it ended.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/commands/{cmd_id}/wait",
    tag = "commands",
    summary = "Wait for a command to end",
    operation_id = "commands_wait",
    params(("id" = String, Path, description = "VM id"), ("cmd_id" = String, Path, description = "command id")),
    request_body = WaitRequest,
    responses((status = 200, description = "success", body = CmdInfo))
)]
pub async fn wait(
    State(s): State<AppState>,
    Path((id, cmd_id)): Path<(String, String)>,
    body: Option<Json<WaitRequest>>,
) -> ApiResult<Json<CmdInfo>> {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let info = s
        .manager
        .cmd_wait(&id, &cmd_id, req.timeout.map(|t| t.saturating_mul(1000)))
        .await?;
    Ok(Json(info))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct KillRequest {
    #[serde(default = "term")]
    signal: String,
}

fn term() -> String {
    "TERM".into()
}

/// `POST /api/vms/{id}/commands/{cmd_id}/kill {"signal": "KILL"}`: to the process group.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/commands/{cmd_id}/kill",
    tag = "commands",
    summary = "Signal a command's process group",
    operation_id = "commands_kill",
    params(("id" = String, Path, description = "VM id"), ("cmd_id" = String, Path, description = "command id")),
    request_body = KillRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn kill(
    State(s): State<AppState>,
    Path((id, cmd_id)): Path<(String, String)>,
    body: Option<Json<KillRequest>>,
) -> ApiResult<Json<serde_json::Value>> {
    let signal = body.map_or_else(term, |Json(r)| r.signal);
    s.manager.cmd_kill(&id, &cmd_id, &signal).await?;
    Ok(Json(
        serde_json::json!({ "status": "signalled", "signal": signal }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct StdinRequest {
    #[serde(default)]
    data: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    close: bool,
}

/// `POST /api/vms/{id}/commands/{cmd_id}/stdin {"data", "encoding", "close"}`.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/commands/{cmd_id}/stdin",
    tag = "commands",
    summary = "Write to (and optionally close) a command's stdin",
    operation_id = "commands_stdin",
    params(("id" = String, Path, description = "VM id"), ("cmd_id" = String, Path, description = "command id")),
    request_body = StdinRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn stdin(
    State(s): State<AppState>,
    Path((id, cmd_id)): Path<(String, String)>,
    body: Result<Json<StdinRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    let bytes = match req.encoding.as_deref() {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(req.data.as_bytes())
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_base64",
                    format!("invalid base64: {e}"),
                )
            })?,
        _ => req.data.into_bytes(),
    };
    s.manager.cmd_stdin(&id, &cmd_id, &bytes, req.close).await?;
    Ok(Json(
        serde_json::json!({ "status": "written", "bytes": bytes.len(), "closed": req.close }),
    ))
}
