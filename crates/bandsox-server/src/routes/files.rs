//! Files inside a VM: BandSox's endpoints (`read-file`, `write-file`, `append-file`,
//! `file-info`, `files`, `upload`, `download`) and ours under `/files/...` (stat, mkdir,
//! remove, rename, edit, batch write). Uploads and downloads stream: neither side holds a
//! whole file in memory.
//!
//! Paths are guest paths: absolute, or relative to `/` (see docs/AGENT.md for the rules).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bandsox_core::guest::files::WriteOptions;
use bandsox_core::guest::python::PythonRequest;
use bandsox_protocol::{FileEntry, FileReadTextRequest};
use base64::Engine;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::error::{ApiError, ApiResult};

/// Largest decoded body accepted by `write-file` with base64 (BandSox's limit).
const MAX_BASE64_BYTES: usize = 256 << 20;
/// Default cap of `read-file` (whole files stream through `download`).
const READ_CAP_BYTES: u64 = 64 << 20;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    path: String,
    /// Extension of `read-file`: at most this many bytes (then `truncated: true`).
    max_bytes: Option<u64>,
    /// Extensions of `read-file`: a window of lines, numbered once when asked.
    offset: Option<u64>,
    limit: Option<u64>,
    #[serde(default)]
    show_line_numbers: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirQuery {
    #[serde(default = "root")]
    path: String,
}

fn root() -> String {
    "/".into()
}

/// `GET /api/vms/{id}/read-file?path=` -> `{"path", "content"}` (UTF-8, invalid bytes
/// replaced), plus `size`, `truncated` and `mime` (images and PDFs by content).
#[utoipa::path(
    get,
    path = "/api/vms/{id}/read-file",
    tag = "files",
    summary = "Read a file: text (optionally a line range, numbered) or base64 for binary content",
    operation_id = "files_read_file",
    params(("id" = String, Path, description = "VM id"), PathQuery),
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn read_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    if q.offset.is_some() || q.limit.is_some() || q.show_line_numbers {
        let w = s
            .manager
            .read_text(
                &id,
                FileReadTextRequest {
                    path: q.path.clone(),
                    offset_lines: q.offset.unwrap_or(0),
                    limit_lines: q.limit.unwrap_or(0),
                    line_numbers: q.show_line_numbers,
                    max_bytes: q.max_bytes,
                },
            )
            .await?;
        return Ok(Json(serde_json::json!({
            "path": q.path, "content": w.content, "total_lines": w.total_lines, "truncated": w.truncated,
        })));
    }
    let f = s
        .manager
        .read_file(&id, &q.path, 0, Some(q.max_bytes.unwrap_or(READ_CAP_BYTES)))
        .await?;
    let content = match &f.mime {
        // Binary images travel as base64 so JSON can carry them.
        Some(_) => base64::engine::general_purpose::STANDARD.encode(&f.bytes),
        None => String::from_utf8_lossy(&f.bytes).into_owned(),
    };
    Ok(Json(serde_json::json!({
        "path": q.path, "content": content, "size": f.size, "truncated": f.truncated,
        "mime": f.mime, "encoding": if f.mime.is_some() { "base64" } else { "utf-8" },
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WriteFileRequest {
    path: String,
    content: String,
    #[serde(default = "utf8")]
    encoding: String,
    #[serde(default)]
    append: bool,
    /// Extension: permission bits (e.g. 493 = 0o755).
    mode: Option<u32>,
}

fn utf8() -> String {
    "utf-8".into()
}

fn decode_content(content: String, encoding: &str) -> ApiResult<Vec<u8>> {
    match encoding {
        "utf-8" | "utf8" | "text" => Ok(content.into_bytes()),
        "base64" => {
            if content.len() / 4 * 3 > MAX_BASE64_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "base64 content is limited to 256 MiB decoded; use /upload for larger files",
                ));
            }
            base64::engine::general_purpose::STANDARD
                .decode(content.as_bytes())
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_base64",
                        format!("invalid base64: {e}"),
                    )
                })
        }
        other => Err(ApiError::invalid(format!(
            "encoding must be utf-8 or base64, got `{other}`"
        ))),
    }
}

