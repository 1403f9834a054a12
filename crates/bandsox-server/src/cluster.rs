//! `serve --cluster`: this node's membership in a bandsox cluster coordinated through etcd
//! (see docs/CLUSTER.md). Without `--cluster` none of this exists and the server is the
//! single-host, SQLite-only server it always was.

use std::sync::Arc;

use axum::http::StatusCode;
use bandsox_cluster::membership::{self, Capacity, Membership, NodeRecord};
use bandsox_cluster::{ClusterError, Etcd};
use bandsox_core::Manager;

use crate::error::ApiError;

/// What `serve --cluster ...` was given.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `--cluster`: comma-separated etcd member URLs.
    pub members: String,
    /// `--node-name`.
    pub node_name: String,
    /// `--advertise`: where the other nodes reach this node's API.
    pub advertise: String,
    /// The contents of `--cluster-secret-file`: what nodes prove to each other.
    pub secret: String,
    /// `--cluster-lease-ttl`, seconds.
    pub lease_ttl_s: u64,
}

/// Shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// This node, joined.
#[derive(Debug)]
pub struct ClusterNode {
    pub etcd: Arc<Etcd>,
    pub membership: Arc<Membership>,
    pub name: String,
    pub advertise: String,
    secret: String,
    renewal: tokio::task::JoinHandle<()>,
}

/// What this node reports about itself each renewal.
fn capacity(manager: &Manager) -> Capacity {
    let vms = manager.list_vms().map_or(0, |v| v.len()) as u32;
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    Capacity {
        vcpus,
        mem_mib: host_mem_mib(),
        vms,
        max_vms: manager.limits().max_vms.min(u32::MAX as usize) as u32,
        backend: manager.backend().0.to_owned(),
    }
}

/// `MemTotal` of /proc/meminfo in MiB (0 when unreadable).
fn host_mem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Checks the options without contacting etcd.
pub fn check(opts: &ClusterOptions) -> Result<String, ClusterError> {
    bandsox_cluster::etcd::parse_members(&opts.members)?;
    membership::validate_name(&opts.node_name)?;
    let advertise = membership::validate_advertise(&opts.advertise)?;
    if opts.secret.len() < MIN_SECRET_BYTES {
        return Err(ClusterError::Invalid(format!(
            "the cluster secret must be at least {MIN_SECRET_BYTES} bytes (it is {})",
            opts.secret.len()
        )));
    }
    Ok(advertise)
}

impl ClusterNode {
    /// Checks the options, registers this node and starts renewing its lease.
    pub async fn join(
        manager: Arc<Manager>,
        opts: &ClusterOptions,
    ) -> Result<Arc<Self>, ClusterError> {
        let advertise = check(opts)?;
        let etcd = Arc::new(Etcd::new(&opts.members)?);
        let node_id = membership::node_id(manager.storage().root()).map_err(|e| {
            ClusterError::Invalid(format!("cannot keep the node id in the storage root: {e}"))
        })?;
        let record = NodeRecord {
            name: opts.node_name.clone(),
            node_id,
            advertise: advertise.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            capacity: capacity(&manager),
            joined_ms: 0,
            updated_ms: 0,
        };
        let membership = Membership::join(etcd.clone(), record, opts.lease_ttl_s).await?;
        let m = manager.clone();
        let renewal = membership.spawn_renewal(move || capacity(&m));
        tracing::info!(node = %opts.node_name, %advertise, ttl_s = opts.lease_ttl_s, "joined the cluster");
        Ok(Arc::new(Self {
            etcd,
            membership,
            name: opts.node_name.clone(),
            advertise,
            secret: opts.secret.clone(),
            renewal,
        }))
    }

    /// Whether `given` is the cluster secret (constant time).
    pub fn secret_matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        given.len() == self.secret.len() && bool::from(given.ct_eq(self.secret.as_bytes()))
    }

    /// The secret, for requests this node sends to another.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Stops renewing and revokes the lease: the node shows as down at once.
    pub async fn leave(&self) {
        self.renewal.abort();
        if let Err(e) = self.membership.leave().await {
            tracing::warn!(error = %e, "cannot leave the cluster cleanly; the lease will expire");
        }
    }
}

/// The id a create was placed under, for the create handler.
#[derive(Debug, Clone)]
pub struct PlacedId(pub String);

/// How a request reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRequest {
    /// From a client.
    Client,
    /// From another node, with the right secret.
    Node,
    /// Claims to be from a node, with a wrong secret.
    BadSecret,
}

impl ClusterNode {
    /// Classifies `headers` by the cluster secret header.
    pub fn classify(&self, headers: &axum::http::HeaderMap) -> NodeRequest {
        match headers.get(crate::forward::SECRET_HEADER) {
            None => NodeRequest::Client,
            Some(v) if self.secret_matches(v.as_bytes()) => NodeRequest::Node,
            Some(_) => NodeRequest::BadSecret,
        }
    }
}

