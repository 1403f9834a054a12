//! VM timeouts: a VM may carry an expiry time and an action (`stop`, `pause` or `delete`)
//! that runs when it passes. One background task per manager checks once a second.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::{CoreError, Result};
use crate::manager::Manager;
use crate::store::{now, StopReason, TimeoutAction, VmRecord, VmStatus};

/// Longest timeout that can be set or added in one call, in seconds.
pub const MAX_TIMEOUT_S: u64 = 86_400;

impl Manager {
    /// Sets a VM's timeout to `timeout_s` seconds from now (0 clears it) and its action.
    pub fn set_timeout(
        &self,
        id: &str,
        timeout_s: u64,
        action: Option<TimeoutAction>,
    ) -> Result<VmRecord> {
        let vm = self.get_vm(id)?;
        if timeout_s > MAX_TIMEOUT_S {
            return Err(CoreError::InvalidInput(format!(
                "timeout must be at most {MAX_TIMEOUT_S} seconds, got {timeout_s}"
            )));
        }
        let expires_at = (timeout_s > 0).then(|| now() + timeout_s as f64);
        self.store()
            .set_vm_timeout(id, expires_at, action.unwrap_or(vm.timeout_action))?;
        self.get_vm(id)
    }

    /// Adds `seconds` (1 to [`MAX_TIMEOUT_S`]) to a VM's timeout. A VM without a timeout is
    /// refused (extending "never" would give it a short life), and so is a VM that is not
    /// running or paused (its timeout cannot fire).
    pub fn extend_timeout(&self, id: &str, seconds: u64) -> Result<VmRecord> {
        let vm = self.get_vm(id)?;
        if seconds == 0 || seconds > MAX_TIMEOUT_S {
            return Err(CoreError::InvalidInput(format!(
                "an extension is 1 to {MAX_TIMEOUT_S} seconds, got {seconds}"
            )));
        }
        let Some(expires_at) = vm.expires_at else {
            return Err(CoreError::NoTimeout { id: vm.id });
        };
        if !matches!(vm.status, VmStatus::Running | VmStatus::Paused) {
            return Err(CoreError::Conflict(format!(
                "VM `{id}` is {}; only a running or paused VM's timeout can be extended",
                vm.status
            )));
        }
        let base = expires_at.max(now());
        self.store()
            .set_vm_timeout(id, Some(base + seconds as f64), vm.timeout_action)?;
        self.get_vm(id)
    }

    /// Starts the task that enforces timeouts. It ends when the manager is dropped.
    pub(crate) fn spawn_timeout_task(self: &Arc<Self>) {
        let weak: Weak<Manager> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(mgr) = weak.upgrade() else { return };
                mgr.enforce_timeouts().await;
            }
        });
    }

    async fn enforce_timeouts(self: &Arc<Self>) {
        let Ok(vms) = self.list_vms() else { return };
        let t = now();
        for vm in vms {
            let Some(at) = vm.expires_at else { continue };
            if at > t || !matches!(vm.status, VmStatus::Running | VmStatus::Paused) {
                continue;
            }
            tracing::info!(vm = %vm.id, action = vm.timeout_action.as_str(), "timeout expired");
            // Clear first so a failing action is not retried every second.
            let _ = self.store().set_vm_timeout(&vm.id, None, vm.timeout_action);
            let result = match vm.timeout_action {
                TimeoutAction::Stop => self
                    .stop_vm_because(&vm.id, StopReason::Timeout)
                    .await
                    .map(drop),
                TimeoutAction::Pause => self
                    .set_paused(&vm.id, true, StopReason::Timeout)
                    .await
                    .map(drop),
                TimeoutAction::Delete => self.delete_vm(&vm.id).await,
            };
            if let Err(e) = result {
                tracing::warn!(vm = %vm.id, error = %e, "timeout action failed");
            }
        }
    }
}
