//! Every error leaves the server as RFC 9457 `application/problem+json`.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bandsox_api::{Problem, PROBLEM_CONTENT_TYPE};
use bandsox_core::CoreError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub hint: Option<&'static str>,
}

impl ApiError {
    /// 422 `invalid_input`: the request is well-formed but a value is not acceptable.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
    }

    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            hint: None,
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let status = match e.code() {
            "vm_not_found" | "image_not_found" | "not_found" | "guest_not_found"
            | "command_not_found" => StatusCode::NOT_FOUND,
            "permission_denied" => StatusCode::FORBIDDEN,
            "already_exists" | "not_empty" | "command_exited" => StatusCode::CONFLICT,
            "is_a_directory" | "not_a_directory" | "edit_no_match" | "edit_multiple_matches" => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            "invalid_input" | "guest_error" | "build_failed" => StatusCode::UNPROCESSABLE_ENTITY,
            "conflict" | "image_in_use" | "image_exists" | "ambiguous_reference" => {
                StatusCode::CONFLICT
            }
            "image_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "disk_too_small"
            | "digest_mismatch"
            | "unsupported_media_type"
            | "unsupported_platform"
            | "invalid_image" => StatusCode::UNPROCESSABLE_ENTITY,
            "registry_unreachable" | "registry_error" => StatusCode::BAD_GATEWAY,
            "registry_auth_failed" => StatusCode::FORBIDDEN,
            "not_initialised" => StatusCode::SERVICE_UNAVAILABLE,
            "limit_reached" | "too_many_operations" => StatusCode::TOO_MANY_REQUESTS,
            "boot_timeout" | "exec_timeout" => StatusCode::GATEWAY_TIMEOUT,
            "boot_failed" => StatusCode::SERVICE_UNAVAILABLE,
            "agent_unavailable" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "internal error");
        }
        Self {
            status,
            code: e.code(),
            // No host paths (the storage root, sockets, disks) reach a client.
            detail: bandsox_core::error::scrub(&e.to_string()),
            hint: e.hint(),
        }
    }
}

impl From<bandsox_cluster::ClusterError> for ApiError {
    fn from(e: bandsox_cluster::ClusterError) -> Self {
        let status = match e.code() {
            "cluster_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "node_name_taken" => StatusCode::CONFLICT,
            "invalid_input" => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_GATEWAY,
        };
        tracing::warn!(error = %e, "cluster error");
        Self {
            status,
            code: e.code(),
            detail: e.to_string(),
            hint: e.hint(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if is_body_timeout(&r) {
            return Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body stalled; the server stopped waiting for it",
            );
        }
        let (status, code) = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            StatusCode::BAD_REQUEST => (StatusCode::BAD_REQUEST, "invalid_body"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        };
        Self::new(status, code, r.body_text())
    }
}

/// True when a body failed because it stalled (see `listen`'s body idle timeout).
fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The stable code of an error status that carries no code of ours.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "route_not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "body_timeout",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_input",
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// Longest plain-text error body carried over into a problem's `detail`.
const PLAIN_DETAIL_BYTES: usize = 1024;

/// Middleware: an error answer that is not problem+json yet (axum's own rejections of a
/// query string, a multipart body, a WebSocket handshake, a path…) becomes one, with its
/// status and its text as the detail.
pub async fn problems_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_CONTENT_TYPE.as_bytes()));
    if is_problem {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, PLAIN_DETAIL_BYTES * 4).await {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(PLAIN_DETAIL_BYTES)]).into_owned(),
        Err(_) => String::new(),
    };
    let detail = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.trim().to_owned()
    };
    let mut out = ApiError::new(status, code_of(status), detail).into_response();
    // Keep what the client needs to act on (Allow, Retry-After, WWW-Authenticate, ...).
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out
}

impl ApiError {
    /// The RFC 9457 body of this error.
    pub fn problem(self) -> Problem {
        Problem {
            type_uri: format!("urn:bandsox:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            hint: self.hint.map(str::to_owned),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let code = crate::observe::ErrorCode(self.code);
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp =
            (status, [(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)], body).into_response();
        resp.extensions_mut().insert(code);
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
