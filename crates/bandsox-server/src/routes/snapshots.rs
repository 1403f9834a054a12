//! `/api/snapshots` and `POST /api/vms/{id}/snapshot`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use bandsox_api::{
    CreateVmResponse, MetadataRequest, RenameRequest, Renamed, RestoreRequest, SnapshotCreated,
    SnapshotInfo, SnapshotRequest, StatusResponse,
};
use bandsox_core::snapshots::RestoreOptions;
use bandsox_core::store::SnapshotRecord;

use super::AppState;
use crate::error::ApiResult;

#[utoipa::path(
    post,
    path = "/api/vms/{id}/snapshot",
    tag = "snapshots",
    summary = "Snapshot a VM (memory, device state and disk)",
    operation_id = "snapshots_create",
    params(("id" = String, Path, description = "VM id")),
    request_body = SnapshotRequest,
    responses((status = 200, description = "success", body = SnapshotCreated))
)]
pub async fn create(
    State(s): State<AppState>,
    Path(vm): Path<String>,
    body: Result<Json<SnapshotRequest>, JsonRejection>,
) -> ApiResult<Json<SnapshotCreated>> {
    let Json(req) = body?;
    let snap = s.manager.snapshot_vm(&vm, &req.name, req.metadata).await?;
    Ok(Json(SnapshotCreated {
        snapshot_id: snap.id,
        name: snap.name,
    }))
}

#[utoipa::path(
    get,
    path = "/api/snapshots",
    tag = "snapshots",
    summary = "List snapshots",
    operation_id = "snapshots_list",
    responses((status = 200, description = "success", body = Vec<SnapshotInfo>))
)]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    Ok(Json(
        s.manager.list_snapshots()?.into_iter().map(info).collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/snapshots/{id}",
    tag = "snapshots",
    summary = "One snapshot",
    operation_id = "snapshots_get",
    params(("id" = String, Path, description = "snapshot id")),
    responses((status = 200, description = "success", body = SnapshotInfo))
)]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SnapshotInfo>> {
    Ok(Json(info(s.manager.get_snapshot(&id)?)))
}

#[utoipa::path(
    post,
    path = "/api/snapshots/{id}/restore",
    tag = "snapshots",
    summary = "Restore a snapshot into a new VM",
    operation_id = "snapshots_restore",
    params(("id" = String, Path, description = "snapshot id")),
    request_body = RestoreRequest,
    responses((status = 200, description = "success", body = CreateVmResponse))
)]
pub async fn restore(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<RestoreRequest>>,
) -> ApiResult<Json<CreateVmResponse>> {
    let req = body.map(|Json(r)| r).unwrap_or_else(|| RestoreRequest {
        enable_networking: true,
        ..Default::default()
    });
    let vm = s
        .manager
        .restore_snapshot(
            &id,
            RestoreOptions {
                name: req.name,
                metadata: req.metadata,
                env_vars: req.env_vars,
                enable_networking: Some(req.enable_networking),
            },
        )
        .await?;
    Ok(Json(CreateVmResponse {
        id: vm.id,
        status: "restored".into(),
    }))
}

#[utoipa::path(
    delete,
    path = "/api/snapshots/{id}",
    tag = "snapshots",
    summary = "Delete a snapshot",
    operation_id = "snapshots_delete",
    params(("id" = String, Path, description = "snapshot id")),
    responses((status = 200, description = "success", body = StatusResponse))
)]
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    s.manager.delete_snapshot(&id)?;
    Ok(Json(StatusResponse {
        status: "deleted".into(),
    }))
}

#[utoipa::path(
    put,
    path = "/api/snapshots/{id}/name",
    tag = "snapshots",
    summary = "Rename a snapshot",
    operation_id = "snapshots_rename",
    params(("id" = String, Path, description = "snapshot id")),
    request_body = RenameRequest,
    responses((status = 200, description = "success", body = Renamed))
)]
pub async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<RenameRequest>, JsonRejection>,
) -> ApiResult<Json<Renamed>> {
    let Json(req) = body?;
    let snap = s.manager.update_snapshot(&id, Some(&req.name), None)?;
    Ok(Json(Renamed {
        status: "renamed".into(),
        name: snap.name,
    }))
}

#[utoipa::path(
    put,
    path = "/api/snapshots/{id}/metadata",
    tag = "snapshots",
    summary = "Replace a snapshot's metadata",
    operation_id = "snapshots_set_metadata",
    params(("id" = String, Path, description = "snapshot id")),
    request_body = MetadataRequest,
    responses((status = 200, description = "success", body = SnapshotInfo))
)]
pub async fn set_metadata(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<MetadataRequest>, JsonRejection>,
) -> ApiResult<Json<SnapshotInfo>> {
    let Json(req) = body?;
    Ok(Json(info(s.manager.update_snapshot(
        &id,
        None,
        Some(&req.metadata),
    )?)))
}

fn info(s: SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_name: s.name.clone(),
        id: s.id,
        name: s.name,
        source_vm_id: s.source_vm_id,
        image: s.image,
        image_digest: s.image_digest,
        vcpu: s.vcpu,
        mem_mib: s.mem_mib,
        disk_size_mib: s.disk_size_mib,
        size_bytes: s.size_bytes,
        created_at: s.created_at,
        metadata: s.metadata,
    }
}
