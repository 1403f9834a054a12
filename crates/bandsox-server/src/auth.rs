//! Authentication and request guards.
//!
//! - With auth not initialised the server only listens on loopback, and [`guard`] still
//!   refuses requests whose `Host` is not a loopback name (DNS rebinding).
//! - With auth initialised every `/api` route except login/logout/check needs an API key
//!   (`Authorization: Bearer bsx_...`) or a session (`bandsox_session` cookie, or its token
//!   as a bearer). Cookie-authenticated writes must come from the server's own origin (CSRF).
//! - Login is rate limited per client address (10 attempts a minute).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::routes::AppState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "bandsox_session";
const LOGIN_ATTEMPTS: usize = 10;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Failed-login bookkeeping per client address, pruned as it goes.
#[derive(Default)]
pub struct LoginLimiter {
    attempts: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// Records an attempt; false when the address is over its limit.
    fn allow(&self, ip: IpAddr) -> bool {
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, q| {
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) > LOGIN_WINDOW)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
        let q = map.entry(ip).or_default();
        if q.len() >= LOGIN_ATTEMPTS {
            return false;
        }
        q.push_back(now);
        true
    }
}

fn unauthorized() -> ApiError {
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized");
    e.hint = Some("send `Authorization: Bearer <api key>` (see `bandsox auth create-key`)");
    e
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn host_name(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    Some(name.to_ascii_lowercase())
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// True when the `Origin` (if any) is this server (same host and port as `Host`).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true; // not a browser cross-site request
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// For WebSocket upgrades (browsers cannot set headers): the token from a
/// `bandsox.auth.<base64url token>` subprotocol, or from `?token=` (accepted for old clients;
/// URLs are never logged).
fn websocket_token(req: &Request) -> Option<String> {
    let headers = req.headers();
    let is_ws = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !is_ws {
        return None;
    }
    let from_protocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bandsox.auth.").map(str::to_owned))
        .and_then(|b64| {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64.trim_end_matches('='))
                .ok()?;
            String::from_utf8(raw).ok()
        });
    from_protocol.or_else(|| {
        req.uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token=").map(str::to_owned))
    })
}

/// Middleware on every route.
pub async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match check(&s, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check(s: &AppState, req: &Request) -> ApiResult<()> {
    let headers = req.headers();
    let enabled = s.manager.store().auth_enabled()?;
    if !enabled {
        if s.insecure_no_auth {
            return Ok(());
        }
        // Open server: loopback only, and only under a loopback name.
        return match host_name(headers) {
            Some(h) if is_loopback_name(&h) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                "without authentication the server only answers requests to localhost",
            )),
        };
    }
    let path = req.uri().path();
    if matches!(
        path,
        "/api/auth/login" | "/api/auth/logout" | "/api/auth/check" | "/api/openapi.json"
    ) {
        return Ok(());
    }
    if let Some(token) = websocket_token(req) {
        return match s.manager.store().authenticate(&token)? {
            Some(_) => Ok(()),
            None => Err(unauthorized()),
        };
    }
    if let Some(token) = bearer(headers) {
        return match s.manager.store().authenticate(token)? {
            Some(_) => Ok(()),
            None => Err(unauthorized()),
        };
    }
    if let Some(token) = cookie(headers, SESSION_COOKIE) {
        if !s.manager.store().check_session(token)? {
            return Err(unauthorized());
        }
        let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if write && !same_origin(headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "cookie-authenticated writes must come from the server's own origin",
            ));
        }
        return Ok(());
    }
    Err(unauthorized())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    status: &'static str,
    token: String,
}

/// `POST /api/auth/login`.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    summary = "Log in with the password: sets a session cookie",
    operation_id = "auth_login",
    request_body = LoginRequest,
    responses((status = 200, description = "success", body = LoginResponse))
)]
pub async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let store = s.manager.store();
    if !store.auth_enabled()? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "auth_disabled",
            "authentication is not initialised",
        ));
    }
    if !s.login_limiter.allow(peer.ip()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many login attempts; try again in a minute",
        ));
    }
    if !store.verify_password(&req.password)? {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong password",
        ));
    }
    let token = store.create_session()?;
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"https");
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        bandsox_core::auth::SESSION_TTL_S as u64,
        if secure { "; Secure" } else { "" }
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(LoginResponse {
            status: "ok",
            token,
        }),
    )
        .into_response())
}

/// `POST /api/auth/logout`: ends the session server-side.
#[utoipa::path(
    post,
    path = "/api/auth/logout",
    tag = "auth",
    summary = "End the session of the cookie",
    operation_id = "auth_logout",
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn logout(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let token = bearer(&headers).or_else(|| cookie(&headers, SESSION_COOKIE));
    if let Some(t) = token {
        s.manager.store().end_session(t)?;
    }
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok((
        [(header::SET_COOKIE, clear)],
        Json(serde_json::json!({"status": "ok"})),
    )
        .into_response())
}

/// `GET /api/auth/check`.
#[utoipa::path(
    get,
    path = "/api/auth/check",
    tag = "auth",
    summary = "Whether the request is authenticated",
    operation_id = "auth_check_route",
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn check_route(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let store = s.manager.store();
    let authenticated = if !store.auth_enabled()? {
        true
    } else {
        match bearer(&headers).or_else(|| cookie(&headers, SESSION_COOKIE)) {
            Some(t) => store.authenticate(t)?.is_some(),
            None => false,
        }
    };
    Ok(Json(serde_json::json!({ "authenticated": authenticated })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateKeyRequest {
    name: String,
}

/// `GET /api/auth/keys`.
#[utoipa::path(
    get,
    path = "/api/auth/keys",
    tag = "auth",
    summary = "List API keys",
    operation_id = "auth_list_keys",
    responses((status = 200, description = "success", body = Vec<bandsox_core::auth::ApiKeyInfo>))
)]
pub async fn list_keys(
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<bandsox_core::auth::ApiKeyInfo>>> {
    Ok(Json(s.manager.store().list_api_keys()?))
}

/// `POST /api/auth/keys`: the key is in this answer only.
#[utoipa::path(
    post,
    path = "/api/auth/keys",
    tag = "auth",
    summary = "Create an API key (its secret is shown once)",
    operation_id = "auth_create_key",
    request_body = CreateKeyRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn create_key(
    State(s): State<AppState>,
    body: Result<Json<CreateKeyRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    let k = s.manager.store().create_api_key(&req.name)?;
    Ok(Json(
        serde_json::json!({ "key_id": k.info.id, "key": k.key, "name": k.info.name }),
    ))
}

/// `DELETE /api/auth/keys/{id}`.
#[utoipa::path(
    delete,
    path = "/api/auth/keys/{id}",
    tag = "auth",
    summary = "Revoke an API key",
    operation_id = "auth_revoke_key",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn revoke_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    s.manager.store().revoke_api_key(&id)?;
    Ok(Json(serde_json::json!({ "status": "revoked" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_ten_a_minute_per_address() {
        let l = LoginLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..10 {
            assert!(l.allow(a));
        }
        assert!(!l.allow(a));
        assert!(l.allow(b));
    }

    #[test]
    fn origin_and_host_checks() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        assert_eq!(host_name(&h).as_deref(), Some("127.0.0.1"));
        h.insert(header::HOST, "[::1]:8000".parse().unwrap());
        assert!(is_loopback_name(&host_name(&h).unwrap()));
        h.insert(header::HOST, "rebind.example:8000".parse().unwrap());
        assert!(!is_loopback_name(&host_name(&h).unwrap()));
    }
}
