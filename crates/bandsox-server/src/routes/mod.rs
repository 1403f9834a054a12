//! Route table. Handlers parse and validate, call the core, and shape the answer.

pub mod build;
pub mod commands;
pub mod files;
pub mod images;
pub mod net;
pub mod snapshots;
pub mod socket;
pub mod vms;
pub mod ws;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
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
}

impl AppState {
    pub fn new(manager: Arc<Manager>) -> Self {
        Self {
            manager,
            login_limiter: Arc::default(),
            insecure_no_auth: false,
            vm_ops: Arc::default(),
        }
    }
}

/// Body limit of routes that carry file content as JSON: 256 MiB decoded, base64-encoded.
fn big_json() -> DefaultBodyLimit {
    DefaultBodyLimit::max(350 << 20)
}

/// The whole API: authentication first, then the per-VM operation limit, then the routes.
pub fn router(state: AppState) -> Router {
    limited(&state)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}

/// The API for requests that were already authenticated (operations on a persistent socket):
/// the same routes and limits, without the guard.
pub(crate) fn routes_for(state: AppState) -> Router {
    limited(&state).with_state(state)
}

fn limited(state: &AppState) -> Router<AppState> {
    routes().layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::limits::per_vm,
    ))
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
        .route("/api/version", get(vms::version))
        .route("/api/openapi.json", get(crate::openapi::serve_spec))
        .route("/api/vms", get(vms::list).post(vms::create))
        .route("/api/vms/from-dockerfile", post(build::from_dockerfile))
        .route("/api/projects", get(vms::list))
        .route("/api/vms/{id}", get(vms::get).delete(vms::delete))
        .route("/api/vms/{id}/exec", post(vms::exec))
        .route("/api/vms/{id}/http", post(net::http))
        .route(
            "/api/vms/{id}/ports/{port}",
            axum::routing::any(net::proxy_root),
        )
        .route(
            "/api/vms/{id}/ports/{port}/",
            axum::routing::any(net::proxy_root_slash),
        )
        .route(
            "/api/vms/{id}/ports/{port}/{*path}",
            axum::routing::any(net::proxy),
        )
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
        .route("/api/vms/{id}/read-file", get(files::read_file))
        .route(
            "/api/vms/{id}/write-file",
            post(files::write_file).layer(big_json()),
        )
        .route(
            "/api/vms/{id}/append-file",
            post(files::append_file).layer(big_json()),
        )
        .route("/api/vms/{id}/file-info", get(files::file_info))
        .route("/api/vms/{id}/files", get(files::list))
        .route("/api/vms/{id}/files/stat", get(files::stat))
        .route("/api/vms/{id}/files/mkdir", post(files::mkdir))
        .route("/api/vms/{id}/files/remove", post(files::remove))
        .route("/api/vms/{id}/files/rename", post(files::rename))
        .route("/api/vms/{id}/files/edit", post(files::edit))
        .route(
            "/api/vms/{id}/files/write-batch",
            post(files::write_batch).layer(big_json()),
        )
        .route(
            "/api/vms/{id}/upload",
            post(files::upload).layer(DefaultBodyLimit::disable()),
        )
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
        .route(
            "/api/images/import",
            post(images::import).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/images/{*reference}",
            get(images::inspect).delete(images::delete),
        )
        .fallback(vms::not_found)
        .method_not_allowed_fallback(vms::method_not_allowed)
}