/// The VM reference of a `/api/vms/{ref}[/...]` path.
fn vm_reference(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/vms/")?;
    let seg = rest.split('/').next().unwrap_or("");
    let dockerfile_route = seg == "from-dockerfile" && !rest.contains('/');
    (!seg.is_empty() && !dockerfile_route).then_some(seg)
}

/// Middleware (cluster mode only, outside the reference resolver): a request for a VM that
/// lives on another node is forwarded there; a create is placed, then created here or on its
/// node; a delete releases the placement; the VM list merges every node's.
pub async fn route_to_owner(
    axum::extract::State(s): axum::extract::State<crate::routes::AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(node) = s.cluster.clone() else {
        return next.run(req).await;
    };
    match node.classify(req.headers()) {
        NodeRequest::BadSecret => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the cluster secret of this node-to-node request is wrong",
            )
            .into_response()
        }
        NodeRequest::Node => {
            // Sent by another node: served here, as this node's own.
            if let Some(id) = req
                .headers()
                .get(crate::forward::VM_ID_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                let id = id.to_owned();
                req.extensions_mut().insert(PlacedId(id));
            }
            return next.run(req).await;
        }
        NodeRequest::Client => {}
    }
    // Everything below needs a caller the guard lets through; others are refused by it.
    if !crate::auth::check_once(&s, &mut req) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let result = if path == "/api/vms" && method == axum::http::Method::POST {
        create(&s, &node, req, next).await
    } else if matches!(path.as_str(), "/api/vms" | "/api/projects")
        && method == axum::http::Method::GET
    {
        list(&s, &node, req, next).await
    } else if let Some(reference) = vm_reference(&path) {
        let reference = crate::util::percent_decode_lossy(reference);
        vm_request(&s, &node, &reference, req, next).await
    } else {
        Ok(next.run(req).await)
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn placement_error(e: bandsox_cluster::placement::PlacementError) -> ApiError {
    let status = match e.code() {
        "node_not_found" => StatusCode::NOT_FOUND,
        "already_exists" | "node_full" => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut err = ApiError::new(status, e.code(), e.to_string());
    err.hint = e.hint();
    err
}

/// Longest create body read here (the create handler has its own limit, far below this).
const CREATE_BODY_LIMIT: usize = 1 << 20;

async fn create(
    s: &crate::routes::AppState,
    node: &Arc<ClusterNode>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, CREATE_BODY_LIMIT)
        .await
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let pin = value
        .get("node")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let name = value
        .get("name")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let id = bandsox_core::storage::new_id();
    let placement =
        bandsox_cluster::placement::place(&node.etcd, &id, pin.as_deref(), name.as_deref())
            .await?
            .map_err(placement_error)?;
    let mut req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    let resp = if placement.node == node.name {
        req.extensions_mut().insert(PlacedId(id.clone()));
        next.run(req).await
    } else {
        let owner = owner_record(node, &placement.node).await?;
        // A create may pull an image and boot: give it the boot timeout and more.
        let wait = std::time::Duration::from_secs(600);
        match crate::forward::forward(
            node,
            &placement.node,
            &owner.record.advertise,
            req,
            &[(crate::forward::VM_ID_HEADER, id.clone())],
            wait,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                release(node, &id).await;
                return Err(e);
            }
        }
    };
    if !resp.status().is_success() {
        release(node, &id).await;
    }
    let _ = s;
    Ok(resp)
}

async fn release(node: &ClusterNode, id: &str) {
    if let Err(e) = bandsox_cluster::placement::release(&node.etcd, id).await {
        tracing::warn!(id, error = %e, "cannot release a placement; it stays until deleted");
    }
}

async fn owner_record(
    node: &ClusterNode,
    name: &str,
) -> Result<bandsox_cluster::NodeStatus, ApiError> {
    let nodes = membership::list_nodes(&node.etcd).await?;
    let n = nodes
        .into_iter()
        .find(|n| n.record.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_not_found",
                format!("the VM's node `{name}` is not registered"),
            )
        })?;
    if !n.up {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_down",
            format!("the VM's node `{name}` is down; its VMs are lost until it returns"),
        );
        e.hint = Some("see `bandsox cluster nodes`; the VM is kept and comes back with its node");
        return Err(e);
    }
    Ok(n)
}

