//! Warm pools: per image and shape, N VMs restored from the template and paused ahead of
//! demand, so a create of that image and shape is a resume plus an identity fix-up.
//!
//! A pool VM is a VM row with a `pool_vms` row beside it (recorded in one transaction):
//! never listed, counted against `max_vms` or found by id, until a create claims it (the
//! `pool_vms` row is removed in the same transaction that gives it the create's name and
//! labels). Pool VMs are not kept across server restarts: the next start stops and removes
//! every one (VMM, namespace, lease, files), and a server that stops cleanly drains them.
//!
//! A refill task per manager keeps each pool at its size while the pool VMs' memory stays
//! within the budget, builds the template first when there is none, and removes pool VMs
//! whose template is no longer current.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::manager::{Boot, Manager};
use crate::storage::new_id;
use crate::store::{now, VmRecord, VmStatus};
use crate::template::TemplateShape;

/// Most VMs one pool may hold.
pub const MAX_POOL_SIZE: usize = 64;

/// One configured pool: `size` paused VMs of `image` in `shape`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub image: String,
    pub shape: TemplateShape,
    pub size: usize,
}

impl PoolSpec {
    /// Parses `IMAGE[:VCPUxMEM_MIB]=N` (`bandsox serve --warm-pool`). The shape part is the
    /// last `:`-separated field when it looks like `2x256`; otherwise the default shape
    /// (1 vCPU, 128 MiB, 4096 MiB disk, networking on) applies and the colon belongs to the
    /// image reference (`alpine:3.19=2`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            CoreError::InvalidInput(format!(
                "warm pool `{}`: {why} (expected IMAGE[:VCPUxMEM_MIB]=N, e.g. bandsox/busybox:1x128=2)",
                s.escape_debug()
            ))
        };
        let (lhs, n) = s.rsplit_once('=').ok_or_else(|| bad("no `=N`"))?;
        let size: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if size > MAX_POOL_SIZE {
            return Err(bad(&format!("N must be at most {MAX_POOL_SIZE}")));
        }
        let defaults = crate::manager::CreateVm::new("");
        let mut shape = TemplateShape {
            vcpu: defaults.vcpu,
            mem_mib: defaults.mem_mib,
            disk_size_mib: defaults.disk_size_mib,
            enable_networking: defaults.enable_networking,
        };
        let mut image = lhs;
        if let Some((img, tail)) = lhs.rsplit_once(':') {
            if let Some((v, m)) = tail.split_once('x') {
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    shape.vcpu = v.parse().map_err(|_| bad("bad vCPU count"))?;
                    shape.mem_mib = m.parse().map_err(|_| bad("bad memory size"))?;
                    image = img;
                }
            }
        }
        if image.is_empty() {
            return Err(bad("no image"));
        }
        Ok(Self {
            image: image.to_owned(),
            shape,
            size,
        })
    }
}

/// What a pool holds right now (`Manager::pools`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub image: String,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    pub enable_networking: bool,
    /// Wanted size.
    pub size: usize,
    /// Paused pool VMs of the current template, ready to be claimed.
    pub ready: usize,
    /// The template the pool VMs are restored from, once built.
    pub template: Option<String>,
}

/// Pool bookkeeping of one manager.
#[derive(Default)]
pub(crate) struct Pools {
    specs: std::sync::Mutex<Vec<PoolSpec>>,
    /// Wakes the refill task (after a claim, a change of the pools, a drain).
    wake: Arc<tokio::sync::Notify>,
    /// Set by [`Manager::drain_pools`]: no more refills.
    draining: std::sync::atomic::AtomicBool,
}

impl Manager {
    fn pools_state(&self) -> &Pools {
        &self.pools
    }

