//! Concurrent operations per VM: each request under `/api/vms/{id}/...` holds a permit of its
//! VM while it runs; one beyond `max_ops_per_vm` is answered 429 `too_many_operations` at once
//! (with `Retry-After`), so one VM's flood of calls cannot starve the server or the others.

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

/// The VM id of a `/api/vms/{id}/<operation>` path (not of `/api/vms/{id}` itself).
fn vm_of_operation(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/vms/")?;
    let (id, op) = rest.split_once('/')?;
    (!id.is_empty() && !op.is_empty()).then_some(id)
}

/// Middleware: holds a permit of the request's VM for as long as the handler runs.
pub async fn per_vm(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(id) = vm_of_operation(req.uri().path()).map(str::to_owned) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_paths_name_their_vm() {
        assert_eq!(vm_of_operation("/api/vms/abc/exec"), Some("abc"));
        assert_eq!(vm_of_operation("/api/vms/abc/commands/x/logs"), Some("abc"));
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
    fn idle_vms_are_forgotten() {
        let l = OpLimiter::new(1);
        drop(l.try_start("a").unwrap());
        assert!(l.vms.lock().unwrap().is_empty());
    }
}
