//! What the server tells operators about itself: an access log line per request and
//! Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! One middleware ([`observe`]) sees every request on both listeners after the answer is
//! made: it gives the request an id (`X-Request-Id`, kept when the client sent a sane one),
//! logs `method route status duration request_id` at `info` on the target `bandsox::access`
//! (the route as matched, `/api/vms/{id}/exec`, never the query string, which may hold a
//! token), and counts it. Metrics:
//! - `bandsox_http_requests_total{method,route,status}`;
//! - `bandsox_http_request_duration_seconds{method,route}` (histogram; the create, restore and
//!   exec latencies are its `POST /api/vms`, `POST /api/snapshots/{id}/restore` and
//!   `POST /api/vms/{id}/exec` series);
//! - `bandsox_errors_total{code}` (problem codes answered);
//! - `bandsox_vms{state}` (VMs by state, read at scrape time).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::ApiError;
use crate::routes::AppState;

/// The problem code of an error answer, left in its extensions for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// Request latency buckets, in seconds: from a millisecond to two minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The server's metrics and whether the access log is on.
pub struct Observer {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    errors: Family<CodeLabels, Counter>,
    vms: Family<StateLabels, Gauge>,
    credential_checks: Counter,
    /// Whether to write an access log line per request.
    pub access_log: bool,
    /// Whether to count requests (off only to measure what counting costs).
    pub metrics: bool,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

impl Observer {
    pub fn new(access_log: bool) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS.iter().copied())
        });
        let errors = Family::<CodeLabels, Counter>::default();
        let vms = Family::<StateLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("bandsox");
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the answer's headers), by method and route",
            durations.clone(),
        );
        registry.register("errors", "Error answers by problem code", errors.clone());
        registry.register("vms", "VMs by state", vms.clone());
        let credential_checks = Counter::default();
        registry.register(
            "credential_checks",
            "API keys and session tokens looked up (one per authenticated request)",
            credential_checks.clone(),
        );
        Self {
            registry,
            requests,
            durations,
            errors,
            vms,
            credential_checks,
            access_log,
            metrics: true,
        }
    }

    /// Neither metrics nor an access log (what `bench/api` compares against).
    pub fn off() -> Self {
        let mut o = Self::new(false);
        o.metrics = false;
        o
    }

    /// Counts one lookup of a key or session token.
    pub fn credential_checked(&self) {
        self.credential_checks.inc();
    }

    fn record(&self, method: &str, route: &str, status: StatusCode, secs: f64, code: Option<&str>) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.as_u16(),
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(secs);
        if let Some(code) = code {
            self.errors
                .get_or_create(&CodeLabels {
                    code: code.to_owned(),
                })
                .inc();
        }
    }

    /// The metrics as OpenMetrics text, with the VM gauges read from `state` now.
    pub fn render(&self, state: &AppState) -> Result<String, ApiError> {
        let vms = state.manager.list_vms()?;
        self.vms.clear();
        for s in ["creating", "running", "paused", "stopped", "failed"] {
            self.vms
                .get_or_create(&StateLabels { state: s.into() })
                .set(0);
        }
        for vm in &vms {
            self.vms
                .get_or_create(&StateLabels {
                    state: vm.status.as_str().into(),
                })
                .inc();
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        Ok(out)
    }
}

/// Content type of OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: needs credentials when auth is on (or use `serve --metrics-listen`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (OpenMetrics text): requests, latencies, errors, VMs by state",
    operation_id = "operations_metrics",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
pub async fn metrics(State(s): State<AppState>) -> Response {
    match s.observer.render(&s) {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A request id the client sent, if it is short and plain; else a new one.
fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get("x-request-id")
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty()
                && b.len() <= 64
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        })
        .cloned()
        .unwrap_or_else(|| {
            // A random prefix per process and a counter: unique, and no random draw a request.
            static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let prefix = PREFIX.get_or_init(|| bandsox_core::storage::new_id()[..8].to_owned());
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            HeaderValue::from_str(&format!("{prefix}-{n:x}"))
                .unwrap_or(HeaderValue::from_static("-"))
        })
}

/// Middleware: the request id, the access log line and the metrics of every request.
pub async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if !s.observer.metrics && !s.observer.access_log {
        return next.run(req).await;
    }
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let id = request_id(&req);
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let path: String = req.uri().path().chars().take(200).collect();
    let mut resp = next.run(req).await;
    // The router matched inside this layer: take the route it recorded on the answer.
    let route = resp
        .extensions()
        .get::<MatchedRoute>()
        .map_or(route, |m| m.0.clone());
    let status = resp.status();
    let secs = started.elapsed().as_secs_f64();
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    if s.observer.metrics {
        s.observer.record(&method, &route, status, secs, code);
    }
    if s.observer.access_log {
        tracing::info!(
            target: "bandsox::access",
            method = %method,
            route = %route,
            path = %path,
            status = status.as_u16(),
            duration_ms = (secs * 1e6).round() / 1e3,
            request_id = id.to_str().unwrap_or("-"),
            peer = ?peer,
            code = code.unwrap_or(""),
        );
    }
    resp.headers_mut().insert("x-request-id", id);
    resp
}

/// The route a request matched, carried out on its answer (a layer outside the router cannot
/// see `MatchedPath` on the request yet).
#[derive(Debug, Clone)]
pub struct MatchedRoute(pub String);

/// Middleware inside the router: copies the matched route onto the answer.
pub async fn mark_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(r) = route {
        resp.extensions_mut().insert(MatchedRoute(r));
    }
    resp
}

/// A shared observer for a state.
pub fn observer(access_log: bool) -> Arc<Observer> {
    Arc::new(Observer::new(access_log))
}
