//! `/api/cluster/*`: the cluster this node belongs to (`serve --cluster`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bandsox_api::{ClusterNodeInfo, ClusterNodesResponse};

use super::AppState;
use crate::error::{ApiError, ApiResult};

/// 404 `not_clustered` for a server started without `--cluster`.
pub fn not_clustered() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::NOT_FOUND,
        "not_clustered",
        "this server is not part of a cluster",
    );
    e.hint = Some(
        "start `bandsox serve` with --cluster, --node-name and --advertise (see docs/CLUSTER.md)",
    );
    e
}

/// `GET /api/cluster/nodes`.
#[utoipa::path(
    get,
    path = "/api/cluster/nodes",
    tag = "cluster",
    summary = "Every node of the cluster and whether it is up",
    operation_id = "cluster_nodes",
    responses(
        (status = 200, description = "the nodes", body = ClusterNodesResponse),
        (status = 404, description = "not a cluster node (`not_clustered`)"),
        (status = 503, description = "the cluster store is unavailable (`cluster_unavailable`)"),
    )
)]
pub async fn nodes(State(s): State<AppState>) -> ApiResult<Json<ClusterNodesResponse>> {
    let Some(c) = &s.cluster else {
        return Err(not_clustered());
    };
    let nodes = bandsox_cluster::membership::list_nodes(&c.etcd)
        .await?
        .into_iter()
        .map(|n| ClusterNodeInfo {
            state: if n.up { "up" } else { "down" }.into(),
            name: n.record.name,
            advertise: n.record.advertise,
            version: n.record.version,
            backend: n.record.capacity.backend,
            vcpus: n.record.capacity.vcpus,
            mem_mib: n.record.capacity.mem_mib,
            vms: n.record.capacity.vms,
            max_vms: n.record.capacity.max_vms,
            joined_ms: n.record.joined_ms,
            updated_ms: n.record.updated_ms,
        })
        .collect();
    Ok(Json(ClusterNodesResponse {
        node: c.name.clone(),
        nodes,
    }))
}
