//! Limits that keep one client from starving the server or the others:
//! - concurrent operations per VM: each request under `/api/vms/{id}/...` holds a permit of
//!   its VM (the id as the handler sees it, percent-decoded) while it runs; one beyond
//!   `max_ops_per_vm` is answered 429 `too_many_operations` at once (with `Retry-After`);
//! - request bodies that handlers buffer (JSON): each route has a cap, answered 413 from
//!   `Content-Length` before a byte is read, and all buffered bodies together share one
//!   [`BodyBudget`], beyond which requests wait briefly, then get 503 `server_busy`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::routes::AppState;

/// Default of `bandsox serve --max-ops-per-vm`.
pub const DEFAULT_MAX_OPS_PER_VM: usize = 64;

/// Permits per VM id, created on first use and dropped when idle.
#[derive(Debug)]
pub struct OpLimiter {
    max: usize,
    vms: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for OpLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_OPS_PER_VM)
    }
}

/// A running operation; gives its permit back (and forgets an idle VM) on drop.
pub struct OpPermit<'a> {
    limiter: &'a OpLimiter,
    id: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for OpPermit<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut vms = self.limiter.vms.lock().unwrap_or_else(|p| p.into_inner());
        if vms
            .get(&self.id)
            .is_some_and(|s| s.available_permits() == self.limiter.max && Arc::strong_count(s) == 1)
        {
            vms.remove(&self.id);
        }
    }
}

impl OpLimiter {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            vms: Mutex::default(),
        }
    }

    /// A permit for one more operation on `id`, or `None` when it already runs `max`.
    pub fn try_start(&self, id: &str) -> Option<OpPermit<'_>> {
        let sem = self
            .vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
            .clone();
        let permit = sem.try_acquire_owned().ok()?;
        Some(OpPermit {
            limiter: self,
            id: id.to_owned(),
            permit: Some(permit),
        })
    }
}

/// The VM id of a `/api/vms/{id}/<operation>` path (not of `/api/vms/{id}` itself),
/// percent-decoded as the router decodes it, so `%2D` and `-` name one VM.
fn vm_of_operation(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/vms/")?;
    let (id, op) = rest.split_once('/')?;
    (!id.is_empty() && !op.is_empty()).then(|| crate::util::percent_decode_lossy(id))
}

/// Middleware: holds a permit of the request's VM for as long as the handler runs.
pub async fn per_vm(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(id) = vm_of_operation(req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(_permit) = s.vm_ops.try_start(&id) else {
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_operations",
            format!(
                "VM {id} already runs {} operations; retry when one ends",
                s.vm_ops.max
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return resp;
    };
    next.run(req).await
}

/// Bytes of request bodies that handlers may hold in memory at once, across all requests.
pub const DEFAULT_BODY_BUDGET: usize = 512 << 20;
/// How long a request waits for room in the budget before 503.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The shared budget of buffered request-body bytes (counted in KiB).
#[derive(Debug)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

impl Default for BodyBudget {
    fn default() -> Self {
        Self::new(DEFAULT_BODY_BUDGET)
    }
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Room for `bytes`, waiting up to [`BUDGET_WAIT`]; `None` when there is none.
    async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        tokio::time::timeout(BUDGET_WAIT, self.kib.clone().acquire_many_owned(kib))
            .await
            .ok()?
            .ok()
    }
}

/// Largest JSON body of the routes that carry file content (base64) in JSON.
pub const BIG_JSON_BYTES: usize = 64 << 20;
/// Largest body of every other buffered route.
pub const SMALL_BODY_BYTES: usize = 2 << 20;

/// How a route's request body is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyUse {
    /// Streamed through (uploads, imports, the port proxy): neither capped nor budgeted.
    Streamed,
    /// Held in memory by the handler: capped at this many bytes and budgeted.
    Buffered(usize),
}

/// `archive`: the body is declared an archive (a build context, not JSON).
fn body_use(path: &str, archive: bool) -> BodyUse {
    // Build contexts are streamed to disk by core, which caps them.
    if path == "/api/images/import"
        || path == "/api/vms/from-dockerfile"
        || (path == "/api/images/build" && archive)
    {
        return BodyUse::Streamed;
    }
    if let Some(rest) = path.strip_prefix("/api/vms/") {
        let op = rest.split_once('/').map_or("", |(_, op)| op);
        return match op {
            "upload" => BodyUse::Streamed,
            _ if op.starts_with("ports/") || op == "ports" => BodyUse::Streamed,
            "write-file" | "append-file" | "files/write-batch" => BodyUse::Buffered(BIG_JSON_BYTES),
            _ => BodyUse::Buffered(SMALL_BODY_BYTES),
        };
    }
    BodyUse::Buffered(SMALL_BODY_BYTES)
}

