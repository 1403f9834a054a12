//! The web dashboard: a single-page app built from `web/` (Vite) and embedded into the binary
//! at compile time by `build.rs`, so it works offline. Every page path answers the same
//! `index.html`, whose script picks the page from the path; assets live under `/assets/`
//! with content-hashed names (cached for a year).
//!
//! Pages and assets get their own policy: scripts and styles from our origin only (no
//! inline script), no framing. With auth on, a page request without a valid session answers
//! `303 → /login?next=<path>` (see [`crate::auth::guard`]); `/login` and the assets are public.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// The policy of the dashboard's pages and assets.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The terminal page's policy: xterm.js styles its rows with `<style>` elements it creates
/// (scripts stay `'self'` only).
pub const TERMINAL_CSP: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; \
     font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's page paths (all answer `index.html`).
pub const PAGES: &[&str] = &[
    "/",
    "/login",
    "/vm_details",
    "/terminal",
    "/markdown_viewer",
    "/keys",
];

const PLACEHOLDER: &str = "<!doctype html><meta charset=utf-8><title>bandsox</title>\
<h1>bandsox dashboard not built</h1><p>This binary was compiled without the dashboard \
(<code>web/dist</code> was missing). Run <code>npm ci &amp;&amp; npm run build</code> in \
<code>web/</code> (or <code>scripts/setup</code>), then rebuild. The API works as usual: \
see <a href=\"/api/docs\">/api/docs</a>.</p>";

/// True for page paths.
pub fn is_page(path: &str) -> bool {
    PAGES.contains(&path)
}

/// True for what anyone may load with auth on: the login page and the assets.
pub fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/") || path == "/favicon.svg"
}

/// Whether this binary carries the built dashboard (false: a placeholder page).
pub fn built() -> bool {
    embedded::BUILT
}

fn file(path: &str) -> Option<&'static [u8]> {
    embedded::FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, b)| *b)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn answer(status: StatusCode, ctype: &'static str, cache: &'static str, body: Vec<u8>) -> Response {
    answer_with(status, ctype, cache, body, PAGE_CSP)
}

fn answer_with(
    status: StatusCode,
    ctype: &'static str,
    cache: &'static str,
    body: Vec<u8>,
    csp: &'static str,
) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn page(req: Request) -> Response {
    let csp = if req.uri().path() == "/terminal" {
        TERMINAL_CSP
    } else {
        PAGE_CSP
    };
    let body = file("index.html").unwrap_or(PLACEHOLDER.as_bytes());
    answer_with(
        StatusCode::OK,
        "text/html; charset=utf-8",
        "no-cache",
        body.to_vec(),
        csp,
    )
}

async fn asset(req: Request) -> Response {
    let path = req.uri().path().trim_start_matches('/');
    match file(path) {
        Some(b) => answer(
            StatusCode::OK,
            content_type(path),
            "public, max-age=31536000, immutable",
            b.to_vec(),
        ),
        None => {
            crate::error::ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such asset")
                .into_response()
        }
    }
}

/// The dashboard's routes.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new();
    for p in PAGES {
        r = r.route(p, get(page));
    }
    r.route("/assets/{*file}", get(asset))
        .route("/favicon.svg", get(asset))
}

/// `303 → /login?next=<path and query>` for a page asked without a session.
pub fn to_login(req: &Request) -> Response {
    let next = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut enc = String::with_capacity(next.len());
    for b in next.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    let loc = format!("/login?next={enc}");
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
