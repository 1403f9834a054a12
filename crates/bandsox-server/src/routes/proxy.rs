//! HTTP into a VM: `POST /api/vms/{id}/http` (one buffered request, BandSox's shape) and the
//! reverse proxy `/api/vms/{id}/ports/{port}/{*path}` (any method, streamed both ways,
//! WebSocket and other upgrades passed through).
//!
//! Both connect to the VM's host-side address (its namespace DNATs it to the guest), never to
//! anything else. The caller's credentials (bearer token, session cookie, `token=` query,
//! `bandsox.auth.*` subprotocol) are stripped before the request reaches the guest: guest code
//! is untrusted.
//!
//! Guest pages are hostile, so the reverse proxy never answers on the API's (and the
//! dashboard's) origin: it has a listener of its own (`--proxy-port`), and on the API
//! listener its paths answer 307 to that listener. Every proxied answer carries
//! `Content-Security-Policy: sandbox` (the page gets an opaque origin: it can run scripts but
//! cannot read cookies, storage or any other answer of ours), and the guest's `Set-Cookie`,
//! `Clear-Site-Data`, HSTS and `Alt-Svc` headers are dropped (they would act on the host name
//! the API shares).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bandsox_api::{HttpProxyRequest, HttpProxyResponse};
use base64::Engine;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::AppState;
use crate::error::{ApiError, ApiResult};

/// How long the proxy waits for the guest's response headers unless
/// `X-Bandsox-Timeout-Ms` says otherwise.
const PROXY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait a caller may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest body `/http` buffers (the proxy streams without a limit).
const HTTP_BODY_CAP: usize = 64 << 20;
/// Request header naming the proxy's wait, stripped before forwarding.
const TIMEOUT_HEADER: &str = "x-bandsox-timeout-ms";

fn timeout_error(after: Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "guest_timeout",
        format!("the guest did not answer within {} ms", after.as_millis()),
    )
}

fn unreachable(addr: SocketAddrV4, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "guest_unreachable",
        format!("cannot reach port {} in the VM: {e}", addr.port()),
    )
}

fn parse_port(raw: &str) -> ApiResult<u16> {
    match raw.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(ApiError::invalid(format!(
            "port must be 1 to 65535, got `{raw}`"
        ))),
    }
}

/// A path for the guest: must start with `/`, no `.`/`..` segment (also percent-encoded or
/// with backslashes), no control characters.
fn check_guest_path(path: &str) -> ApiResult<()> {
    let bad = |why: &str| {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_path",
            format!("invalid path for the guest: {why}"),
        ))
    };
    if !path.starts_with('/') {
        return bad("it must start with `/`");
    }
    // Decoded twice, for the check only (the raw path is forwarded).
    let decoded = crate::util::percent_decode(&crate::util::percent_decode_lossy(path));
    if decoded.iter().any(|c| c.is_ascii_control()) {
        return bad("control characters");
    }
    if decoded
        .split(|c| *c == b'/' || *c == b'\\')
        .any(|seg| seg == b"." || seg == b"..")
    {
        return bad("`.` and `..` segments are not allowed");
    }
    Ok(())
}

/// Opens an HTTP/1.1 connection to the guest (upgrades enabled).
async fn connect(
    addr: SocketAddrV4,
    wait: Duration,
) -> ApiResult<hyper::client::conn::http1::SendRequest<Body>> {
    let tcp = match tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => return Err(timeout_error(wait)),
        Ok(Err(e)) => return Err(unreachable(addr, e)),
        Ok(Ok(t)) => t,
    };
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(addr, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "guest HTTP connection ended");
        }
    });
    Ok(sender)
}

/// Sends `req` and waits (bounded) for the response headers.
async fn send(
    addr: SocketAddrV4,
    req: axum::http::Request<Body>,
    wait: Duration,
) -> ApiResult<hyper::Response<hyper::body::Incoming>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut sender = connect(addr, wait).await?;
    match tokio::time::timeout_at(deadline, sender.send_request(req)).await {
        Err(_) => Err(timeout_error(wait)),
        Ok(Err(e)) => Err(unreachable(addr, e)),
        Ok(Ok(r)) => Ok(r),
    }
}

/// The policy on every proxied answer: scripts may run, but in an opaque origin.
pub const GUEST_CSP: &str =
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";

