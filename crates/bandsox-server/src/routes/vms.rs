//! `/api/vms`: create, list, inspect, run commands in, stop and delete VMs.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bandsox_api::{
    CreateVmRequest, CreateVmResponse, ExecResponse, ExtendRequest, MetadataRequest, RenameRequest,
    Renamed, StatusResponse, TimeoutRequest, VersionInfo, VmInfo,
};
use bandsox_core::store::TimeoutAction;
use bandsox_core::{CreateVm, VmRecord, VmStatus};
use serde::Deserialize;

use super::AppState;
use crate::error::{ApiError, ApiResult};

/// Longest command timeout accepted, in seconds.
const MAX_EXEC_TIMEOUT_S: u64 = 24 * 3600;
/// Output kept per stream of a blocking exec.
const EXEC_OUTPUT_CAP: usize = 64 << 20;

#[utoipa::path(
    get,
    path = "/api/version",
    tag = "vms",
    summary = "Server version, VMM backend and accelerator",
    operation_id = "vms_version",
    responses((status = 200, description = "success", body = VersionInfo))
)]
pub async fn version(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Json<VersionInfo> {
    let (backend, accel) = s.manager.backend();
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        backend: backend.into(),
        accelerator: accel.into(),
        proxy_url: s.proxy.base_url(host),
    })
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
}

/// A path that exists, asked with a method it does not serve.
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this path does not accept {method}"),
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    limit: Option<usize>,
    /// Extension: skip this many matches (newest first, ties by id).
    offset: Option<usize>,
    metadata_equals: Option<String>,
    /// Extension: only VMs in this state.
    status: Option<String>,
    /// Extension: only VMs whose name contains this text.
    name: Option<String>,
    /// Extension: only VMs created from this image reference.
    image: Option<String>,
}

