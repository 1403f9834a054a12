//! Route table. Handlers parse and validate, call the core, and shape the answer.

pub mod images;
pub mod vms;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use bandsox_core::Manager;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/version", get(vms::version))
        .route("/api/vms", get(vms::list).post(vms::create))
        .route("/api/projects", get(vms::list))
        .route("/api/vms/{id}", get(vms::get).delete(vms::delete))
        .route("/api/vms/{id}/exec", post(vms::exec))
        .route("/api/vms/{id}/stop", post(vms::stop))
        .route("/api/vms/{id}/pause", post(vms::pause))
        .route("/api/vms/{id}/resume", post(vms::resume))
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
        .with_state(state)
}
