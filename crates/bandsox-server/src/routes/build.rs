//! Dockerfile builds: BandSox's `POST /api/vms/from-dockerfile` and `POST /api/images/build`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::Json;
use bandsox_api::CreateVmResponse;
use bandsox_core::build::{BuildRequest, MAX_DOCKERFILE_BYTES};
use bandsox_core::store::ImageRecord;
use bandsox_core::CreateVm;
use serde::Deserialize;

use super::AppState;
use crate::error::{ApiError, ApiResult};

/// The multipart form of `POST /api/vms/from-dockerfile` (documentation only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct FromDockerfileForm {
    /// The Dockerfile. `COPY`/`ADD` are refused: there is no build context.
    #[schema(value_type = String, format = Binary)]
    dockerfile: Vec<u8>,
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
    summary = "Build an image from a Dockerfile (in a VM, no context), then create a VM of it",
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
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(bad)?;
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
            dockerfile,
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BuildImageRequest {
    /// Dockerfile text. `COPY`/`ADD` are refused: there is no build context.
    dockerfile: String,
    /// Image reference for the result (default `bandsox-build-<id>`).
    tag: Option<String>,
    /// Build again even when the tag holds a build of the same Dockerfile.
    #[serde(default)]
    force_rebuild: bool,
    /// Writable disk of the build VM, MiB.
    #[serde(default = "default_disk")]
    disk_size_mib: u64,
}

fn default_disk() -> u64 {
    4096
}

/// Extension: builds an image from a Dockerfile (in a VM) without creating a VM of it.
#[utoipa::path(
    post,
    path = "/api/images/build",
    tag = "images",
    summary = "Build an image from a Dockerfile (in a VM, no context)",
    operation_id = "images_build",
    request_body = BuildImageRequest,
    responses((status = 201, description = "built (or reused)", body = ImageRecord))
)]
pub async fn build_image(
    State(s): State<AppState>,
    body: Result<Json<BuildImageRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ImageRecord>)> {
    let Json(req) = body?;
    let image = s
        .manager
        .build_image(BuildRequest {
            dockerfile: req.dockerfile,
            tag: req.tag,
            force_rebuild: req.force_rebuild,
            disk_size_mib: req.disk_size_mib,
        })
        .await?;
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