/// Lists VMs newest first. The body is a plain list (as BandSox clients expect); the number of
/// matches before `offset`/`limit` is in the `X-Total-Count` header.
#[utoipa::path(
    get,
    path = "/api/vms",
    tag = "vms",
    summary = "List VMs, newest first (`X-Total-Count` header: matches before paging)",
    operation_id = "vms_list",
    params(ListQuery),
    responses((status = 200, description = "success", body = Vec<VmInfo>))
)]
pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<([(&'static str, String); 1], Json<Vec<VmInfo>>)> {
    // As BandSox: a `metadata_equals` that is not a JSON object is ignored (no filter).
    let filter: Option<serde_json::Map<String, serde_json::Value>> = q
        .metadata_equals
        .as_deref()
        .and_then(|raw| serde_json::from_str(raw).ok());
    let vms = s.manager.list_vms()?;
    let matches = |vm: &VmRecord| {
        filter
            .as_ref()
            .is_none_or(|f| f.iter().all(|(k, v)| vm.metadata.get(k) == Some(v)))
            && q.status
                .as_deref()
                .is_none_or(|st| vm.status.as_str() == st)
            && q.name.as_deref().is_none_or(|n| vm.name.contains(n))
            && q.image.as_deref().is_none_or(|i| vm.image == i)
    };
    let matching: Vec<VmRecord> = vms.into_iter().filter(matches).collect();
    let total = matching.len();
    let out = matching
        .into_iter()
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(usize::MAX))
        .map(|v| vm_info(&s.manager, v))
        .collect();
    Ok(([("x-total-count", total.to_string())], Json(out)))
}

#[utoipa::path(
    post,
    path = "/api/vms",
    tag = "vms",
    summary = "Create and boot a VM from an image (pulled on demand)",
    operation_id = "vms_create",
    request_body = CreateVmRequest,
    responses((status = 200, description = "success", body = CreateVmResponse))
)]
pub async fn create(
    State(s): State<AppState>,
    placed: Option<axum::Extension<crate::cluster::PlacedId>>,
    body: Result<Json<CreateVmRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreateVmResponse>)> {
    let Json(req) = body?;
    if req.node.is_some() && s.cluster.is_none() {
        return Err(crate::routes::cluster::not_clustered());
    }
    let mut create = CreateVm::new(req.image);
    create.name = req.name;
    create.vcpu = req.vcpu;
    create.mem_mib = req.mem_mib;
    create.disk_size_mib = req.disk_size_mib;
    create.force_rebuild = req.force_rebuild;
    create.enable_networking = req.enable_networking;
    create.template = req.template;
    create.env_vars = req.env_vars.unwrap_or_default();
    create.metadata = req.metadata.unwrap_or_else(|| serde_json::json!({}));
    create.timeout_s = req.timeout_s;
    create.timeout_action = parse_action(req.timeout_action.as_deref())?.unwrap_or_default();
    let vm = match placed {
        // Placed by the cluster under this id (here, or by the node that forwarded it).
        Some(axum::Extension(crate::cluster::PlacedId(id))) => {
            s.manager.create_vm_with_id(create, id).await?
        }
        None => s.manager.create_vm(create).await?,
    };
    // BandSox answers "created"; the VM is running and its agent ready at this point.
    Ok((
        StatusCode::OK,
        Json(CreateVmResponse {
            id: vm.id,
            status: "created".into(),
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/vms/{id}",
    tag = "vms",
    summary = "One VM",
    operation_id = "vms_get",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = VmInfo))
)]
pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(vm_info(&s.manager, s.manager.get_vm(&id)?)))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/exec",
    tag = "vms",
    summary = "Run a shell command and wait for it",
    operation_id = "vms_exec",
    params(("id" = String, Path, description = "VM id")),
    request_body = bandsox_api::ExecRequest,
    responses((status = 200, description = "success", body = ExecResponse))
)]
pub async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<bandsox_api::ExecRequest>, JsonRejection>,
) -> ApiResult<Json<ExecResponse>> {
    let Json(req) = body?;
    if req.timeout == 0 || req.timeout > MAX_EXEC_TIMEOUT_S {
        return Err(ApiError::invalid(format!(
            "timeout must be 1 to {MAX_EXEC_TIMEOUT_S} seconds"
        )));
    }
    let exec = bandsox_protocol::ExecRequest {
        command: Some(req.command),
        env: req.env.unwrap_or_default(),
        cwd: req.cwd,
        user: req.user,
        timeout_ms: Some(req.timeout * 1000),
        ..Default::default()
    };
    let out = s.manager.exec(&id, exec, None, EXEC_OUTPUT_CAP).await?;
    if out.status.timed_out {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "exec_timeout",
            format!("Command timed out after {} s", req.timeout),
        ));
    }
    let exit_code = match (out.status.exit_code, out.status.signal) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    };
    Ok(Json(ExecResponse {
        exit_code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout_dropped_bytes: out.stdout_dropped,
        stderr_dropped_bytes: out.stderr_dropped,
    }))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/stop",
    tag = "vms",
    summary = "Stop a VM (its disk is kept)",
    operation_id = "vms_stop",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = StatusResponse))
)]
pub async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    s.manager.stop_vm(&id).await?;
    Ok(Json(StatusResponse {
        status: "stopped".into(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/pause",
    tag = "vms",
    summary = "Pause a running VM",
    operation_id = "vms_pause",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = StatusResponse))
)]
pub async fn pause(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    s.manager.pause_vm(&id).await?;
    Ok(Json(StatusResponse {
        status: "paused".into(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/resume",
    tag = "vms",
    summary = "Resume a paused VM",
    operation_id = "vms_resume",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = StatusResponse))
)]
pub async fn resume(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    s.manager.resume_vm(&id).await?;
    Ok(Json(StatusResponse {
        status: "resumed".into(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/start",
    tag = "vms",
    summary = "Boot a stopped VM again",
    operation_id = "vms_start",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = StatusResponse))
)]
pub async fn start(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    s.manager.start_vm(&id).await?;
    Ok(Json(StatusResponse {
        status: "started".into(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/restart",
    tag = "vms",
    summary = "Stop and boot a VM",
    operation_id = "vms_restart",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = StatusResponse))
)]
pub async fn restart(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    s.manager.restart_vm(&id).await?;
    Ok(Json(StatusResponse {
        status: "restarted".into(),
    }))
}

#[utoipa::path(
    put,
    path = "/api/vms/{id}/name",
    tag = "vms",
    summary = "Rename a VM",
    operation_id = "vms_rename",
    params(("id" = String, Path, description = "VM id")),
    request_body = RenameRequest,
    responses((status = 200, description = "success", body = Renamed))
)]
pub async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<RenameRequest>, JsonRejection>,
) -> ApiResult<Json<Renamed>> {
    let Json(req) = body?;
    let vm = s.manager.update_vm(&id, Some(&req.name), None)?;
    Ok(Json(Renamed {
        status: "renamed".into(),
        name: vm.name,
    }))
}

