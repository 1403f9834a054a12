//! Operations: liveness (`/healthz`), readiness (`/readyz`), per-VM resource use
//! (`/api/vms/{id}/stats`). The probes need no credentials and tell nothing but names and
//! states; why a check failed goes to the log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bandsox_api::{HealthCheck, HealthInfo, VmStatsInfo};

use super::AppState;
use crate::error::ApiResult;

/// `GET /healthz`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the server process answers (no credentials needed)",
    operation_id = "operations_healthz",
    security(()),
    responses((status = 200, description = "alive", body = HealthInfo))
)]
pub async fn healthz() -> Json<HealthInfo> {
    Json(HealthInfo {
        status: "ok".into(),
        checks: Vec::new(),
    })
}

/// `GET /readyz`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: database, storage, kernel assets and VMM backend are usable (no credentials needed)",
    operation_id = "operations_readyz",
    security(()),
    responses(
        (status = 200, description = "ready", body = HealthInfo),
        (status = 503, description = "a check failed (the log says why)", body = HealthInfo),
    )
)]
pub async fn readyz(State(s): State<AppState>) -> Response {
    let checks = s.manager.readiness();
    for c in checks.iter().filter(|c| !c.ok) {
        tracing::warn!(
            check = c.name,
            detail = c.detail.as_deref().unwrap_or(""),
            "not ready"
        );
    }
    let ready = checks.iter().all(|c| c.ok);
    let body = HealthInfo {
        status: if ready { "ok" } else { "unavailable" }.into(),
        checks: checks
            .into_iter()
            .map(|c| HealthCheck {
                name: c.name.into(),
                ok: c.ok,
            })
            .collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /api/vms/{id}/stats`.
#[utoipa::path(
    get,
    path = "/api/vms/{id}/stats",
    tag = "vms",
    summary = "What the VM uses now: CPU, memory, disk, network",
    operation_id = "vms_stats",
    params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "success", body = VmStatsInfo))
)]
pub async fn stats(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<VmStatsInfo>> {
    let st = s.manager.vm_stats(&id).await?;
    let name = s.manager.get_vm(&id)?.name;
    Ok(Json(VmStatsInfo {
        id: st.id,
        name,
        status: st.status,
        cpu_percent: st.cpu_percent,
        cpu_time_ms: st.cpu_time_ms,
        host_rss_bytes: st.host_rss_bytes,
        mem_total_bytes: st.mem_total_bytes,
        mem_used_bytes: st.mem_used_bytes,
        disk_size_bytes: st.disk_size_bytes,
        disk_used_bytes: st.disk_used_bytes,
        net_rx_bytes: st.net_rx_bytes,
        net_tx_bytes: st.net_tx_bytes,
    }))
}