async fn write_common(
    s: &AppState,
    id: &str,
    req: WriteFileRequest,
    append: bool,
) -> ApiResult<Json<serde_json::Value>> {
    let bytes = decode_content(req.content, &req.encoding)?;
    let opts = WriteOptions {
        mode: req.mode,
        append,
        create_parents: true,
    };
    s.manager.write_file(id, &req.path, &bytes, opts).await?;
    Ok(Json(serde_json::json!({
        "status": if append { "appended" } else { "written" }, "path": req.path,
    })))
}

/// `POST /api/vms/{id}/write-file`.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/write-file",
    tag = "files",
    summary = "Write a file (utf-8 or base64 content)",
    operation_id = "files_write_file",
    params(("id" = String, Path, description = "VM id")),
    request_body = WriteFileRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn write_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<WriteFileRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    let append = req.append;
    write_common(&s, &id, req, append).await
}

/// `POST /api/vms/{id}/append-file`.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/append-file",
    tag = "files",
    summary = "Append to a file",
    operation_id = "files_append_file",
    params(("id" = String, Path, description = "VM id")),
    request_body = WriteFileRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn append_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<WriteFileRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    write_common(&s, &id, req, true).await
}

/// BandSox's file listing entry, plus `mode` and `is_symlink`.
#[derive(Debug, Serialize)]
struct Entry {
    name: String,
    path: String,
    size: u64,
    is_dir: bool,
    is_file: bool,
    is_symlink: bool,
    mode: String,
    mtime: i64,
}

impl From<FileEntry> for Entry {
    fn from(e: FileEntry) -> Self {
        Self {
            mode: format!("{:o}", e.mode & 0o7777),
            name: e.name,
            path: e.path,
            size: e.size,
            is_dir: e.is_dir,
            is_file: e.is_file,
            is_symlink: e.is_symlink,
            mtime: e.mtime,
        }
    }
}

/// `GET /api/vms/{id}/files?path=/`.
#[utoipa::path(
    get,
    path = "/api/vms/{id}/files",
    tag = "files",
    summary = "List a directory",
    operation_id = "files_list",
    params(("id" = String, Path, description = "VM id"), DirQuery),
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DirQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let (entries, truncated) = s.manager.list_dir(&id, &q.path).await?;
    let files: Vec<Entry> = entries.into_iter().map(Entry::from).collect();
    Ok(Json(
        serde_json::json!({ "path": q.path, "files": files, "truncated": truncated }),
    ))
}

async fn stat_or_404(s: &AppState, id: &str, path: &str) -> ApiResult<FileEntry> {
    s.manager.stat(id, path).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "guest_not_found",
            format!("{path}: no such file or directory"),
        )
    })
}

/// `GET /api/vms/{id}/file-info?path=` -> `{"path", "info": {"size", "mode", "mtime"}}`.
#[utoipa::path(
    get,
    path = "/api/vms/{id}/file-info",
    tag = "files",
    summary = "Metadata of one path (BandSox shape)",
    operation_id = "files_file_info",
    params(("id" = String, Path, description = "VM id"), DirQuery),
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn file_info(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DirQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let e = stat_or_404(&s, &id, &q.path).await?;
    Ok(Json(serde_json::json!({
        "path": q.path,
        "info": { "size": e.size, "mode": format!("{:o}", e.mode & 0o7777), "mtime": e.mtime,
                  "is_dir": e.is_dir, "is_file": e.is_file },
    })))
}

/// `GET /api/vms/{id}/files/stat?path=`: `{"exists": false}` for a missing path (not an error).
#[utoipa::path(
    get,
    path = "/api/vms/{id}/files/stat",
    tag = "files",
    summary = "Whether a path exists, and its metadata",
    operation_id = "files_stat",
    params(("id" = String, Path, description = "VM id"), DirQuery),
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn stat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DirQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(match s.manager.stat(&id, &q.path).await? {
        Some(e) => serde_json::json!({ "exists": true, "entry": Entry::from(e) }),
        None => serde_json::json!({ "exists": false }),
    }))
}

