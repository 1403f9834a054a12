//! Route table. Handlers parse and validate, call the core, and shape the answer.

pub mod images;
pub mod snapshots;
pub mod vms;

use std::sync::Arc;

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
}

impl AppState {
    pub fn new(manager: Arc<Manager>) -> Self {
        Self {
            manager,
            login_limiter: Arc::default(),
            insecure_no_auth: false,
        }
    }
}

pub fn router(state: AppState) -> Router {
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
        .route("/api/vms", get(vms::list).post(vms::create))
        .route("/api/projects", get(vms::list))
        .route("/api/vms/{id}", get(vms::get).delete(vms::delete))
        .route("/api/vms/{id}/exec", post(vms::exec))
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
        .route(
            "/api/images/import",
            post(images::import).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/images/{*reference}",
            get(images::inspect).delete(images::delete),
        )
        .fallback(vms::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}
