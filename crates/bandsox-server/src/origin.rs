//! Which browser requests may change state: the defence against cross-site request forgery and
//! cross-site WebSocket hijacking, in auth and no-auth mode alike.
//!
//! A browser marks where a request comes from; other clients (the CLI, the SDKs, curl,
//! BandSox's Python client) send no such marks and are not affected. For every write
//! (any method but GET, HEAD and OPTIONS) and every WebSocket upgrade:
//! - an `Origin` header must name this server (the authority of `Host`, or `--public-url`);
//!   `Origin: null` (sandboxed pages, such as proxied guest pages) never does;
//! - a `Sec-Fetch-Site` header must be `same-origin` or `none` (so a guest page served by the
//!   proxy listener, which is *same-site* on another port, is refused too).
//!
//! Writes must also carry a body type a cross-site HTML form cannot send where the route
//! expects none of those: JSON routes (and body-less POSTs) take `application/json` or no
//! `Content-Type`; uploads take `multipart/form-data`; image import takes an archive type.
//! `text/plain`, `application/x-www-form-urlencoded` and stray `multipart/form-data` answer
//! 415, so a form cannot trigger an operation even where a browser left `Origin` out.

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};

use crate::error::{ApiError, ApiResult};

/// The body a route accepts, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// JSON or nothing.
    Json,
    /// A multipart form (uploads, Dockerfile builds).
    Multipart,
    /// An image archive.
    Archive,
    /// JSON, or a tar build context (`POST /api/images/build`).
    JsonOrArchive,
}

/// Archive types `POST /api/images/import` takes.
const ARCHIVE_TYPES: &[&str] = &[
    "application/x-tar",
    "application/tar",
    "application/octet-stream",
    "application/gzip",
    "application/x-gzip",
    "application/zstd",
];

fn body_kind(path: &str) -> BodyKind {
    if path == "/api/images/import" {
        return BodyKind::Archive;
    }
    if path == "/api/images/build" {
        return BodyKind::JsonOrArchive;
    }
    if path == "/api/vms/from-dockerfile"
        || path
            .strip_prefix("/api/vms/")
            .is_some_and(|rest| rest.split('/').nth(1) == Some("upload"))
    {
        return BodyKind::Multipart;
    }
    BodyKind::Json
}

/// True for a WebSocket opening handshake.
pub(crate) fn is_websocket_upgrade(req: &Request) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// `host[:port]` without the default port of `scheme`, lower case.
fn normalise_authority(scheme: &str, authority: &str) -> String {
    let a = authority.to_ascii_lowercase();
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => "",
    };
    match a.strip_suffix(default) {
        Some(stripped) if !default.is_empty() => stripped.to_owned(),
        _ => a,
    }
}

/// True when `origin` (an `Origin` header value) names this server: the authority the client
/// addressed (`Host`), or the configured public origin.
pub(crate) fn is_own_origin(origin: &str, headers: &HeaderMap, public: Option<&str>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // `null` and anything malformed
    };
    if public.is_some_and(|p| p.eq_ignore_ascii_case(origin.trim_end_matches('/'))) {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host_scheme = if scheme == "https" { "https" } else { "http" };
    normalise_authority(scheme, authority) == normalise_authority(host_scheme, host)
}

fn refused(detail: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::FORBIDDEN, "cross_origin", detail);
    e.hint = Some("writes and WebSockets are only accepted from the server's own pages; other clients send no Origin header");
    e
}

/// Checks `req` against the policy of this module. `public_origin` is `--public-url`'s origin.
pub(crate) fn check(req: &Request, public_origin: Option<&str>) -> ApiResult<()> {
    let upgrade = is_websocket_upgrade(req);
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !write && !upgrade {
        return Ok(());
    }
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = origin
            .to_str()
            .is_ok_and(|o| is_own_origin(o, headers, public_origin));
        if !own {
            return Err(refused("this request comes from another origin"));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(refused("this request comes from another site"));
        }
    }
    if write {
        check_body_type(req.uri().path(), headers)?;
    }
    Ok(())
}

