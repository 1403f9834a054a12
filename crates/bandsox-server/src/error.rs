//! Every error leaves the server as RFC 9457 `application/problem+json`.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bandsox_api::{Problem, PROBLEM_CONTENT_TYPE};
use bandsox_core::CoreError;

/// An error answer.
#[derive(Debug)]
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
            "conflict" | "image_in_use" => StatusCode::CONFLICT,
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
            "agent_unavailable" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "internal error");
        }
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
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            JsonRejection::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, "invalid_body", r.body_text())
    }
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
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)], body).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
