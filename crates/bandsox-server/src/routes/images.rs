//! `/api/images`: list, pull from a registry, import an uploaded archive, inspect, delete.
//!
//! References contain `/` and `:`, so single-image routes take the rest of the path
//! (`GET /api/images/docker.io/library/alpine:latest`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bandsox_core::images::{self, ImageInfo};
use bandsox_image::oci::{NoProgress, Progress};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::AppState;
use crate::error::{ApiError, ApiResult};

/// `POST /api/images/pull`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PullRequest {
    pub reference: String,
    /// Speak plain HTTP to this reference's registry.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Pull and convert again even when cached, and replace a reference that names an
    /// imported or built image (refused with 409 `image_exists` otherwise).
    #[serde(default)]
    pub force: bool,
}

/// Query of `POST /api/images/import`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Name to register; defaults to the archive's own tag (docker `RepoTags`).
    pub reference: Option<String>,
    /// Replace an image that already has this reference; without it an existing reference
    /// answers 409 `image_exists`.
    #[serde(default)]
    pub force: bool,
}

#[utoipa::path(
    get,
    path = "/api/images",
    tag = "images",
    summary = "List cached images",
    operation_id = "images_list",
    responses((status = 200, description = "success", body = Vec<ImageInfo>))
)]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<ImageInfo>>> {
    let m = &s.manager;
    Ok(Json(images::list(m.store(), m.storage())?))
}

#[utoipa::path(
    post,
    path = "/api/images/pull",
    tag = "images",
    summary = "Pull an image from a registry and convert it",
    operation_id = "images_pull",
    request_body = PullRequest,
    responses(
        (status = 200, description = "success; with `Accept: application/x-ndjson` the answer is instead a stream of progress events, one JSON object a line (`phase`, `layer`, then `done` with the image or `error` with a problem body); see docs/IMAGES.md", body = ImageInfo),
        (status = 409, description = "`image_exists`: the reference names an imported or built image; pass `force: true` to replace it"),
        (status = 413, description = "`image_too_large`: the image unpacks to more than BANDSOX_MAX_UNPACKED_MIB or half the free space allows; nothing is kept"),
    )
)]
pub async fn pull(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<PullRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let mut opts = images::pull_options_from_env();
    if req.insecure {
        let normalized = bandsox_image::pull::normalize_reference(&req.reference)
            .map_err(bandsox_core::CoreError::from)?;
        if let Some((registry, _)) = normalized.split_once('/') {
            opts.insecure_registries.push(registry.to_owned());
        }
    }
    match (req.username, req.password) {
        (Some(u), Some(p)) => opts.credentials = Some((u, p)),
        (None, None) => {}
        _ => {
            return Err(ApiError::invalid(
                "give both `username` and `password`, or neither",
            ))
        }
    }
    let run = move |progress: Arc<dyn Progress>| async move {
        let m = &s.manager;
        let rec = images::pull(
            m.store(),
            m.storage(),
            &req.reference,
            &opts,
            req.force,
            progress,
        )
        .await?;
        Ok(images::inspect(m.store(), m.storage(), &rec.reference)?)
    };
    if wants_stream(&headers) {
        return Ok(progress_stream(run));
    }
    Ok(Json(run(Arc::new(NoProgress)).await?).into_response())
}

/// Media type of the progress stream (`Accept: application/x-ndjson`).
const NDJSON: &str = "application/x-ndjson";

/// Whether the client asked for the progress stream.
fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON))
}

/// Layer events of one blob are sent at most this often (plus its first and last).
const LAYER_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// One line of the progress stream.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum ProgressEvent {
    /// `resolving`, `downloading`, `reading`, `unpacking`, `converting` (mkfs).
    Phase {
        phase: &'static str,
        message: String,
    },
    Layer {
        digest: String,
        bytes_done: u64,
        bytes_total: u64,
        cached: bool,
        done: bool,
    },
    Done {
        image: Box<ImageInfo>,
    },
    Error(bandsox_api::Problem),
}

#[derive(Default)]
struct LayerState {
    done: u64,
    total: u64,
    cached: bool,
    last_sent: Option<Instant>,
}

/// A [`Progress`] that turns core's hooks into [`ProgressEvent`]s on a channel.
struct ChannelProgress {
    tx: mpsc::UnboundedSender<ProgressEvent>,
    layers: Mutex<HashMap<String, LayerState>>,
    downloading: AtomicBool,
}

impl ChannelProgress {
    fn send_layer(&self, digest: &str, force: bool, finished: bool) {
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = layers.get_mut(digest) else {
            return;
        };
        let now = Instant::now();
        if !force && l.last_sent.is_some_and(|t| now - t < LAYER_EVENT_INTERVAL) {
            return;
        }
        l.last_sent = Some(now);
        let _ = self.tx.send(ProgressEvent::Layer {
            digest: digest.to_owned(),
            bytes_done: l.done,
            bytes_total: l.total,
            cached: l.cached,
            done: finished,
        });
    }
}

