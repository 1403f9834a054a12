//! Route table. Handlers parse and validate, call the core, and shape the answer.

pub mod build;
pub mod cluster;
pub mod commands;
pub mod events;
pub mod files;
pub mod health;
pub mod images;
pub mod proxy;
pub mod snapshots;
pub mod socket;
pub mod templates;
pub mod vms;
pub mod ws;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, put};
use axum::Router;
use bandsox_core::Manager;

use crate::auth;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub login_limiter: Arc<crate::auth::LoginLimiter>,
    /// `--insecure-no-auth`: answer any `Host` without authentication.
    pub insecure_no_auth: bool,
    /// Concurrent operations per VM (`--max-ops-per-vm`).
    pub vm_ops: Arc<crate::limits::OpLimiter>,
    /// Bytes of request bodies being buffered at once, across all requests.
    pub body_budget: Arc<crate::limits::BodyBudget>,
    /// The origin of `--public-url` (`https://host[:port]`), also accepted as our own.
    pub public_origin: Option<String>,
    /// Whether the session cookie is marked `Secure` (the public URL is https).
    pub secure_cookies: bool,
    /// Where guest ports are served: the proxy listener.
    pub proxy: ProxyAddress,
    /// Bumped whenever a key is revoked, a session ends or the password changes: open
    /// sockets check their credential again.
    pub credentials_epoch: Arc<tokio::sync::watch::Sender<u64>>,
    /// Metrics and the access log.
    pub observer: Arc<crate::observe::Observer>,
    /// This node's cluster membership (`serve --cluster`); `None` on a single host.
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
}

/// The address of the guest proxy listener, as clients should use it.
#[derive(Clone, Debug, Default)]
pub struct ProxyAddress {
    /// Its port on this host (0 when there is no proxy listener).
    pub port: u16,
    /// `--public-proxy-url`, when it is reached through another name.
    pub public_url: Option<String>,
}

impl ProxyAddress {
    /// The base URL of the proxy for a client that reached the API under `host` (the
    /// request's `Host`): the public URL, else the same host name on the proxy port.
    pub fn base_url(&self, host: Option<&str>) -> Option<String> {
        if let Some(u) = &self.public_url {
            return Some(u.trim_end_matches('/').to_owned());
        }
        if self.port == 0 {
            return None;
        }
        let host = host.unwrap_or("127.0.0.1");
        let name = match host.strip_prefix('[') {
            Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or("")),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned(),
        };
        Some(format!("http://{name}:{}", self.port))
    }
}

impl AppState {
    pub fn new(manager: Arc<Manager>) -> Self {
        Self {
            manager,
            login_limiter: Arc::default(),
            insecure_no_auth: false,
            vm_ops: Arc::default(),
            body_budget: Arc::default(),
            public_origin: None,
            secure_cookies: false,
            proxy: ProxyAddress::default(),
            credentials_epoch: Arc::new(tokio::sync::watch::Sender::new(0)),
            observer: crate::observe::observer(true),
            cluster: None,
        }
    }

    /// Tells open sockets to check their credentials again.
    pub fn credentials_changed(&self) {
        self.credentials_epoch.send_modify(|e| *e += 1);
    }
}

/// The API (and the dashboard) on its listener. From the outside in: default security
/// headers, problem+json for every error, the reference resolver, authentication and the
/// origin policy, body caps and budget, the per-VM operation limit, then the routes.
pub fn router(state: AppState) -> Router {
    // The guard runs after routing (so a refused request is still counted under its route);
    // the resolver before it only resolves references for authenticated requests.
    let inner = limited(&state)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .layer(axum::middleware::from_fn(crate::observe::mark_route))
        .with_state(state.clone());
    let resolved = tower::Layer::layer(
        &axum::middleware::from_fn_with_state(
            state.clone(),
            crate::resolve::references_when_authenticated,
        ),
        inner,
    );
    // In a cluster, requests for VMs of other nodes leave before the resolver (which knows
    // this node's VMs only).
    Router::new()
        .fallback_service(tower::Layer::layer(
            &axum::middleware::from_fn_with_state(state.clone(), crate::cluster::route_to_owner),
            resolved,
        ))
        .layer(axum::middleware::from_fn(crate::error::problems_only))
        .layer(axum::middleware::from_fn(crate::headers::api_defaults))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::observe::observe,
        ))
}

/// `inner` behind the reference resolver: it rewrites the path before `inner` routes it, so
/// it wraps the whole router (a `Router::layer` runs after routing).
fn resolving(state: &AppState, inner: Router) -> Router {
    use tower::Layer;
    Router::new().fallback_service(
        axum::middleware::from_fn_with_state(state.clone(), crate::resolve::references)
            .layer(inner),
    )
}

/// The metrics alone, without authentication, for `serve --metrics-listen` (an address only
/// the scraper reaches).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(crate::observe::metrics))
        .fallback(vms::not_found)
        .with_state(state)
}

/// The guest port proxy on its own listener (another origin): authentication and the per-VM
/// limit, then the proxy. Guest answers pass through as they are (plus the sandbox policy).
pub fn proxy_router(state: AppState) -> Router {
    let proxied = || axum::routing::any(proxy::proxy);
    let routes = Router::new()
        .route("/api/vms/{id}/ports/{port}", proxied())
        .route("/api/vms/{id}/ports/{port}/", proxied())
        .route("/api/vms/{id}/ports/{port}/{*path}", proxied())
        .route_layer(axum::middleware::from_fn(crate::observe::mark_route))
        .fallback(vms::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::per_vm,
        ))
        .layer(DefaultBodyLimit::disable())
        .with_state(state.clone());
    resolving(&state, routes)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::proxy_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::observe::observe,
        ))
}