/// Answer headers of the guest that would act beyond its page (on the host name the API
/// shares), dropped.
const GUEST_HEADERS_DROPPED: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "clear-site-data",
    "strict-transport-security",
    "alt-svc",
    "public-key-pins",
    "public-key-pins-report-only",
];

/// The guest's answer headers as the client gets them: hop-by-hop headers (unless an upgrade
/// keeps them) and [`GUEST_HEADERS_DROPPED`] removed, [`GUEST_CSP`] added.
fn answer_headers(src: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in src {
        let n = name.as_str();
        let hop = HOP_BY_HOP.contains(&n) && !(upgrade && (n == "connection" || n == "upgrade"));
        if hop || GUEST_HEADERS_DROPPED.contains(&n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(GUEST_CSP),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers to forward: without hop-by-hop headers (kept for upgrades), our credentials and
/// our own control headers.
fn forward_headers(src: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in src {
        let n = name.as_str();
        let hop = HOP_BY_HOP.contains(&n) && !(upgrade && (n == "connection" || n == "upgrade"));
        if hop || n == "authorization" || n == "host" || n == TIMEOUT_HEADER {
            continue;
        }
        if n == "cookie" {
            let kept: Vec<&str> = value
                .to_str()
                .unwrap_or("")
                .split(';')
                .map(str::trim)
                .filter(|kv| !kv.is_empty() && !kv.starts_with("bandsox_session="))
                .collect();
            if !kept.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                    out.append(header::COOKIE, v);
                }
            }
            continue;
        }
        if n == "sec-websocket-protocol" {
            let kept: Vec<&str> = value
                .to_str()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty() && !p.starts_with("bandsox.auth."))
                .collect();
            if !kept.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
                    out.append(name.clone(), v);
                }
            }
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

fn strip_token_query(query: Option<&str>) -> Option<String> {
    let q = query?;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("token="))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

#[utoipa::path(
    post,
    path = "/api/vms/{id}/http",
    tag = "network",
    summary = "Send one HTTP request to a port inside the VM (buffered; BandSox shape)",
    operation_id = "network_http",
    params(("id" = String, Path, description = "VM id")),
    request_body = HttpProxyRequest,
    responses(
        (status = 200, description = "the guest's answer", body = HttpProxyResponse),
        (status = 422, description = "bad port, method, path or body"),
        (status = 502, description = "nothing listens on the port, or the answer is too large"),
        (status = 504, description = "the guest did not answer in time"),
    )
)]
pub async fn http(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<HttpProxyRequest>, JsonRejection>,
) -> ApiResult<Json<HttpProxyResponse>> {
    let Json(req) = body?;
    let port = parse_port(&req.port.to_string())?;
    check_guest_path(&req.path)?;
    let method = Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| ApiError::invalid(format!("invalid method `{}`", req.method)))?;
    if !(req.timeout.is_finite() && req.timeout > 0.0) {
        return Err(ApiError::invalid(
            "timeout must be a positive number of seconds",
        ));
    }
    let wait = Duration::from_secs_f64(req.timeout.min(MAX_TIMEOUT.as_secs_f64()));
    let given = [
        req.body.is_some(),
        req.body_base64.is_some(),
        req.json_body.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ApiError::invalid(
            "give at most one of body, body_base64 and json_body",
        ));
    }
    let mut content_type = None;
    let bytes: Vec<u8> = if let Some(b) = req.body {
        b.into_bytes()
    } else if let Some(b) = req.body_base64 {
        base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| ApiError::invalid(format!("body_base64 is not base64: {e}")))?
    } else if let Some(j) = req.json_body {
        content_type = Some("application/json");
        serde_json::to_vec(&j).map_err(|e| ApiError::invalid(e.to_string()))?
    } else {
        Vec::new()
    };
    let addr = s.manager.guest_endpoint(&id, port).await?;
    let uri: Uri = req
        .path
        .parse()
        .map_err(|e| ApiError::invalid(format!("invalid path: {e}")))?;
    let mut builder = axum::http::Request::builder().method(method).uri(uri);
    let mut has_ct = false;
    for (k, v) in req.headers.unwrap_or_default() {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ApiError::invalid(format!("invalid header name `{k}`")))?;
        let value = HeaderValue::from_str(&v)
            .map_err(|_| ApiError::invalid(format!("invalid value of `{k}`")))?;
        if HOP_BY_HOP.contains(&name.as_str()) || name == header::HOST {
            continue;
        }
        has_ct |= name == header::CONTENT_TYPE;
        builder = builder.header(name, value);
    }
    if let (Some(ct), false) = (content_type, has_ct) {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder = builder.header(header::HOST, addr.to_string());
    let request = builder
        .body(Body::from(bytes))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + wait;
    let resp = send(addr, request, wait).await?;
    let status_code = resp.status().as_u16();
    let mut headers = BTreeMap::new();
    for (k, v) in resp.headers() {
        headers.insert(
            k.as_str().to_owned(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        );
    }
    let limited = http_body_util::Limited::new(resp.into_body(), HTTP_BODY_CAP);
    let collected = match tokio::time::timeout_at(deadline, limited.collect()).await {
        Err(_) => return Err(timeout_error(wait)),
        Ok(Err(e)) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Err(if too_big {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "response_too_large",
                    format!(
                        "the answer is larger than {} MiB; use /api/vms/{{id}}/ports/{{port}}/... to stream it",
                        HTTP_BODY_CAP >> 20
                    ),
                )
            } else {
                unreachable(addr, e)
            });
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let (body, body_base64) = match std::str::from_utf8(&collected) {
        Ok(t) => (t.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(&collected).into_owned(),
            Some(base64::engine::general_purpose::STANDARD.encode(&collected)),
        ),
    };
    Ok(Json(HttpProxyResponse {
        status_code,
        headers,
        body,
        body_base64,
    }))
}

#[utoipa::path(
    get,
    path = "/api/vms/{id}/ports/{port}/{path}",
    tag = "network",
    summary = "Reverse proxy to a port inside the VM, served on the proxy listener",
    description = "Served on the proxy listener (its base URL is `proxy_url` in `GET /api/version`); \
                   on the API listener this path answers 307 there. Any method; streamed both ways; \
                   WebSocket upgrades pass through; `/api/vms/{id}/ports/{port}` and `.../{port}/` \
                   reach `/` of the port. `X-Bandsox-Timeout-Ms` bounds the wait for the answer's \
                   headers (default 30000). Answers carry `Content-Security-Policy: sandbox ...`; \
                   the guest's `Set-Cookie` is dropped.",
    operation_id = "network_proxy",
    params(
        ("id" = String, Path, description = "VM id"),
        ("port" = u32, Path, description = "TCP port inside the VM, 1 to 65535"),
        ("path" = String, Path, description = "path inside the VM (no `.`/`..` segments)"),
    ),
    responses(
        (status = 200, description = "the guest's answer, streamed"),
        (status = 307, description = "on the API listener: the same path on the proxy listener"),
        (status = 422, description = "bad port or path"),
        (status = 502, description = "nothing listens on the port"),
        (status = 504, description = "the guest did not answer in time"),
    )
)]
pub async fn proxy(
    State(s): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Response {
    proxy_inner(s, params, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn proxy_inner(
    s: AppState,
    params: Vec<(String, String)>,
    mut req: Request,
) -> ApiResult<Response> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let id = get("id");
    let port = parse_port(&get("port"))?;
    // The raw (still percent-encoded) rest of the path after `/ports/<port>`.
    let raw = req.uri().path().to_owned();
    let marker = "/ports/";
    let rest = raw
        .find(marker)
        .map(|i| &raw[i + marker.len()..])
        .and_then(|r| r.find('/').map(|j| &r[j..]))
        .unwrap_or("/");
    check_guest_path(rest)?;
    let wait = match req.headers().get(TIMEOUT_HEADER) {
        None => PROXY_TIMEOUT,
        Some(v) => {
            let ms: u64 = v
                .to_str()
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| {
                    ApiError::invalid("X-Bandsox-Timeout-Ms must be a number of milliseconds")
                })?;
            Duration::from_millis(ms.max(1)).min(MAX_TIMEOUT)
        }
    };
    let addr = s.manager.guest_endpoint(&id, port).await?;
    let upgrade = is_upgrade(req.headers());
    let path_and_query = match strip_token_query(req.uri().query()) {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let uri: Uri = path_and_query.parse().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_path",
            format!("invalid path: {e}"),
        )
    })?;
    let mut headers = forward_headers(req.headers(), upgrade);
    if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
        headers.insert(header::HOST, v);
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let method = req.method().clone();
    let body = if upgrade {
        Body::empty()
    } else {
        req.into_body()
    };
    let mut out = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    *out.headers_mut() = headers;
    let mut resp = send(addr, out, wait).await?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(unreachable(addr, "the guest switched protocols unasked"));
        };
        let guest_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(guest)) = (client_upgrade.await, guest_upgrade.await) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut guest = TokioIo::new(guest);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
        });
        let mut answer = Response::new(Body::empty());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = answer_headers(resp.headers(), true);
        return Ok(answer);
    }

    let (parts, body) = resp.into_parts();
    let mut answer = Response::new(Body::new(body));
    *answer.status_mut() = parts.status;
    *answer.headers_mut() = answer_headers(&parts.headers, false);
    Ok(answer)
}