/// `GET /api/vms/{id}/download?path=`: the file's bytes, streamed.
#[utoipa::path(
    get,
    path = "/api/vms/{id}/download",
    tag = "files",
    summary = "Download a file (streamed)",
    operation_id = "files_download",
    params(("id" = String, Path, description = "VM id"), DirQuery),
    responses((status = 200, description = "the file's bytes", body = Vec<u8>, content_type = "application/octet-stream"))
)]
pub async fn download(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DirQuery>,
) -> ApiResult<Response> {
    // A stopped VM's file comes from its disks (as BandSox reads them with debugfs).
    if let Some((file, size)) = s.manager.offline_file(&id, &q.path).await? {
        let name = q.path.rsplit('/').next().unwrap_or_default();
        return Ok(attachment(
            name,
            size,
            Body::from_stream(tokio_util::io::ReaderStream::new(file)),
        ));
    }
    let e = stat_or_404(&s, &id, &q.path).await?;
    if !e.is_file {
        return Err(ApiError::invalid(format!(
            "{} is not a regular file",
            q.path
        )));
    }
    let (mut writer, reader) = tokio::io::duplex(256 << 10);
    let mgr = s.manager.clone();
    let path = q.path.clone();
    tokio::spawn(async move {
        if let Err(e) = mgr.download(&id, &path, &mut writer).await {
            tracing::warn!(error = %e, "download ended early");
        }
    });
    Ok(attachment(
        &e.name,
        e.size,
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    ))
}

/// A download answer: octet-stream with its length and a safe file name.
fn attachment(name: &str, size: u64, body: Body) -> Response {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// The multipart form of `POST /api/vms/{id}/upload` (documentation only: the handler streams it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// Destination path in the guest; must come before `file`.
    remote_path: String,
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// `POST /api/vms/{id}/upload` (multipart: `remote_path`, then `file`), streamed to the guest.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/upload",
    tag = "files",
    summary = "Upload a file (multipart, streamed to the guest)",
    operation_id = "files_upload",
    params(("id" = String, Path, description = "VM id")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn upload(
    State(s): State<AppState>,
    Path(id): Path<String>,
    mut form: Multipart,
) -> ApiResult<Json<serde_json::Value>> {
    let mut remote_path: Option<String> = None;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
    };
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("remote_path") => remote_path = Some(small_text(field).await?),
            Some("file") => {
                let path = remote_path.clone().ok_or_else(|| {
                    ApiError::invalid("send the `remote_path` field before `file`")
                })?;
                let stream = field.map_err(std::io::Error::other);
                let mut reader = tokio_util::io::StreamReader::new(stream);
                let opts = WriteOptions {
                    create_parents: true,
                    ..Default::default()
                };
                let n = s.manager.upload(&id, &path, &mut reader, opts).await?;
                return Ok(Json(
                    serde_json::json!({ "status": "uploaded", "path": path, "size": n }),
                ));
            }
            _ => {}
        }
    }
    Err(ApiError::invalid(
        "multipart fields `remote_path` and `file` are required",
    ))
}

/// Longest text field of an upload form (a guest path).
const MAX_FORM_TEXT: usize = 16 << 10;

