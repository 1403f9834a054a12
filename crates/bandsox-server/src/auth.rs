//! Authentication and request guards.
//!
//! - With auth not initialised the server only listens on loopback, and [`guard`] still
//!   refuses requests whose `Host` is not a loopback name (DNS rebinding).
//! - With auth initialised every `/api` route except login/logout/check needs an API key
//!   (`Authorization: Bearer bsx_...`) or a session (`bandsox_session` cookie, or its token
//!   as a bearer). WebSocket handshakes may carry the token in a `bandsox.auth.<base64url>`
//!   subprotocol (or, for old clients, `?token=`), and only they may.
//! - In both modes, writes and WebSocket upgrades must pass [`crate::origin`]'s check.
//! - Login is rate limited: 10 failed attempts a minute per client address (per /64 for
//!   IPv6).
//!
//! The guard leaves the request's [`Credential`] in its extensions; long-lived sockets keep
//! it and check it again before each operation, so a revoked key or ended session stops
//! working on sockets that were opened with it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bandsox_core::Manager;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::routes::AppState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "bandsox_session";
/// Prefix of the subprotocol that carries a token in a WebSocket handshake.
pub const AUTH_PROTOCOL_PREFIX: &str = "bandsox.auth.";
const LOGIN_ATTEMPTS: usize = 10;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Failed-login bookkeeping per client network, pruned as it goes.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// The unit a limit applies to: the address for IPv4, its /64 for IPv6 (one host usually
/// holds a whole /64).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl LoginLimiter {
    /// The table, without failures older than the window.
    fn recent(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
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
        map
    }

    /// False when the client's network failed too often lately (checked before a login).
    fn allow(&self, ip: IpAddr) -> bool {
        let key = limit_key(ip);
        self.recent().get(&key).map_or(0, VecDeque::len) < LOGIN_ATTEMPTS
    }

    /// Records a failed login.
    fn failed(&self, ip: IpAddr) {
        let key = limit_key(ip);
        self.recent()
            .entry(key)
            .or_default()
            .push_back(Instant::now());
    }
}

/// What a request authenticated with.
#[derive(Clone, Debug)]
pub enum Credential {
    /// Authentication is not initialised.
    Open,
    /// A route anyone may call (login, logout, check, the spec) while auth is on.
    Public,
    /// An API key or a session token (bearer, cookie or WebSocket subprotocol).
    Token(String),
    /// Another node of the cluster, with the cluster secret (it authenticated the caller).
    Node,
}

impl Credential {
    /// True while the credential still grants access (the key is not revoked, the session
    /// has not ended, or auth is still off).
    pub fn still_valid(&self, manager: &Manager) -> bool {
        let store = manager.store();
        match self {
            Credential::Open => store.auth_enabled().is_ok_and(|on| !on),
            Credential::Public => false,
            Credential::Token(t) => store.authenticate(t).is_ok_and(|p| p.is_some()),
            Credential::Node => true,
        }
    }
}

fn missing_credentials() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this server requires an API key and none was sent",
    );
    e.hint = Some("set BANDSOX_API_KEY (or save a key with `bandsox auth init` on the server host); send it as `Authorization: Bearer <key>`");
    e
}

fn invalid_credentials() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the API key or session is not valid (mistyped, revoked or expired)",
    );
    e.hint =
        Some("check BANDSOX_API_KEY; an administrator can list keys with `bandsox auth list-keys`");
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

/// True for paths whose handlers answer WebSocket handshakes: the three VM sockets and, on
/// the proxy listener, the port proxy.
fn is_websocket_route(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/vms/") else {
        return false;
    };
    let mut parts = rest.splitn(3, '/');
    let (_id, op) = (parts.next(), parts.next());
    matches!(op, Some("terminal" | "exec-stream" | "socket"))
        || (op == Some("ports") && parts.next().is_some())
}

/// For WebSocket handshakes to WebSocket routes only (browsers cannot set headers there):
/// the token from a `bandsox.auth.<base64url token>` subprotocol, or from `?token=` (for old
/// clients; URLs are never logged).
fn websocket_token(req: &Request) -> Option<String> {
    if !crate::origin::is_websocket_upgrade(req) || !is_websocket_route(req.uri().path()) {
        return None;
    }
    let from_protocol = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix(AUTH_PROTOCOL_PREFIX)
                .map(str::to_owned)
        })
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

/// The outcome of [`check`] for one request, computed once by whichever middleware needs it
/// first (the reference resolver runs before the guard) and taken by the guard: credentials
/// are looked up once per request.
#[derive(Clone)]
pub(crate) struct Checked(ApiResult<Credential>);

/// [`check`] for `req`, stored in its extensions for the guard.
pub(crate) fn check_once(s: &AppState, req: &mut Request) -> bool {
    if let Some(Checked(r)) = req.extensions().get::<Checked>() {
        return r.is_ok();
    }
    let r = check(s, req);
    let ok = r.is_ok();
    req.extensions_mut().insert(Checked(r));
    ok
}

