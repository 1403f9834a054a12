//! Headers every API answer carries unless its handler set its own: the answer is data, never a
//! page to render or embed.
//!
//! - `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'; sandbox` — a JSON
//!   answer or a downloaded guest file opened in a tab runs nothing and can frame nothing.
//! - `X-Content-Type-Options: nosniff` — a browser never guesses HTML from guest bytes.
//! - `Cross-Origin-Resource-Policy: same-origin` — other origins (the guest proxy listener
//!   included) cannot embed API answers as images, scripts or media.
//! - `Referrer-Policy: no-referrer`.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The policy of API answers (dashboard pages set their own).
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// Middleware: adds the defaults above where the handler set none.
pub async fn api_defaults(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let defaults = [
        (header::CONTENT_SECURITY_POLICY, API_CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in defaults {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    resp
}
