//! `/api/templates`: list, build and remove templates (creates use them by themselves),
//! `/api/pools` (warm pools) and `POST /api/vms/{id}/fork`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use bandsox_api::{
    BuildTemplateRequest, ForkRequest, ForkResponse, PoolInfo, SetPoolRequest, StatusResponse,
    TemplateInfo,
};
use bandsox_core::{PoolSpec, TemplateRecord, TemplateShape};

use super::AppState;
use crate::error::ApiResult;

fn info(s: &AppState, t: TemplateRecord) -> TemplateInfo {
    TemplateInfo {
        current: s.manager.template_is_current(&t),
        id: t.id,
        image: t.image,
        image_digest: t.image_digest,
        vcpu: t.vcpu,
        mem_mib: t.mem_mib,
        disk_size_mib: t.disk_size_mib,
        enable_networking: t.enable_networking,
        vmm: t.vmm,
        created_at: t.created_at,
        build_ms: t.build_ms,
        size_bytes: t.size_bytes,
    }
}

#[utoipa::path(
    get,
    path = "/api/templates",
    tag = "templates",
    summary = "List templates",
    operation_id = "templates_list",
    responses((status = 200, description = "success", body = Vec<TemplateInfo>))
)]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<TemplateInfo>>> {
    let all = s.manager.list_templates()?;
    Ok(Json(all.into_iter().map(|t| info(&s, t)).collect()))
}

#[utoipa::path(
    post,
    path = "/api/templates",
    tag = "templates",
    summary = "Build the template of an image and shape (returns the existing one if built)",
    operation_id = "templates_build",
    request_body = BuildTemplateRequest,
    responses((status = 200, description = "success", body = TemplateInfo))
)]
pub async fn build(
    State(s): State<AppState>,
    body: Result<Json<BuildTemplateRequest>, JsonRejection>,
) -> ApiResult<Json<TemplateInfo>> {
    let Json(req) = body?;
    let shape = TemplateShape {
        vcpu: req.vcpu,
        mem_mib: req.mem_mib,
        disk_size_mib: req.disk_size_mib,
        enable_networking: req.enable_networking,
    };
    let t = s.manager.build_template(&req.image, shape).await?;
    Ok(Json(info(&s, t)))
}

#[utoipa::path(
    get,
    path = "/api/templates/{id}",
    tag = "templates",
    summary = "One template",
    operation_id = "templates_get",
    params(("id" = String, Path, description = "template id")),
    responses((status = 200, description = "success", body = TemplateInfo))
)]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TemplateInfo>> {
    let t = s.manager.get_template(&id)?;
    Ok(Json(info(&s, t)))
}

#[utoipa::path(
    delete,
    path = "/api/templates/{id}",
    tag = "templates",
    summary = "Delete a template (VMs made from it are unaffected)",
    operation_id = "templates_delete",
    params(("id" = String, Path, description = "template id")),
    responses((status = 200, description = "success", body = StatusResponse))
)]
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusResponse>> {
    s.manager.delete_template(&id)?;
    Ok(Json(StatusResponse {
        status: "deleted".into(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/fork",
    tag = "vms",
    summary = "Fork a VM into new running VMs (memory and disk state of this instant)",
    operation_id = "vms_fork",
    params(("id" = String, Path, description = "VM id")),
    request_body = ForkRequest,
    responses((status = 200, description = "success", body = ForkResponse))
)]
pub async fn fork(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ForkRequest>, JsonRejection>,
) -> ApiResult<Json<ForkResponse>> {
    let Json(req) = body?;
    let vms = s.manager.fork_vm(&id, req.count, req.names).await?;
    Ok(Json(ForkResponse {
        ids: vms.into_iter().map(|v| v.id).collect(),
    }))
}

fn pool_infos(s: &AppState) -> ApiResult<Json<Vec<PoolInfo>>> {
    let pools = s.manager.pools()?;
    Ok(Json(
        pools
            .into_iter()
            .map(|p| PoolInfo {
                image: p.image,
                vcpu: p.vcpu,
                mem_mib: p.mem_mib,
                disk_size_mib: p.disk_size_mib,
                enable_networking: p.enable_networking,
                size: p.size,
                ready: p.ready,
                template: p.template,
            })
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/pools",
    tag = "templates",
    summary = "List warm pools and how many VMs each holds ready",
    operation_id = "pools_list",
    responses((status = 200, description = "success", body = Vec<PoolInfo>))
)]
pub async fn list_pools(State(s): State<AppState>) -> ApiResult<Json<Vec<PoolInfo>>> {
    pool_infos(&s)
}

#[utoipa::path(
    put,
    path = "/api/pools",
    tag = "templates",
    summary = "Set the size of the warm pool of an image and shape (0 removes it); it fills in the background",
    operation_id = "pools_set",
    request_body = SetPoolRequest,
    responses((status = 200, description = "success: every pool", body = Vec<PoolInfo>))
)]
pub async fn set_pool(
    State(s): State<AppState>,
    body: Result<Json<SetPoolRequest>, JsonRejection>,
) -> ApiResult<Json<Vec<PoolInfo>>> {
    let Json(req) = body?;
    s.manager.set_pool(PoolSpec {
        image: req.image,
        shape: TemplateShape {
            vcpu: req.vcpu,
            mem_mib: req.mem_mib,
            disk_size_mib: req.disk_size_mib,
            enable_networking: req.enable_networking,
        },
        size: req.size,
    })?;
    pool_infos(&s)
}
