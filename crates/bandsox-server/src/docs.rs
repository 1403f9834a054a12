//! `GET /api/docs`: the API reference in the browser (Swagger UI, vendored into the binary, so
//! it works offline), reading `/api/openapi.json`. Like the spec it needs no credentials; its
//! "try it out" calls carry the browser's session like any page of ours.

use axum::http::{header, HeaderValue};
use axum::Router;
use utoipa_swagger_ui::{Config, SwaggerUi};

/// The docs page's policy: its own scripts only; Swagger UI sets inline styles.
const DOCS_CSP: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                        frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Path of the docs page.
pub const DOCS_PATH: &str = "/api/docs";

/// The routes of the docs page (the spec itself is served by the API's route table).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::from(SwaggerUi::new(DOCS_PATH).config(Config::from("/api/openapi.json"))).layer(
        axum::middleware::map_response(|mut resp: axum::response::Response| async move {
            resp.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOCS_CSP),
            );
            resp
        }),
    )
}

/// True for the paths of the docs page, which anyone may load.
pub fn is_docs_path(path: &str) -> bool {
    path == DOCS_PATH || path.starts_with("/api/docs/")
}