/// Middleware on every route: authentication, then the origin policy. The request goes on
/// with its [`Credential`] in its extensions.
pub async fn guard(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let checked = match req.extensions_mut().remove::<Checked>() {
        Some(Checked(r)) => r,
        None => check(&s, &req),
    };
    match checked {
        Err(e)
            if crate::dashboard::is_page(req.uri().path())
                && e.status == StatusCode::UNAUTHORIZED =>
        {
            crate::dashboard::to_login(&req)
        }
        Ok(cred) => {
            req.extensions_mut().insert(cred);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Middleware of the proxy listener: authentication only. Guest pages on it have their own
/// origin and talk to their own backend, so the API's origin policy does not apply.
pub async fn proxy_guard(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    match authenticate(&s, &req) {
        Ok(cred) => {
            req.extensions_mut().insert(cred);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn check(s: &AppState, req: &Request) -> ApiResult<Credential> {
    let cred = authenticate(s, req)?;
    // The forwarding node checked the browser's origin against its own.
    if matches!(cred, Credential::Node) {
        return Ok(cred);
    }
    crate::origin::check(req, s.public_origin.as_deref())?;
    Ok(cred)
}

fn authenticate(s: &AppState, req: &Request) -> ApiResult<Credential> {
    let headers = req.headers();
    if let Some(node) = &s.cluster {
        match node.classify(headers) {
            crate::cluster::NodeRequest::Node => return Ok(Credential::Node),
            crate::cluster::NodeRequest::BadSecret => return Err(invalid_credentials()),
            crate::cluster::NodeRequest::Client => {}
        }
    }
    let store = s.manager.store();
    if !store.auth_enabled()? {
        if s.insecure_no_auth {
            return Ok(Credential::Open);
        }
        // Open server: loopback only, and only under a loopback name.
        return match host_name(headers) {
            Some(h) if is_loopback_name(&h) => Ok(Credential::Open),
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
        "/api/auth/login"
            | "/api/auth/logout"
            | "/api/auth/check"
            | "/api/openapi.json"
            | "/healthz"
            | "/readyz"
    ) || crate::docs::is_docs_path(path)
        || crate::dashboard::is_public(path)
    {
        return Ok(Credential::Public);
    }
    let token = websocket_token(req)
        .or_else(|| bearer(headers).map(str::to_owned))
        .or_else(|| cookie(headers, SESSION_COOKIE).map(str::to_owned));
    let Some(token) = token else {
        return Err(missing_credentials());
    };
    s.observer.credential_checked();
    match store.authenticate(&token)? {
        Some(_) => Ok(Credential::Token(token)),
        None => Err(invalid_credentials()),
    }
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
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins from this address; try again in a minute",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        return Ok(resp);
    }
    if !store.verify_password(&req.password)? {
        s.login_limiter.failed(peer.ip());
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong password",
        ));
    }
    let token = store.create_session()?;
    let secure = s.secure_cookies;
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
        s.credentials_changed();
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

/// `PUT /api/auth/password`: changes the admin password (argon2id). Every session ends (log in
/// again with the new password; API keys stay valid) and open sockets check their credential
/// again.
#[utoipa::path(
    put,
    path = "/api/auth/password",
    tag = "auth",
    summary = "Change the admin password (needs the current one; every session ends)",
    operation_id = "auth_change_password",
    request_body = bandsox_api::ChangePasswordRequest,
    responses((status = 200, description = "success", body = serde_json::Value))
)]
pub async fn change_password(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<bandsox_api::ChangePasswordRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
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
            "too many failed password checks from this address; try again in a minute",
        ));
    }
    if !store.verify_password(&req.current_password)? {
        s.login_limiter.failed(peer.ip());
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the current password is wrong",
        ));
    }
    store.set_password(&req.new_password)?;
    s.credentials_changed();
    Ok(Json(serde_json::json!({ "status": "ok" })))
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
    s.credentials_changed();
    Ok(Json(serde_json::json!({ "status": "revoked" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_failures_per_network() {
        let l = LoginLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..10 {
            assert!(l.allow(a));
            l.failed(a);
        }
        assert!(!l.allow(a));
        assert!(l.allow(b));
        // One /64 is one client.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..10 {
            l.failed(v6a);
        }
        assert!(!l.allow(v6b));
        assert!(l.allow(v6c));
    }

    #[test]
    fn successes_are_not_counted() {
        let l = LoginLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..50 {
            assert!(l.allow(a));
        }
    }

    #[test]
    fn host_checks() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(host_name(&h).as_deref(), Some("127.0.0.1"));
        h.insert(header::HOST, "[::1]:8000".parse().unwrap());
        assert!(is_loopback_name(&host_name(&h).unwrap()));
        h.insert(header::HOST, "rebind.example:8000".parse().unwrap());
        assert!(!is_loopback_name(&host_name(&h).unwrap()));
    }

    fn ws_request(path: &str, protocol: Option<&str>) -> Request {
        let mut b = Request::builder()
            .uri(path)
            .header("host", "127.0.0.1")
            .header("upgrade", "websocket")
            .header("connection", "upgrade");
        if let Some(p) = protocol {
            b = b.header("sec-websocket-protocol", p);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn tokens_in_handshakes_only_reach_websocket_routes() {
        use base64::Engine;
        let proto = format!(
            "bandsox.socket, {AUTH_PROTOCOL_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("bsx_k")
        );
        assert_eq!(
            websocket_token(&ws_request("/api/vms/a/socket", Some(&proto))).as_deref(),
            Some("bsx_k")
        );
        assert_eq!(
            websocket_token(&ws_request("/api/vms/a/terminal?token=t", None)).as_deref(),
            Some("t")
        );
        assert_eq!(
            websocket_token(&ws_request("/api/vms/a/ports/80/x?token=t", None)).as_deref(),
            Some("t")
        );
        // A REST route with an Upgrade header does not take `?token=`.
        assert_eq!(websocket_token(&ws_request("/api/vms?token=t", None)), None);
        assert_eq!(
            websocket_token(&ws_request("/api/auth/keys?token=t", None)),
            None
        );
        assert_eq!(
            websocket_token(&ws_request("/api/vms/a/exec?token=t", None)),
            None
        );
    }
}
