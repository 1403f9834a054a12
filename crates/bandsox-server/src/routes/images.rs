//! `/api/images`: list, pull from a registry, import an uploaded archive, inspect, delete.
//!
//! References contain `/` and `:`, so single-image routes take the rest of the path
//! (`GET /api/images/docker.io/library/alpine:latest`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bandsox_core::images::{self, ImageInfo};
use bandsox_image::oci::NoProgress;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

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
    /// Pull and convert again even when cached.
    #[serde(default)]
    pub force: bool,
}

/// Query of `POST /api/images/import`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Name to register; defaults to the archive's own tag (docker `RepoTags`).
    pub reference: Option<String>,
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
    responses((status = 200, description = "success", body = ImageInfo))
)]
pub async fn pull(
    State(s): State<AppState>,
    body: Result<Json<PullRequest>, JsonRejection>,
) -> ApiResult<Json<ImageInfo>> {
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
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "give both `username` and `password`, or neither",
            ))
        }
    }
    let m = &s.manager;
    let rec = images::pull(
        m.store(),
        m.storage(),
        &req.reference,
        &opts,
        req.force,
        Arc::new(NoProgress),
    )
    .await?;
    Ok(Json(images::inspect(
        m.store(),
        m.storage(),
        &rec.reference,
    )?))
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
    responses((status = 201, description = "created", body = ImageInfo))
)]
pub async fn import(
    State(s): State<AppState>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageInfo>)> {
    let m = &s.manager;
    if let Some(r) = &q.reference {
        images::validate_reference(r)?;
    }
    let upload = m
        .storage()
        .images_dir()
        .join(format!(".upload-{}.tar", bandsox_core::storage::new_id()));
    let result = async {
        let mut f = tokio::fs::File::create(&upload)
            .await
            .map_err(bandsox_core::CoreError::from)?;
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string())
            })?;
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
        let rec = images::import(
            m.store(),
            m.storage(),
            &upload,
            q.reference.as_deref(),
            Arc::new(NoProgress),
        )
        .await?;
        Ok(images::inspect(m.store(), m.storage(), &rec.reference)?)
    }
    .await;
    let _ = tokio::fs::remove_file(&upload).await;
    Ok((StatusCode::CREATED, Json(result?)))
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
