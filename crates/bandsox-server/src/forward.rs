//! Node-to-node forwarding (`serve --cluster`): a request for a VM that lives on another node
//! is sent to that node's advertised address, authenticated with the cluster secret, and its
//! answer (a body stream, or a WebSocket after `101 Switching Protocols`) is passed back.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use crate::cluster::ClusterNode;
use crate::error::{ApiError, ApiResult};

/// The cluster secret, on requests between nodes.
pub const SECRET_HEADER: &str = "x-bandsox-cluster-secret";
/// The node that forwarded a request.
pub const FROM_HEADER: &str = "x-bandsox-forwarded-by";
/// The id a create was placed under (only from another node).
pub const VM_ID_HEADER: &str = "x-bandsox-vm-id";
/// How long connecting to a node and getting its answer's headers may take for requests
/// that carry no timeout of their own. Creates and long execs get more (see callers).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Headers that describe one connection, not the request, and are not forwarded (except the
/// upgrade pair of a WebSocket handshake).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE).is_some()
        && h.get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

fn unreachable(node: &str, e: impl std::fmt::Display) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_unreachable",
        format!("cannot reach node `{node}`: {e}"),
    );
    err.hint =
        Some("see `bandsox cluster nodes`; the node may be down or its --advertise address wrong");
    err
}

/// `host:port` of an `http://host:port` address.
fn authority(advertise: &str) -> &str {
    advertise
        .strip_prefix("http://")
        .unwrap_or(advertise)
        .trim_end_matches('/')
}

/// Sends `req` to node `name` at `advertise` and returns its answer. `extra` headers are
/// added (after the client's copies of them are removed); `wait` bounds the time until the
/// answer's headers arrive.
pub async fn forward(
    me: &ClusterNode,
    name: &str,
    advertise: &str,
    mut req: Request,
    extra: &[(&'static str, String)],
    wait: Duration,
) -> ApiResult<Response> {
    let addr = authority(advertise).to_owned();
    let upgrade = is_upgrade(req.headers());
    let tcp =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
            Err(_) => return Err(unreachable(name, "connect timed out")),
            Ok(Err(e)) => return Err(unreachable(name, e)),
            Ok(Ok(t)) => t,
        };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(name, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node connection ended");
        }
    });

    let mut headers = HeaderMap::new();
    for (k, v) in req.headers() {
        let n = k.as_str();
        let hop = HOP_BY_HOP.contains(&n) && !(upgrade && matches!(n, "connection" | "upgrade"));
        if hop
            || k == header::HOST
            || n == SECRET_HEADER
            || n == FROM_HEADER
            || n == VM_ID_HEADER
            || extra.iter().any(|(e, _)| *e == n)
        {
            continue;
        }
        headers.append(k.clone(), v.clone());
    }
    let host = HeaderValue::from_str(&addr).map_err(|e| unreachable(name, e))?;
    headers.insert(header::HOST, host);
    let secret = HeaderValue::from_str(me.secret()).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the cluster secret is not a valid header value",
        )
    })?;
    headers.insert(HeaderName::from_static(SECRET_HEADER), secret);
    if let Ok(v) = HeaderValue::from_str(&me.name) {
        headers.insert(HeaderName::from_static(FROM_HEADER), v);
    }
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(HeaderName::from_static(k), v);
        }
    }

    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let body = if upgrade {
        Body::empty()
    } else {
        req.into_body()
    };
    let mut out = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .body(body)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    *out.headers_mut() = headers;
    let mut resp = match tokio::time::timeout(wait, sender.send_request(out)).await {
        Err(_) => return Err(unreachable(name, format!("no answer within {wait:?}"))),
        Ok(Err(e)) => return Err(unreachable(name, e)),
        Ok(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(unreachable(name, "the node switched protocols unasked"));
        };
        let node_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(node)) = (client_upgrade.await, node_upgrade.await) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut node = TokioIo::new(node);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
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

fn answer_headers(h: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        let n = k.as_str();
        if HOP_BY_HOP.contains(&n) && !(upgrade && matches!(n, "connection" | "upgrade")) {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_strips_the_scheme() {
        assert_eq!(authority("http://10.0.0.5:8000"), "10.0.0.5:8000");
        assert_eq!(authority("http://h:1/"), "h:1");
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&h));
        let kept = answer_headers(&h, true);
        assert!(kept.contains_key(header::UPGRADE));
        assert!(!answer_headers(&h, false).contains_key(header::UPGRADE));
    }
}