/// A small text field of a streamed form, refused beyond [`MAX_FORM_TEXT`] (the form as a
/// whole has no size limit, so no field may be read into memory unbounded).
async fn small_text(mut field: axum::extract::multipart::Field<'_>) -> ApiResult<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text()))?
    {
        if buf.len() + chunk.len() > MAX_FORM_TEXT {
            return Err(ApiError::invalid(format!(
                "form field `{}` is longer than {MAX_FORM_TEXT} bytes",
                field.name().unwrap_or_default()
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| ApiError::invalid("form fields must be UTF-8"))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MkdirRequest {
    path: String,
    #[serde(default = "yes")]
    parents: bool,
    mode: Option<u32>,
}

fn yes() -> bool {
    true
}

/// `POST /api/vms/{id}/files/mkdir`.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/files/mkdir",
    tag = "files",
    summary = "Create a directory",
    operation_id = "files_mkdir",
    params(("id" = String, Path, description = "VM id")),
    request_body = MkdirRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn mkdir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<MkdirRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    s.manager
        .mkdir(&id, &req.path, req.parents, req.mode)
        .await?;
    Ok(Json(
        serde_json::json!({ "status": "created", "path": req.path }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RemoveRequest {
    path: String,
    #[serde(default)]
    recursive: bool,
}

/// `POST /api/vms/{id}/files/remove`.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/files/remove",
    tag = "files",
    summary = "Remove a file or directory",
    operation_id = "files_remove",
    params(("id" = String, Path, description = "VM id")),
    request_body = RemoveRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<RemoveRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    s.manager.remove(&id, &req.path, req.recursive).await?;
    Ok(Json(
        serde_json::json!({ "status": "removed", "path": req.path }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = FileRenameRequest)]
pub struct RenameRequest {
    from: String,
    to: String,
}

/// `POST /api/vms/{id}/files/rename`.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/files/rename",
    tag = "files",
    summary = "Rename or move a path",
    operation_id = "files_rename",
    params(("id" = String, Path, description = "VM id")),
    request_body = RenameRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<RenameRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    s.manager.rename(&id, &req.from, &req.to).await?;
    Ok(Json(
        serde_json::json!({ "status": "renamed", "from": req.from, "to": req.to }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EditRequest {
    path: String,
    old_text: String,
    new_text: String,
}

/// `POST /api/vms/{id}/files/edit`: replace text that occurs exactly once.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/files/edit",
    tag = "files",
    summary = "Replace a text that occurs exactly once",
    operation_id = "files_edit",
    params(("id" = String, Path, description = "VM id")),
    request_body = EditRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn edit(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<EditRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    s.manager
        .edit_file(&id, &req.path, &req.old_text, &req.new_text)
        .await?;
    Ok(Json(
        serde_json::json!({ "status": "edited", "path": req.path }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = BatchFileContent)]
pub struct BatchFile {
    path: String,
    content: String,
    #[serde(default = "utf8")]
    encoding: String,
    mode: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BatchRequest {
    files: Vec<BatchFile>,
}

/// `POST /api/vms/{id}/files/write-batch`: many files in one round trip.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/files/write-batch",
    tag = "files",
    summary = "Write several files in one round trip",
    operation_id = "files_write_batch",
    params(("id" = String, Path, description = "VM id")),
    request_body = BatchRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn write_batch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    let mut files = Vec::with_capacity(req.files.len());
    for f in req.files {
        let bytes = decode_content(f.content, &f.encoding)?;
        files.push((f.path, bytes, f.mode));
    }
    let n = files.len();
    s.manager.write_files(&id, &files, true).await?;
    Ok(Json(serde_json::json!({ "status": "written", "count": n })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ExecPythonRequest {
    code: String,
    #[serde(default = "tmp")]
    cwd: String,
    #[serde(default)]
    packages: Option<Vec<String>>,
    #[serde(default = "sixty")]
    timeout: u64,
    #[serde(default = "yes")]
    cleanup_venv: bool,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
}

fn tmp() -> String {
    "/tmp".into()
}

fn sixty() -> u64 {
    60
}

/// `POST /api/vms/{id}/exec-python` -> `{exit_code, stdout, stderr, output, success, error}`.
#[utoipa::path(
    post,
    path = "/api/vms/{id}/exec-python",
    tag = "commands",
    summary = "Run Python code, optionally with packages in a fresh venv",
    operation_id = "commands_exec_python",
    params(("id" = String, Path, description = "VM id")),
    request_body = ExecPythonRequest,
    responses((status = 200, description = "success", body = bandsox_core::guest::python::PythonResult))
)]
pub async fn exec_python(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ExecPythonRequest>, JsonRejection>,
) -> ApiResult<Json<bandsox_core::guest::python::PythonResult>> {
    let Json(req) = body?;
    if req.timeout == 0 || req.timeout > 24 * 3600 {
        return Err(ApiError::invalid("timeout must be 1 to 86400 seconds"));
    }
    let r = s
        .manager
        .exec_python(
            &id,
            PythonRequest {
                code: req.code,
                packages: req.packages.unwrap_or_default(),
                cwd: req.cwd,
                timeout_ms: req.timeout * 1000,
                keep_venv: !req.cleanup_venv,
                env: req.env.unwrap_or_default(),
            },
        )
        .await?;
    Ok(Json(r))
}