/// The API for requests that were already authenticated (operations on a persistent socket):
/// the same routes and limits, without the guard.
pub(crate) fn routes_for(state: AppState) -> Router {
    resolving(
        &state,
        limited(&state)
            .layer(axum::middleware::from_fn(crate::error::problems_only))
            .with_state(state.clone()),
    )
}

fn limited(state: &AppState) -> Router<AppState> {
    routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::per_vm,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::bodies,
        ))
        .layer(DefaultBodyLimit::disable())
}

fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/check", get(auth::check_route))
        .route(
            "/api/auth/keys",
            get(auth::list_keys).post(auth::create_key),
        )
        .route(
            "/api/auth/keys/{id}",
            axum::routing::delete(auth::revoke_key),
        )
        .route("/api/auth/password", put(auth::change_password))
        .route("/api/events", get(events::events))
        .route("/api/version", get(vms::version))
        .route("/api/cluster/nodes", get(cluster::nodes))
        .route("/api/openapi.json", get(crate::openapi::serve_spec))
        .route("/api/vms", get(vms::list).post(vms::create))
        .route("/api/vms/from-dockerfile", post(build::from_dockerfile))
        .route("/api/projects", get(vms::list))
        .route("/api/vms/{id}", get(vms::get).delete(vms::delete))
        .route("/api/vms/{id}/exec", post(vms::exec))
        .route("/api/vms/{id}/http", post(proxy::http))
        .route("/api/vms/{id}/ports/{port}", any(proxy::elsewhere))
        .route("/api/vms/{id}/ports/{port}/", any(proxy::elsewhere))
        .route("/api/vms/{id}/ports/{port}/{*path}", any(proxy::elsewhere))
        .route("/api/vms/{id}/stop", post(vms::stop))
        .route("/api/vms/{id}/pause", post(vms::pause))
        .route("/api/vms/{id}/resume", post(vms::resume))
        .route("/api/vms/{id}/start", post(vms::start))
        .route("/api/vms/{id}/restart", post(vms::restart))
        .route("/api/vms/{id}/name", put(vms::rename))
        .route("/api/vms/{id}/metadata", put(vms::set_metadata))
        .route("/api/vms/{id}/timeout", post(vms::set_timeout))
        .route("/api/vms/{id}/extend", post(vms::extend))
        .route("/api/vms/{id}/snapshot", post(snapshots::create))
        .route("/api/vms/{id}/fork", post(templates::fork))
        .route("/api/vms/{id}/read-file", get(files::read_file))
        .route("/api/vms/{id}/write-file", post(files::write_file))
        .route("/api/vms/{id}/append-file", post(files::append_file))
        .route("/api/vms/{id}/file-info", get(files::file_info))
        .route("/api/vms/{id}/files", get(files::list))
        .route("/api/vms/{id}/files/stat", get(files::stat))
        .route("/api/vms/{id}/files/mkdir", post(files::mkdir))
        .route("/api/vms/{id}/files/remove", post(files::remove))
        .route("/api/vms/{id}/files/rename", post(files::rename))
        .route("/api/vms/{id}/files/edit", post(files::edit))
        .route("/api/vms/{id}/files/write-batch", post(files::write_batch))
        .route("/api/vms/{id}/upload", post(files::upload))
        .route("/api/vms/{id}/download", get(files::download))
        .route("/api/vms/{id}/exec-python", post(files::exec_python))
        .route("/api/vms/{id}/terminal", get(ws::terminal))
        .route("/api/vms/{id}/exec-stream", get(ws::exec_stream))
        .route("/api/vms/{id}/socket", get(socket::socket))
        .route(
            "/api/vms/{id}/commands",
            get(commands::list).post(commands::start),
        )
        .route("/api/vms/{id}/commands/{cmd_id}", get(commands::get))
        .route("/api/vms/{id}/commands/{cmd_id}/logs", get(commands::logs))
        .route("/api/vms/{id}/commands/{cmd_id}/wait", post(commands::wait))
        .route("/api/vms/{id}/commands/{cmd_id}/kill", post(commands::kill))
        .route(
            "/api/vms/{id}/commands/{cmd_id}/stdin",
            post(commands::stdin),
        )
        .route(
            "/api/templates",
            get(templates::list).post(templates::build),
        )
        .route(
            "/api/pools",
            get(templates::list_pools).put(templates::set_pool),
        )
        .route(
            "/api/templates/{id}",
            get(templates::get).delete(templates::delete),
        )
        .route("/api/snapshots", get(snapshots::list))
        .route(
            "/api/snapshots/{id}",
            get(snapshots::get).delete(snapshots::delete),
        )
        .route("/api/snapshots/{id}/restore", post(snapshots::restore))
        .route("/api/snapshots/{id}/name", put(snapshots::rename))
        .route("/api/snapshots/{id}/metadata", put(snapshots::set_metadata))
        .route("/api/images", get(images::list))
        .route("/api/images/pull", post(images::pull))
        .route("/api/images/build", post(build::build_image))
        .route("/api/images/import", post(images::import))
        .route(
            "/api/images/{*reference}",
            get(images::inspect).delete(images::delete),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::observe::metrics))
        .route("/api/vms/{id}/stats", get(health::stats))
        .route_layer(axum::middleware::from_fn(crate::observe::mark_route))
        .merge(crate::docs::router())
        .merge(crate::dashboard::router())
        .fallback(vms::not_found)
        .method_not_allowed_fallback(vms::method_not_allowed)
}
