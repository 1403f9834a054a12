//! Dockerfile builds: BandSox's `POST /api/vms/from-dockerfile` and `POST /api/images/build`
//! (a JSON Dockerfile, or a tar build context as the body, as Docker's `POST /build` takes it).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::FromRequest;
use axum::extract::{Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use bandsox_api::CreateVmResponse;
use bandsox_core::dockerfile::{BuildRequest, DockerfileSource, MAX_DOCKERFILE_BYTES};
use bandsox_core::store::ImageRecord;
use bandsox_core::CreateVm;
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::StreamReader;

use super::AppState;
use crate::error::{ApiError, ApiResult};

/// The multipart form of `POST /api/vms/from-dockerfile` (documentation only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct FromDockerfileForm {
    /// The Dockerfile.
    #[schema(value_type = String, format = Binary)]
    dockerfile: Vec<u8>,
    /// The build context `COPY`/`ADD` read: a tar (optionally gzip-compressed), at most
    /// 2 GiB; `.dockerignore` in it applies. Without it `COPY`/`ADD` are refused.
    #[schema(value_type = Option<String>, format = Binary)]
    context: Option<Vec<u8>>,
    /// JSON object of `--build-arg`s, as a string.
    build_args: Option<String>,
    /// Image reference for the result (default `bandsox-build-<id>`).
    tag: Option<String>,
    name: Option<String>,
    vcpu: Option<u32>,
    mem_mib: Option<u32>,
    disk_size_mib: Option<u64>,
    force_rebuild: Option<bool>,
    /// JSON object as a string.
    env_vars: Option<String>,
    /// JSON object as a string.
    metadata: Option<String>,
}

/// Builds an image from a Dockerfile in a VM, then creates a VM of it (BandSox's shape).
#[utoipa::path(
    post,
    path = "/api/vms/from-dockerfile",
    tag = "vms",
    summary = "Build an image from a Dockerfile (in VMs, with an optional tar context), then create a VM of it",
    operation_id = "vms_from_dockerfile",
    request_body(content = FromDockerfileForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "success", body = CreateVmResponse))
)]
pub async fn from_dockerfile(
    State(s): State<AppState>,
    mut form: Multipart,
) -> ApiResult<Json<CreateVmResponse>> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
    };
    let mut dockerfile = None;
    let mut create = CreateVm::new(String::new());
    let mut tag = None;
    let mut context = None;
    let mut build_args = BTreeMap::new();
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "context" {
            let reader = StreamReader::new(field.map_err(std::io::Error::other));
            context = Some(s.manager.receive_context(reader).await?);
            continue;
        }
        // Other fields are small: read at most a Dockerfile's worth.
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if bytes.len() + chunk.len() > MAX_DOCKERFILE_BYTES {
                return Err(ApiError::invalid(format!(
                    "field `{name}` is larger than {MAX_DOCKERFILE_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if name == "dockerfile" {
            if bytes.len() > MAX_DOCKERFILE_BYTES {
                return Err(ApiError::invalid(format!(
                    "the Dockerfile is larger than {MAX_DOCKERFILE_BYTES} bytes"
                )));
            }
            dockerfile = Some(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| ApiError::invalid("the Dockerfile is not UTF-8"))?,
            );
            continue;
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::invalid(format!("field `{name}` is not UTF-8")))?
            .trim();
        match name.as_str() {
            "tag" if !text.is_empty() => tag = Some(text.to_owned()),
            "name" if !text.is_empty() => create.name = Some(text.to_owned()),
            "vcpu" => create.vcpu = number(&name, text)?,
            "mem_mib" => create.mem_mib = number(&name, text)?,
            "disk_size_mib" => create.disk_size_mib = number(&name, text)?,
            "force_rebuild" => create.force_rebuild = boolean(&name, text)?,
            "env_vars" if !text.is_empty() => {
                create.env_vars = serde_json::from_str(text).map_err(|e| {
                    ApiError::invalid(format!("env_vars must be a JSON object of strings: {e}"))
                })?
            }
            "metadata" if !text.is_empty() => {
                create.metadata = serde_json::from_str(text)
                    .map_err(|e| ApiError::invalid(format!("metadata must be JSON: {e}")))?
            }
            "build_args" if !text.is_empty() => {
                build_args = serde_json::from_str(text).map_err(|e| {
                    ApiError::invalid(format!("build_args must be a JSON object of strings: {e}"))
                })?
            }
            // `mcp` (BandSox 3.5's MCP server settings) and unknown fields are ignored.
            _ => {}
        }
    }
    let dockerfile = dockerfile
        .ok_or_else(|| ApiError::invalid("the multipart field `dockerfile` is required"))?;
    // Everything about the VM is checked before the (long) build starts.
    s.manager.validate_create(&create)?;
    let image = s
        .manager
        .build_image(BuildRequest {
            dockerfile: DockerfileSource::Text(dockerfile),
            context,
            build_args,
            tag,
            force_rebuild: create.force_rebuild,
            disk_size_mib: create.disk_size_mib,
        })
        .await?;
    create.image = image.reference;
    create.force_rebuild = false;
    let vm = s.manager.create_vm(create).await?;
    Ok(Json(CreateVmResponse {
        id: vm.id,
        status: "created".into(),
    }))
}