#[utoipa::path(
    put,
    path = "/api/vms/{id}/metadata",
    tag = "vms",
    summary = "Replace a VM's metadata",
    operation_id = "vms_set_metadata",
    params(("id" = String, Path, description = "VM id")),
    request_body = MetadataRequest,
    responses((status = 200, description = "success", body = VmInfo))
)]
pub async fn set_metadata(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<MetadataRequest>, JsonRejection>,
) -> ApiResult<Json<VmInfo>> {
    let Json(req) = body?;
    Ok(Json(vm_info(
        &s.manager,
        s.manager.update_vm(&id, None, Some(&req.metadata))?,
    )))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/timeout",
    tag = "vms",
    summary = "Set the VM's time to live and what happens then",
    operation_id = "vms_set_timeout",
    params(("id" = String, Path, description = "VM id")),
    request_body = TimeoutRequest,
    responses((status = 200, description = "success", body = VmInfo))
)]
pub async fn set_timeout(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<TimeoutRequest>, JsonRejection>,
) -> ApiResult<Json<VmInfo>> {
    let Json(req) = body?;
    let action = parse_action(req.action.as_deref())?;
    Ok(Json(vm_info(
        &s.manager,
        s.manager.set_timeout(&id, req.timeout_s, action)?,
    )))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/extend",
    tag = "vms",
    summary = "Push the VM's expiry back",
    operation_id = "vms_extend",
    params(("id" = String, Path, description = "VM id")),
    request_body = ExtendRequest,
    responses((status = 200, description = "success", body = VmInfo))
)]
pub async fn extend(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ExtendRequest>, JsonRejection>,
) -> ApiResult<Json<VmInfo>> {
    let Json(req) = body?;
    Ok(Json(vm_info(
        &s.manager,
        s.manager.extend_timeout(&id, req.seconds)?,
    )))
}

fn parse_action(a: Option<&str>) -> ApiResult<Option<TimeoutAction>> {
    match a {
        None => Ok(None),
        Some(a) => TimeoutAction::parse(a).map(Some).ok_or_else(|| {
            ApiError::invalid(format!(
                "timeout action must be stop, pause or delete, got `{a}`"
            ))
        }),
    }
}

#[utoipa::path(
    delete,
    path = "/api/vms/{id}",
    tag = "vms",
    summary = "Delete a VM and everything it owns",
    operation_id = "vms_delete",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = StatusResponse))
)]
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    s.manager.delete_vm(&id).await?;
    Ok(Json(StatusResponse {
        status: "deleted".into(),
    }))
}

pub(crate) fn vm_info(m: &bandsox_core::Manager, vm: VmRecord) -> VmInfo {
    let network_config = m
        .vm_network(&vm.id)
        .ok()
        .flatten()
        .map(|n| n.config_json(&vm.id));
    let env_vars: BTreeMap<String, String> = vm
        .env_vars
        .into_iter()
        .map(|(k, v)| {
            let v = if crate::redact::is_secret(&k, &v) {
                "<redacted>".to_owned()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    VmInfo {
        agent_ready: vm.status == VmStatus::Running,
        id: vm.id,
        name: vm.name,
        image: vm.image,
        image_digest: vm.image_digest,
        status: vm.status.to_string(),
        vcpu: vm.vcpu,
        mem_mib: vm.mem_mib,
        disk_size_mib: vm.disk_size_mib,
        created_at: vm.created_at,
        updated_at: vm.updated_at,
        pid: vm.pid,
        error: vm.error,
        metadata: vm.metadata,
        env_vars,
        network_config,
        vsock_config: None,
        restored_from: vm.restored_from,
        expires_at: vm.expires_at,
        timeout_action: vm.timeout_action.as_str().into(),
        vmm: vm.vmm,
        stop_reason: vm.stop_reason.map(|r| r.as_str().to_owned()),
        stopped_at: vm.stopped_at,
        node: None,
    }
}