/// A request for one VM: served here when the VM is here, else forwarded to its node.
async fn vm_request(
    s: &crate::routes::AppState,
    node: &Arc<ClusterNode>,
    reference: &str,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let is_delete =
        req.method() == axum::http::Method::DELETE && req.uri().path().matches('/').count() == 3;
    match s.manager.resolve_vm(reference) {
        Ok(id) => {
            let resp = next.run(req).await;
            if is_delete && resp.status().is_success() {
                release(node, &id).await;
            }
            return Ok(resp);
        }
        Err(e) if e.code() == "ambiguous_reference" => return Err(e.into()),
        Err(_) => {}
    }
    let placements = bandsox_cluster::placement::placements(&node.etcd).await?;
    let matches: Vec<&bandsox_cluster::placement::Placement> = {
        let exact: Vec<_> = placements.iter().filter(|p| p.id == reference).collect();
        if !exact.is_empty() {
            exact
        } else {
            let named: Vec<_> = placements
                .iter()
                .filter(|p| p.name.as_deref() == Some(reference))
                .collect();
            if !named.is_empty() {
                named
            } else if reference.len() >= 4 {
                placements
                    .iter()
                    .filter(|p| p.id.starts_with(reference))
                    .collect()
            } else {
                Vec::new()
            }
        }
    };
    let p = match matches.as_slice() {
        [] => return Ok(next.run(req).await),
        [one] => *one,
        many => {
            let ids: Vec<&str> = many.iter().map(|p| p.id.as_str()).collect();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ambiguous_reference",
                format!("`{reference}` matches several VMs: {}", ids.join(", ")),
            ));
        }
    };
    if p.node == node.name {
        // Placed here but not (or no longer) here: the handler answers 404.
        return Ok(next.run(req).await);
    }
    let owner = owner_record(node, &p.node).await?;
    // The path with the reference replaced by the full id (names are per node).
    let (mut parts, body) = req.into_parts();
    let tail = parts
        .uri
        .path()
        .strip_prefix("/api/vms/")
        .and_then(|r| r.split_once('/').map(|(_, t)| t.to_owned()));
    let mut uri = format!("/api/vms/{}", p.id);
    if let Some(t) = tail {
        uri.push('/');
        uri.push_str(&t);
    }
    if let Some(q) = parts.uri.query() {
        uri.push('?');
        uri.push_str(q);
    }
    parts.uri = uri
        .parse()
        .map_err(|_| ApiError::invalid("the path cannot be forwarded"))?;
    let req = axum::extract::Request::from_parts(parts, body);
    // Execs and waits carry their own timeouts; this bounds only the wait for headers.
    let wait = std::time::Duration::from_secs(3600);
    let resp =
        crate::forward::forward(node, &p.node, &owner.record.advertise, req, &[], wait).await?;
    if is_delete && resp.status().is_success() {
        release(node, &p.id).await;
    }
    Ok(resp)
}

/// `GET /api/vms` on a cluster: this node's VMs, every other live node's, and the placements
/// of down nodes as `lost`; each with its `node`.
async fn list(
    s: &crate::routes::AppState,
    node: &Arc<ClusterNode>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let local = next.run(req).await;
    if !local.status().is_success() {
        return Ok(local);
    }
    let mut all = vms_of(local, &node.name).await?;
    let nodes = membership::list_nodes(&node.etcd).await?;
    let placements = bandsox_cluster::placement::placements(&node.etcd).await?;
    for n in nodes.iter().filter(|n| n.record.name != node.name) {
        let from_node = if n.up {
            let mut r = axum::extract::Request::new(axum::body::Body::empty());
            *r.uri_mut() = uri.clone();
            *r.headers_mut() = headers.clone();
            match crate::forward::forward(
                node,
                &n.record.name,
                &n.record.advertise,
                r,
                &[],
                crate::forward::CONNECT_TIMEOUT,
            )
            .await
            {
                Ok(resp) if resp.status().is_success() => vms_of(resp, &n.record.name).await.ok(),
                Ok(resp) => {
                    tracing::warn!(node = %n.record.name, status = %resp.status(), "a node did not list its VMs");
                    None
                }
                Err(e) => {
                    tracing::warn!(node = %n.record.name, error = %e.detail, "a node did not list its VMs");
                    None
                }
            }
        } else {
            None
        };
        match from_node {
            Some(vms) => all.extend(vms),
            None => all.extend(
                placements
                    .iter()
                    .filter(|p| p.node == n.record.name)
                    .map(lost),
            ),
        }
    }
    let _ = s;
    let total = all.len().to_string();
    Ok((
        [("x-total-count", total)],
        axum::Json(serde_json::Value::Array(all)),
    )
        .into_response())
}

/// A VM of a node that is down, as far as the cluster knows it.
fn lost(p: &bandsox_cluster::placement::Placement) -> serde_json::Value {
    serde_json::json!({
        "id": p.id,
        "name": p.name.clone().unwrap_or_default(),
        "status": "lost",
        "node": p.node,
        "created_at": p.created_ms as f64 / 1000.0,
    })
}

/// The VMs of a list answer, each marked with `node`.
async fn vms_of(
    resp: axum::response::Response,
    node: &str,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "node_unreachable", e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "node_unreachable",
            format!("node `{node}` answered a list that is not JSON: {e}"),
        )
    })?;
    let mut vms = match v {
        serde_json::Value::Array(a) => a,
        _ => Vec::new(),
    };
    for vm in &mut vms {
        if let Some(o) = vm.as_object_mut() {
            o.insert("node".into(), serde_json::Value::String(node.to_owned()));
        }
    }
    Ok(vms)
}