/// `POST /api/images/build` with a JSON body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BuildImageRequest {
    /// Dockerfile text. `COPY`/`ADD` need a context: send the context as a tar body instead.
    dockerfile: String,
    /// Image reference for the result (default `bandsox-build-<id>`).
    tag: Option<String>,
    /// Build again even when the tag holds a build of the same inputs.
    #[serde(default)]
    force_rebuild: bool,
    /// Writable disk of the build VMs, MiB.
    #[serde(default = "default_disk")]
    disk_size_mib: u64,
    /// Values for the `ARG`s the Dockerfile declares.
    #[serde(default)]
    build_args: BTreeMap<String, String>,
}

/// `POST /api/images/build` with a tar build context as the body: the options in the query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuildContextQuery {
    /// Path of the Dockerfile inside the context.
    #[serde(default = "default_dockerfile")]
    #[param(default = "Dockerfile")]
    dockerfile: String,
    /// Image reference for the result (default `bandsox-build-<id>`).
    tag: Option<String>,
    /// Build again even when the tag holds a build of the same inputs.
    #[serde(default)]
    force_rebuild: bool,
    /// Writable disk of the build VMs, MiB.
    #[serde(default = "default_disk")]
    #[param(default = 4096)]
    disk_size_mib: u64,
    /// Values for the `ARG`s, as a JSON object.
    build_args: Option<String>,
}

fn default_disk() -> u64 {
    4096
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

/// Extension: builds an image from a Dockerfile (in VMs) without creating a VM of it.
/// The body is either JSON (a Dockerfile without context) or the build context as a tar
/// (`Content-Type: application/x-tar`, optionally gzip; at most 2 GiB) with the options in
/// the query, as Docker's `POST /build` takes it.
#[utoipa::path(
    post,
    path = "/api/images/build",
    tag = "images",
    summary = "Build an image from a Dockerfile (in VMs), with or without a tar context",
    operation_id = "images_build",
    params(BuildContextQuery),
    request_body(content(
        (BuildImageRequest = "application/json"),
        (Vec<u8> = "application/x-tar"),
    )),
    responses((status = 201, description = "built (or reused)", body = ImageRecord))
)]
pub async fn build_image(
    State(s): State<AppState>,
    req: Request,
) -> ApiResult<(StatusCode, Json<ImageRecord>)> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.to_ascii_lowercase().contains("json"));
    let build = if is_json {
        let Json(body) = Json::<BuildImageRequest>::from_request(req, &()).await?;
        BuildRequest {
            dockerfile: DockerfileSource::Text(body.dockerfile),
            context: None,
            build_args: body.build_args,
            tag: body.tag,
            force_rebuild: body.force_rebuild,
            disk_size_mib: body.disk_size_mib,
        }
    } else {
        let Query(q) = Query::<BuildContextQuery>::try_from_uri(req.uri())
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let build_args = match q.build_args.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => serde_json::from_str(t).map_err(|e| {
                ApiError::invalid(format!("build_args must be a JSON object of strings: {e}"))
            })?,
            None => BTreeMap::new(),
        };
        let reader = StreamReader::new(
            Body::into_data_stream(req.into_body()).map_err(std::io::Error::other),
        );
        BuildRequest {
            dockerfile: DockerfileSource::InContext(q.dockerfile),
            context: Some(s.manager.receive_context(reader).await?),
            build_args,
            tag: q.tag,
            force_rebuild: q.force_rebuild,
            disk_size_mib: q.disk_size_mib,
        }
    };
    let image = s.manager.build_image(build).await?;
    Ok((StatusCode::CREATED, Json(image)))
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> ApiResult<T> {
    text.parse()
        .map_err(|_| ApiError::invalid(format!("field `{name}` must be a number, got `{text}`")))
}

fn boolean(name: &str, text: &str) -> ApiResult<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(ApiError::invalid(format!(
            "field `{name}` must be true or false, got `{text}`"
        ))),
    }
}