fn too_large(cap: usize) -> Response {
    let mut e = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the request body is larger than this route takes ({} MiB)",
            cap >> 20
        ),
    );
    e.hint = Some("send big files with POST /api/vms/{id}/upload (multipart, streamed)");
    e.into_response()
}

/// Middleware on every route: caps and budgets request bodies by route (see [`body_use`]).
/// The router itself sets no body limit; this is the one place they are decided.
pub async fn bodies(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let archive = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.to_ascii_lowercase().contains("json"));
    let BodyUse::Buffered(cap) = body_use(req.uri().path(), archive) else {
        return next.run(req).await;
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return too_large(cap);
    }
    let reserve = declared.map_or(cap, |n| n as usize);
    let _room = if reserve == 0 {
        None
    } else {
        match s.body_budget.reserve(reserve).await {
            Some(p) => Some(p),
            None => {
                let mut resp = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_busy",
                    "the server is holding as many request bodies as it may; retry shortly",
                )
                .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return resp;
            }
        }
    };
    let req = req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, cap)));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_paths_name_their_vm() {
        assert_eq!(vm_of_operation("/api/vms/abc/exec").as_deref(), Some("abc"));
        assert_eq!(
            vm_of_operation("/api/vms/abc/commands/x/logs").as_deref(),
            Some("abc")
        );
        // Spellings of one id are one VM.
        assert_eq!(
            vm_of_operation("/api/vms/a%2Db%37/exec").as_deref(),
            Some("a-b7")
        );
        assert_eq!(vm_of_operation("/api/vms/abc"), None);
        assert_eq!(vm_of_operation("/api/vms"), None);
        assert_eq!(vm_of_operation("/api/snapshots/abc/restore"), None);
    }

    #[test]
    fn permits_are_counted_per_vm_and_released() {
        let l = OpLimiter::new(2);
        let a1 = l.try_start("a").unwrap();
        let _a2 = l.try_start("a").unwrap();
        assert!(
            l.try_start("a").is_none(),
            "third operation on a is refused"
        );
        let _b = l.try_start("b").expect("another VM is not affected");
        drop(a1);
        assert!(
            l.try_start("a").is_some(),
            "a permit comes back when an operation ends"
        );
    }

    #[test]
    fn bodies_are_classified_by_route() {
        assert_eq!(body_use("/api/vms/a/upload", false), BodyUse::Streamed);
        assert_eq!(body_use("/api/images/import", true), BodyUse::Streamed);
        assert_eq!(body_use("/api/vms/a/ports/80/x", false), BodyUse::Streamed);
        assert_eq!(
            body_use("/api/vms/from-dockerfile", false),
            BodyUse::Streamed
        );
        // A build context is streamed (core caps it); a JSON build is small.
        assert_eq!(body_use("/api/images/build", true), BodyUse::Streamed);
        assert_eq!(
            body_use("/api/images/build", false),
            BodyUse::Buffered(SMALL_BODY_BYTES)
        );
        assert_eq!(
            body_use("/api/vms/a/write-file", false),
            BodyUse::Buffered(BIG_JSON_BYTES)
        );
        assert_eq!(
            body_use("/api/vms", false),
            BodyUse::Buffered(SMALL_BODY_BYTES)
        );
        assert_eq!(
            body_use("/api/vms/a/exec", true),
            BodyUse::Buffered(SMALL_BODY_BYTES)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_shared_and_given_back() {
        let b = BodyBudget::new(4 << 10);
        let first = b.reserve(3 << 10).await.expect("room for 3 KiB");
        assert!(b.reserve(2 << 10).await.is_none(), "no room for 2 more");
        drop(first);
        assert!(b.reserve(4 << 10).await.is_some());
    }

    #[test]
    fn idle_vms_are_forgotten() {
        let l = OpLimiter::new(1);
        drop(l.try_start("a").unwrap());
        assert!(l.vms.lock().unwrap().is_empty());
    }
}