    /// The configured pools.
    pub fn pool_specs(&self) -> Vec<PoolSpec> {
        self.pools_state()
            .specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the pool of `spec.image` and `spec.shape` to `spec.size` VMs (0 removes it); the
    /// refill task grows or shrinks it in the background.
    pub fn set_pool(&self, spec: PoolSpec) -> Result<()> {
        if spec.size > MAX_POOL_SIZE {
            return Err(CoreError::InvalidInput(format!(
                "a pool holds at most {MAX_POOL_SIZE} VMs"
            )));
        }
        let probe = crate::manager::CreateVm {
            vcpu: spec.shape.vcpu,
            mem_mib: spec.shape.mem_mib,
            disk_size_mib: spec.shape.disk_size_mib,
            ..crate::manager::CreateVm::new(spec.image.clone())
        };
        self.validate_create(&probe)?;
        {
            let mut specs = self
                .pools_state()
                .specs
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            specs.retain(|s| !(s.image == spec.image && s.shape == spec.shape));
            if spec.size > 0 {
                specs.push(spec);
            }
        }
        self.pools_state().wake.notify_one();
        Ok(())
    }

    /// Each configured pool and how many VMs it holds ready.
    pub fn pools(&self) -> Result<Vec<PoolStatus>> {
        let members = self.store().list_pool_vms()?;
        let mut out = Vec::new();
        for s in self.pool_specs() {
            let template = self.pool_template(&s).ok().flatten().map(|(t, _)| t.id);
            let ready = members
                .iter()
                .filter(|(vm, t)| Some(t) == template.as_ref() && vm.status == VmStatus::Paused)
                .count();
            out.push(PoolStatus {
                image: s.image.clone(),
                vcpu: s.shape.vcpu,
                mem_mib: s.shape.mem_mib,
                disk_size_mib: s.shape.disk_size_mib,
                enable_networking: s.shape.enable_networking,
                size: s.size,
                ready,
                template,
            });
        }
        Ok(out)
    }

    /// The current template of a pool's image (as cached) and shape, if built.
    fn pool_template(
        &self,
        s: &PoolSpec,
    ) -> Result<Option<(crate::template::TemplateRecord, std::path::PathBuf)>> {
        let Some(img) = crate::images::find(self.store(), self.storage(), &s.image)? else {
            return Ok(None);
        };
        self.find_template(&img.record.digest, &s.shape)
    }

    /// Takes a ready pool VM of template `template_id` for a create: gives it the create's
    /// name and labels, resumes it and fixes its identity. `None` when the pool has none
    /// ready (the caller restores the template instead).
    pub(crate) async fn claim_from_pool(
        self: &Arc<Self>,
        template_id: &str,
        record: &VmRecord,
    ) -> Result<Option<VmRecord>> {
        let Some(id) =
            self.store()
                .claim_pool_vm(template_id, record, self.config().limits.max_vms)?
        else {
            return Ok(None);
        };
        self.pools_state().wake.notify_one();
        let claimed = async {
            let entry = self
                .entry(&id)
                .ok_or_else(|| CoreError::Conflict("the pool VM is gone".into()))?;
            let _guard = entry.lifecycle.lock().await;
            let handle = entry
                .handle()
                .ok_or_else(|| CoreError::Conflict("the pool VM is gone".into()))?;
            handle.resume().await?;
            let vm = self.get_vm(&id)?;
            // The connection made at restore, or a new one if it closed while paused.
            let agent = {
                let mut slot = entry.agent.lock().await;
                match slot.as_ref() {
                    Some(a) if !a.is_closed() => a.clone(),
                    _ => {
                        let a = crate::agent::AgentClient::connect_handle(
                            handle.as_ref(),
                            Duration::from_secs(10),
                        )
                        .await?;
                        *slot = Some(a.clone());
                        a
                    }
                }
            };
            self.fix_identity(&agent, &vm).await?;
            self.store()
                .set_vm_state(&id, VmStatus::Running, Some(handle.pid()), None)?;
            self.get_vm(&id)
        }
        .await;
        match claimed {
            Ok(vm) => Ok(Some(vm)),
            Err(e) => {
                tracing::warn!(vm = %id, error = %e, "a claimed pool VM failed; restoring instead");
                let _ = self.delete_vm(&id).await;
                Ok(None)
            }
        }
    }

    /// Starts the refill task (once, from `Manager::with_driver`).
    pub(crate) fn spawn_pool_task(self: &Arc<Self>) {
        let mgr = Arc::downgrade(self);
        let wake = self.pools_state().wake.clone();
        tokio::spawn(async move {
            loop {
                let Some(m) = mgr.upgrade() else { return };
                if m.pools_state()
                    .draining
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    return;
                }
                if let Err(e) = m.refill_once().await {
                    tracing::warn!(error = %e, "warm pool refill failed");
                }
                drop(m);
                let woke = wake.notified();
                let _ = tokio::time::timeout(Duration::from_secs(5), woke).await;
            }
        });
    }

