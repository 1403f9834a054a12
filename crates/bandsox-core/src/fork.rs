//! Fork: N new running VMs with a running VM's memory and disk state at one instant.
//!
//! A fork is a snapshot (the source is paused only while its state and disk are captured,
//! then runs on) restored N times at once, each clone with its own identity (see
//! [`crate::template`]: hostname, machine id, RNG, clock, address, disk). The snapshot is
//! removed once the clones run; if any clone fails, the others are deleted too.

use std::sync::Arc;

use crate::error::{CoreError, Result};
use crate::manager::{check_label, Manager};
use crate::snapshots::RestoreOptions;
use crate::store::VmRecord;

/// Most clones one fork makes.
pub const MAX_FORK: usize = 16;

impl Manager {
    /// Forks VM `vm_id` into `count` new VMs named `names` (default `<source>-fork-<n>`).
    pub async fn fork_vm(
        self: &Arc<Self>,
        vm_id: &str,
        count: usize,
        names: Option<Vec<String>>,
    ) -> Result<Vec<VmRecord>> {
        if !(1..=MAX_FORK).contains(&count) {
            return Err(CoreError::InvalidInput(format!(
                "count must be 1 to {MAX_FORK}, got {count}"
            )));
        }
        if let Some(n) = &names {
            if n.len() != count {
                return Err(CoreError::InvalidInput(format!(
                    "{} names given for {count} clones",
                    n.len()
                )));
            }
            n.iter().try_for_each(|n| check_label(n))?;
        }
        let src = self.get_vm(vm_id)?;
        let networked = self.vm_network(vm_id)?.is_some_and(|n| n.lease.is_some());
        let snap = self
            .snapshot_vm(
                vm_id,
                &format!("fork of {}", src.name),
                Some(serde_json::json!({ "bandsox_fork": true })),
            )
            .await?;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..count {
            let name = names
                .as_ref()
                .map(|n| n[i].clone())
                .unwrap_or_else(|| format!("{}-fork-{}", src.name, i + 1));
            let opts = RestoreOptions {
                name: Some(name),
                metadata: Some(src.metadata.clone()),
                env_vars: Some(src.env_vars.clone()),
                enable_networking: Some(networked),
            };
            let (mgr, id) = (self.clone(), snap.id.clone());
            set.spawn(async move { (i, mgr.restore_snapshot(&id, opts).await) });
        }
        let mut results = Vec::with_capacity(count);
        while let Some(r) = set.join_next().await {
            results.push(
                r.unwrap_or_else(|e| (usize::MAX, Err(CoreError::Io(std::io::Error::other(e))))),
            );
        }
        results.sort_by_key(|(i, _)| *i);
        let results = results.into_iter().map(|(_, r)| r);
        if let Err(e) = self.delete_snapshot(&snap.id) {
            tracing::warn!(snapshot = %snap.id, error = %e, "could not remove a fork's snapshot");
        }
        let mut vms = Vec::with_capacity(count);
        let mut failed = None;
        for r in results {
            match r {
                Ok(vm) => vms.push(vm),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            for vm in vms {
                let _ = self.delete_vm(&vm.id).await;
            }
            return Err(e);
        }
        Ok(vms)
    }
}