fn check_body_type(path: &str, headers: &HeaderMap) -> ApiResult<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_ascii_lowercase());
    let essence = ct
        .as_deref()
        .map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
    let kind = body_kind(path);
    let ok = match (kind, essence.as_deref()) {
        (BodyKind::Json, None) => true,
        (BodyKind::Json, Some(e)) => e == "application/json" || e.ends_with("+json"),
        (BodyKind::Multipart, Some(e)) => e == "multipart/form-data",
        (BodyKind::Archive, Some(e)) => ARCHIVE_TYPES.contains(&e),
        (BodyKind::JsonOrArchive, None) => true,
        (BodyKind::JsonOrArchive, Some(e)) => {
            e == "application/json" || e.ends_with("+json") || ARCHIVE_TYPES.contains(&e)
        }
        (_, None) => false,
    };
    if ok {
        return Ok(());
    }
    let (detail, hint) = match kind {
        BodyKind::Json => (
            format!(
                "this route takes a JSON body (Content-Type: application/json) or none, not `{}`",
                essence.as_deref().unwrap_or("")
            ),
            "send `Content-Type: application/json` with a JSON body, or no body and no Content-Type",
        ),
        BodyKind::Multipart => (
            "this route takes a multipart/form-data body".to_owned(),
            "send the file as a multipart form (curl -F)",
        ),
        BodyKind::Archive => (
            format!(
                "an image import takes an archive (one of {}), not `{}`",
                ARCHIVE_TYPES.join(", "),
                essence.as_deref().unwrap_or("no Content-Type")
            ),
            "send `Content-Type: application/x-tar` (curl --data-binary @image.tar -H 'Content-Type: application/x-tar')",
        ),
        BodyKind::JsonOrArchive => (
            format!(
                "a build takes JSON or a tar build context, not `{}`",
                essence.as_deref().unwrap_or("")
            ),
            "send the context with `Content-Type: application/x-tar` (tar -c . | curl --data-binary @- ...)",
        ),
    };
    let mut e = ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        detail,
    );
    e.hint = Some(hint);
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().method(method).uri(path);
        b = b.header("host", "127.0.0.1:8000");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    fn code(r: ApiResult<()>) -> Option<&'static str> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn non_browser_clients_pass() {
        assert_eq!(
            code(check(&req("POST", "/api/vms/x/stop", &[]), None)),
            None
        );
        let json = [("content-type", "application/json")];
        assert_eq!(code(check(&req("POST", "/api/vms", &json), None)), None);
    }

    #[test]
    fn foreign_origins_are_refused_for_writes_and_upgrades() {
        let evil = [("origin", "http://evil.example")];
        assert_eq!(
            code(check(&req("POST", "/api/vms/x/stop", &evil), None)),
            Some("cross_origin")
        );
        let ws = [
            ("origin", "http://evil.example"),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ];
        assert_eq!(
            code(check(&req("GET", "/api/vms/x/terminal", &ws), None)),
            Some("cross_origin")
        );
        // Reads are not writes.
        assert_eq!(code(check(&req("GET", "/api/vms", &evil), None)), None);
        let null = [("origin", "null")];
        assert_eq!(
            code(check(&req("DELETE", "/api/vms/x", &null), None)),
            Some("cross_origin")
        );
        // The proxy listener is another port of the same host: same site, other origin.
        let proxy = [("origin", "http://127.0.0.1:8001")];
        assert_eq!(
            code(check(&req("POST", "/api/vms/x/exec", &proxy), None)),
            Some("cross_origin")
        );
        let site = [("sec-fetch-site", "same-site")];
        assert_eq!(
            code(check(&req("POST", "/api/vms/x/exec", &site), None)),
            Some("cross_origin")
        );
    }

    #[test]
    fn own_origin_passes() {
        let own = [
            ("origin", "http://127.0.0.1:8000"),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
        ];
        assert_eq!(code(check(&req("POST", "/api/vms", &own), None)), None);
        let public = [("origin", "https://box.example.com")];
        assert_eq!(
            code(check(
                &req("POST", "/api/vms/x/stop", &public),
                Some("https://box.example.com")
            )),
            None
        );
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "localhost".parse().unwrap());
        assert!(is_own_origin("http://localhost:80", &h, None));
        assert!(is_own_origin("http://LOCALHOST", &h, None));
        assert!(!is_own_origin("http://localhost:8000", &h, None));
        assert!(!is_own_origin("https://localhost:80", &h, None));
    }

    #[test]
    fn form_body_types_are_refused() {
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let h = [("content-type", ct)];
            assert_eq!(
                code(check(&req("POST", "/api/vms/x/pause", &h), None)),
                Some("unsupported_media_type"),
                "{ct}"
            );
        }
        let multipart = [("content-type", "multipart/form-data; boundary=x")];
        assert_eq!(
            code(check(&req("POST", "/api/vms/x/upload", &multipart), None)),
            None
        );
        assert_eq!(
            code(check(
                &req("POST", "/api/vms/from-dockerfile", &multipart),
                None
            )),
            None
        );
        let text = [("content-type", "text/plain")];
        assert_eq!(
            code(check(&req("POST", "/api/images/import", &text), None)),
            Some("unsupported_media_type")
        );
        assert_eq!(
            code(check(&req("POST", "/api/images/import", &[]), None)),
            Some("unsupported_media_type")
        );
        let tar = [("content-type", "application/x-tar")];
        assert_eq!(
            code(check(&req("POST", "/api/images/import", &tar), None)),
            None
        );
    }
}