    /// One pass: drop pool VMs that no pool wants (stale template, failed, beyond size),
    /// then add VMs one at a time until every pool is full or the memory budget is spent.
    async fn refill_once(self: &Arc<Self>) -> Result<()> {
        let specs = self.pool_specs();
        let mut wanted: BTreeMap<String, (PoolSpec, std::path::PathBuf, usize)> = BTreeMap::new();
        for s in &specs {
            if self.pool_template(s)?.is_none() {
                // The image may not be cached yet: build_template pulls it (or fails).
                if let Err(e) = self.build_template(&s.image, s.shape.clone()).await {
                    tracing::warn!(image = %s.image, error = %e, "cannot build the warm pool's template");
                }
            }
            if let Some((t, dir)) = self.pool_template(s)? {
                wanted.insert(t.id, (s.clone(), dir, s.size));
            }
        }
        let mut have: BTreeMap<String, usize> = BTreeMap::new();
        let mut used_mib: u64 = 0;
        for (vm, t) in self.store().list_pool_vms()? {
            let n = have.entry(t.clone()).or_default();
            let keep = match wanted.get(&t) {
                Some((_, _, size)) => {
                    *n < *size && matches!(vm.status, VmStatus::Paused | VmStatus::Creating)
                }
                None => false,
            };
            if keep {
                *n += 1;
                used_mib += u64::from(vm.mem_mib);
            } else if vm.status != VmStatus::Creating {
                tracing::info!(vm = %vm.id, "removing a pool VM no pool wants");
                let _ = self.delete_pool_vm(&vm.id).await;
            }
        }
        let budget = self.config().warm_pool_mem_mib;
        for (tid, (spec, dir, size)) in &wanted {
            let n = have.get(tid).copied().unwrap_or(0);
            if n >= *size {
                continue;
            }
            if used_mib + u64::from(spec.shape.mem_mib) > budget {
                tracing::debug!(image = %spec.image, budget, "warm pool memory budget reached");
                continue;
            }
            if self
                .pools_state()
                .draining
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return Ok(());
            }
            self.add_pool_vm(spec, tid, dir).await?;
            // One at a time: the next pass (right away) adds the next.
            self.pools_state().wake.notify_one();
            return Ok(());
        }
        Ok(())
    }

    /// Restores one pool VM of template `template_id` and pauses it.
    async fn add_pool_vm(
        self: &Arc<Self>,
        spec: &PoolSpec,
        template_id: &str,
        dir: &std::path::Path,
    ) -> Result<()> {
        let t = self.get_template(template_id)?;
        let id = new_id();
        let at = now();
        let record = VmRecord {
            name: format!("pool-{}", &id[..8]),
            id: id.clone(),
            image: spec.image.clone(),
            image_digest: t.image_digest.clone(),
            status: VmStatus::Creating,
            vcpu: spec.shape.vcpu,
            mem_mib: spec.shape.mem_mib,
            disk_size_mib: spec.shape.disk_size_mib,
            created_at: at,
            updated_at: at,
            pid: None,
            error: None,
            metadata: serde_json::json!({}),
            env_vars: BTreeMap::new(),
            restored_from: Some(format!("template:{template_id}")),
            expires_at: None,
            timeout_action: crate::store::TimeoutAction::Stop,
            vmm: self.backend().0.into(),
            stop_reason: None,
            stopped_at: None,
        };
        let net = if spec.shape.enable_networking {
            crate::network::NetChoice::Enabled
        } else {
            crate::network::NetChoice::None
        };
        let (state, kernel, initramfs, disk) = crate::template::boot_files(dir);
        let boot = Boot::Restore {
            state: &state,
            kernel: &kernel,
            initramfs: &initramfs,
            disk: &disk,
        };
        self.create_in(record, boot, net, Some(template_id)).await?;
        let entry = self
            .entry(&id)
            .ok_or_else(|| CoreError::Conflict("the pool VM is gone".into()))?;
        let _guard = entry.lifecycle.lock().await;
        let paused = async {
            let h = entry
                .handle()
                .ok_or_else(|| CoreError::Conflict("the pool VM is gone".into()))?;
            h.pause().await?;
            self.store()
                .set_vm_state(&id, VmStatus::Paused, Some(h.pid()), None)
        }
        .await;
        drop(_guard);
        if let Err(e) = paused {
            let _ = self.delete_pool_vm(&id).await;
            return Err(e);
        }
        tracing::debug!(vm = %id, image = %spec.image, "pool VM ready");
        Ok(())
    }

    /// Stops and removes a pool VM (still in the pool: a claimed VM is the user's).
    async fn delete_pool_vm(&self, id: &str) -> Result<()> {
        let still_pooled = self
            .store()
            .list_pool_vms()?
            .into_iter()
            .find(|(vm, _)| vm.id == id);
        let Some((vm, _)) = still_pooled else {
            return Ok(());
        };
        self.remove_pool_vm(vm).await
    }

    /// A pool VM is paused: its agent cannot power it off, so its VMM is killed first.
    async fn remove_pool_vm(&self, vm: VmRecord) -> Result<()> {
        if let Some(entry) = self.entry(&vm.id) {
            entry
                .expect_exit
                .store(true, std::sync::atomic::Ordering::Release);
            if let Some(h) = entry.handle() {
                let _ = h.kill().await;
            }
        }
        self.remove_vm(vm).await
    }

    /// Stops the refill task and removes every pool VM (a server shutting down).
    pub async fn drain_pools(&self) {
        self.pools_state()
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        self.pools_state().wake.notify_one();
        for (vm, _) in self.store().list_pool_vms().unwrap_or_default() {
            if let Err(e) = self.remove_pool_vm(vm).await {
                tracing::warn!(error = %e, "could not remove a pool VM");
            }
        }
    }

    /// At start: pool VMs of a previous server are stopped and removed, never re-attached.
    pub(crate) fn sweep_pool_vms(&self) -> Result<()> {
        for (vm, _) in self.store().list_pool_vms()? {
            tracing::info!(vm = %vm.id, "removing a warm-pool VM of the previous server");
            self.purge_orphan(&vm)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_specs_parse() {
        let p = PoolSpec::parse("bandsox/busybox=2").unwrap();
        assert_eq!((p.image.as_str(), p.size), ("bandsox/busybox", 2));
        assert_eq!((p.shape.vcpu, p.shape.mem_mib), (1, 128));
        let p = PoolSpec::parse("alpine:3.19:2x256=3").unwrap();
        assert_eq!(p.image, "alpine:3.19");
        assert_eq!((p.shape.vcpu, p.shape.mem_mib, p.size), (2, 256, 3));
        let p = PoolSpec::parse("alpine:3.19=1").unwrap();
        assert_eq!((p.image.as_str(), p.shape.vcpu), ("alpine:3.19", 1));
        for bad in ["busybox", "=2", "busybox=x", "busybox:1xq=2", "busybox=65"] {
            assert!(PoolSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