/// On the API listener: the proxy's paths answer 307 to the same path on the proxy listener,
/// so guest pages never load on the API's origin.
pub async fn elsewhere(State(s): State<AppState>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let Some(base) = s.proxy.base_url(host) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "proxy_disabled",
            "this server has no guest proxy listener",
        )
        .into_response();
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", axum::http::uri::PathAndQuery::as_str);
    let location = format!("{base}{path_and_query}");
    let Ok(value) = HeaderValue::from_str(&location) else {
        return ApiError::invalid("the path cannot be redirected").into_response();
    };
    let mut resp = ApiError::new(
        StatusCode::TEMPORARY_REDIRECT,
        "proxy_elsewhere",
        format!("guest ports are served on the proxy listener: {location}"),
    )
    .into_response();
    resp.headers_mut().insert(header::LOCATION, value);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked() {
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("x").is_err());
        assert_eq!(parse_port("8080").ok(), Some(8080));
    }

    #[test]
    fn traversal_is_refused() {
        assert!(check_guest_path("/a/b?c=1").is_ok());
        assert!(check_guest_path("/").is_ok());
        for bad in [
            "/../etc",
            "/a/..",
            "/%2e%2e/x",
            "/a%2f..%2fb",
            "/a\\..\\b",
            "/%252e%252e/",
            "x",
        ] {
            assert!(check_guest_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn guest_answers_are_sandboxed_and_keep_no_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            "set-cookie",
            HeaderValue::from_static("bandsox_session=evil"),
        );
        h.append("set-cookie", HeaderValue::from_static("a=b"));
        h.insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
        h.insert("content-type", HeaderValue::from_static("text/html"));
        h.insert("connection", HeaderValue::from_static("upgrade"));
        h.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src *"),
        );
        let out = answer_headers(&h, false);
        assert!(out.get("set-cookie").is_none());
        assert!(out.get("clear-site-data").is_none());
        assert!(out.get("connection").is_none());
        assert_eq!(out.get("content-type").unwrap(), "text/html");
        let csp: Vec<_> = out.get_all("content-security-policy").iter().collect();
        assert!(csp.iter().any(|v| *v == GUEST_CSP), "{csp:?}");
        assert!(answer_headers(&h, true).get("connection").is_some());
        assert!(answer_headers(&h, true).get("set-cookie").is_none());
    }

    #[test]
    fn credentials_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer bsx_x"));
        h.insert(
            "cookie",
            HeaderValue::from_static("a=1; bandsox_session=s; b=2"),
        );
        h.insert("x-bandsox-timeout-ms", HeaderValue::from_static("5"));
        h.insert("connection", HeaderValue::from_static("upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("bandsox.auth.abc, chat"),
        );
        let f = forward_headers(&h, true);
        assert!(f.get("authorization").is_none());
        assert_eq!(f.get("cookie").unwrap(), "a=1; b=2");
        assert_eq!(f.get("sec-websocket-protocol").unwrap(), "chat");
        assert!(f.get("upgrade").is_some());
        assert!(f.get(TIMEOUT_HEADER).is_none());
        assert!(forward_headers(&h, false).get("upgrade").is_none());
        assert_eq!(
            strip_token_query(Some("token=x&a=1")).as_deref(),
            Some("a=1")
        );
        assert_eq!(strip_token_query(Some("token=x")), None);
    }
}