impl Progress for ChannelProgress {
    fn blob_start(&self, digest: &str, total_bytes: u64, cached: bool) {
        if !cached && !self.downloading.swap(true, Ordering::Relaxed) {
            let _ = self.tx.send(ProgressEvent::Phase {
                phase: "downloading",
                message: "downloading layers".into(),
            });
        }
        self.layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                digest.to_owned(),
                LayerState {
                    done: if cached { total_bytes } else { 0 },
                    total: total_bytes,
                    cached,
                    last_sent: None,
                },
            );
        self.send_layer(digest, true, cached);
    }

    fn blob_bytes(&self, digest: &str, n: u64) {
        if let Some(l) = self
            .layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(digest)
        {
            l.done += n;
        }
        self.send_layer(digest, false, false);
    }

    fn blob_done(&self, digest: &str) {
        self.send_layer(digest, true, true);
    }

    fn phase(&self, message: &str) {
        let phase = match message.split_whitespace().next().unwrap_or("") {
            "done" => return,
            "resolving" => "resolving",
            "unpacking" => "unpacking",
            "building" => "converting",
            "reading" => "reading",
            _ => "working",
        };
        let _ = self.tx.send(ProgressEvent::Phase {
            phase,
            message: message.to_owned(),
        });
    }
}

/// Runs `run` in a task and answers at once with its progress as NDJSON: phase and layer
/// events, then one `done` (with the [`ImageInfo`]) or one `error` (a problem+json body).
fn progress_stream<F, Fut>(run: F) -> Response
where
    F: FnOnce(Arc<dyn Progress>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<ImageInfo>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let progress = Arc::new(ChannelProgress {
        tx: tx.clone(),
        layers: Mutex::default(),
        downloading: AtomicBool::new(false),
    });
    let fut = run(progress);
    tokio::spawn(async move {
        let last = match fut.await {
            Ok(info) => ProgressEvent::Done {
                image: Box::new(info),
            },
            Err(e) => ProgressEvent::Error(e.problem()),
        };
        let _ = tx.send(last);
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(lines)).into_response()
}

/// Streams the request body (a tar, optionally compressed) to a scratch file, then imports it.
#[utoipa::path(
    post,
    path = "/api/images/import",
    tag = "images",
    summary = "Import a `docker save` or OCI layout tar (request body, optionally compressed)",
    operation_id = "images_import",
    params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the archive: a tar, optionally gzip- or zstd-compressed"),
    responses(
        (status = 201, description = "created; with `Accept: application/x-ndjson` the answer is instead `200` and a stream of progress events as for the pull; see docs/IMAGES.md", body = ImageInfo),
        (status = 409, description = "`image_exists`: the reference (as written or normalised) is taken; pass `?force=true` to replace it"),
        (status = 413, description = "`image_too_large`: the archive or the image unpacks to more than BANDSOX_MAX_UNPACKED_MIB or half the free space allows; nothing is kept"),
    )
)]
pub async fn import(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult<Response> {
    if let Some(r) = &q.reference {
        images::validate_reference(r)?;
        if !q.force {
            // Refused before the upload is stored. The body is still read (and dropped), so
            // a client streaming a large archive gets this answer rather than a reset.
            let m = &s.manager;
            if let Err(e) = images::refuse_existing(m.store(), r) {
                let mut stream = body.into_data_stream();
                while let Some(Ok(_)) = stream.next().await {}
                return Err(e.into());
            }
        }
    }
    let upload = s
        .manager
        .storage()
        .images_dir()
        .join(format!(".upload-{}.tar", bandsox_core::storage::new_id()));
    if let Err(e) = receive(&upload, body).await {
        let _ = tokio::fs::remove_file(&upload).await;
        return Err(e);
    }
    let run = move |progress: Arc<dyn Progress>| async move {
        let m = &s.manager;
        let rec = images::import(
            m.store(),
            m.storage(),
            &upload,
            q.reference.as_deref(),
            q.force,
            progress,
        )
        .await;
        let _ = tokio::fs::remove_file(&upload).await;
        Ok(images::inspect(m.store(), m.storage(), &rec?.reference)?)
    };
    if wants_stream(&headers) {
        return Ok(progress_stream(run));
    }
    let info = run(Arc::new(NoProgress)).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// Writes the request body to `upload`; an empty body is refused.
async fn receive(upload: &std::path::Path, body: Body) -> ApiResult<()> {
    let mut f = tokio::fs::File::create(upload)
        .await
        .map_err(bandsox_core::CoreError::from)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))?;
        total += chunk.len() as u64;
        f.write_all(&chunk)
            .await
            .map_err(bandsox_core::CoreError::from)?;
    }
    f.flush().await.map_err(bandsox_core::CoreError::from)?;
    if total == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_image",
            "the request body is empty; send a `docker save` or OCI layout tar",
        ));
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/images/{reference}",
    tag = "images",
    summary = "One image",
    operation_id = "images_inspect",
    params(("reference" = String, Path, description = "image reference")),
    responses((status = 200, description = "success", body = ImageInfo))
)]
pub async fn inspect(
    State(s): State<AppState>,
    Path(reference): Path<String>,
) -> ApiResult<Json<ImageInfo>> {
    let m = &s.manager;
    Ok(Json(images::inspect(m.store(), m.storage(), &reference)?))
}

#[utoipa::path(
    delete,
    path = "/api/images/{reference}",
    tag = "images",
    summary = "Remove an image not used by any VM or snapshot",
    operation_id = "images_delete",
    params(("reference" = String, Path, description = "image reference")),
    responses((status = 200, description = "success", body = bandsox_api::StatusResponse))
)]
pub async fn delete(
    State(s): State<AppState>,
    Path(reference): Path<String>,
) -> ApiResult<Json<bandsox_api::StatusResponse>> {
    let m = &s.manager;
    images::remove(m.store(), m.storage(), &reference).await?;
    Ok(Json(bandsox_api::StatusResponse {
        status: "deleted".into(),
    }))
}
