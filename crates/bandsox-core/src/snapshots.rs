//! Snapshots: a consistent copy of a VM (memory, device state and writable disk, all taken
//! while the VM is paused) that any number of new VMs can be restored from.
//!
//! Layout of `snapshots/<id>/`: `state` (VMM memory and device state), `disk.ext4` (copy of
//! the writable disk; a reflink where the filesystem allows), `vmlinux` and `initramfs` (hard
//! links to the boot files the VM ran, so `bandsox init --force` never breaks a restore) and
//! `snapshot.json`. A snapshot is first written to `snapshots/.tmp-<id>/` and renamed into place
//! before its record is inserted, so a crash never leaves a half-written snapshot listed.
//!
//! Names and metadata are labels: renaming never touches files. Restored VMs copy everything
//! they need at restore time, so deleting a snapshot never affects them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{CoreError, Result};
use crate::manager::{check_label, check_metadata, Boot, Manager};
use crate::storage::{new_id, validate_id};
use crate::store::{now, SnapshotRecord, TimeoutAction, VmRecord, VmStatus};

const STATE_FILE: &str = "state";
const DISK_FILE: &str = "disk.ext4";
const KERNEL_FILE: &str = "vmlinux";
const INITRAMFS_FILE: &str = "initramfs";

/// Options of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub name: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub env_vars: Option<std::collections::BTreeMap<String, String>>,
    /// Networking for the restored VM (default true). A snapshot of a VM with a NIC keeps
    /// its NIC either way (the saved devices must match); off means the NIC leads nowhere.
    pub enable_networking: Option<bool>,
}

fn snapshot_not_found(id: &str) -> CoreError {
    CoreError::NotFound {
        kind: "snapshot",
        id: id.to_owned(),
    }
}

impl Manager {
    fn snapshots_dir(&self) -> PathBuf {
        self.storage().root().join("snapshots")
    }

    fn snapshot_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id).map_err(|_| snapshot_not_found(id))?;
        Ok(self.snapshots_dir().join(id))
    }

    /// Snapshots a running or paused VM. The VM is paused for the whole capture (memory,
    /// devices and disk come from the same instant) and resumed afterwards if it was running.
    /// A stopped VM cannot be snapshotted (409).
    pub async fn snapshot_vm(
        self: &Arc<Self>,
        vm_id: &str,
        name: &str,
        metadata: Option<serde_json::Value>,
    ) -> Result<SnapshotRecord> {
        check_label(name)?;
        let metadata = metadata.unwrap_or_else(|| serde_json::json!({}));
        check_metadata(&metadata)?;
        let vm = self.get_vm(vm_id)?;
        let entry = self.entry(vm_id).ok_or_else(|| not_live(&vm))?;
        let _guard = entry.lifecycle.lock().await;
        let vm = self.get_vm(vm_id)?;
        if !matches!(vm.status, VmStatus::Running | VmStatus::Paused) {
            return Err(not_live(&vm));
        }
        let handle = entry.handle().ok_or_else(|| not_live(&vm))?;
        let was_running = vm.status == VmStatus::Running;

        let id = new_id();
        let tmp = self.snapshots_dir().join(format!(".tmp-{id}"));
        std::fs::create_dir_all(&tmp)?;
        // Hold the agent connection's writer so no host frame is cut in half by the pause.
        let agent = entry.agent.lock().await.clone();
        let writer_guard = match &agent {
            Some(a) => Some(a.write_lock().await),
            None => None,
        };
        if was_running {
            handle.pause().await?;
        }
        let captured = async {
            handle.save_state(&tmp.join(STATE_FILE)).await?;
            let vm_dir = self.storage().vm_dir(vm_id)?;
            crate::sys::copy_file_sparse(
                &vm_dir.join(crate::manager::DATA_DISK),
                &tmp.join(DISK_FILE),
            )?;
            Ok::<_, CoreError>(())
        }
        .await;
        let resumed = if was_running {
            handle.resume().await
        } else {
            Ok(())
        };
        drop(writer_guard);
        if let Err(e) = captured.and(resumed.map_err(CoreError::from)) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }

        let finished = (|| {
            let (kernel, initramfs) = bandsox_image::assets::kernel_paths(self.storage().root())?;
            // Durable before it becomes visible: the rename below publishes the snapshot.
            for f in [STATE_FILE, DISK_FILE] {
                std::fs::File::open(tmp.join(f))?.sync_all()?;
            }
            link_or_copy(&kernel, &tmp.join(KERNEL_FILE))?;
            link_or_copy(&initramfs, &tmp.join(INITRAMFS_FILE))?;
            let record = SnapshotRecord {
                id: id.clone(),
                name: name.to_owned(),
                source_vm_id: vm.id.clone(),
                image: vm.image.clone(),
                image_digest: vm.image_digest.clone(),
                vcpu: vm.vcpu,
                mem_mib: vm.mem_mib,
                disk_size_mib: vm.disk_size_mib,
                size_bytes: allocated_bytes(&tmp),
                created_at: now(),
                metadata,
                env_vars: vm.env_vars.clone(),
            };
            let json = serde_json::to_vec_pretty(&record)
                .map_err(|e| CoreError::Io(std::io::Error::other(e)))?;
            std::fs::write(tmp.join("snapshot.json"), json)?;
            std::fs::rename(&tmp, self.snapshot_dir(&id)?)?;
            self.store().insert_snapshot(&record)?;
            self.set_snapshot_nic(&record.id, self.vm_network(vm_id)?.is_some())?;
            Ok::<_, CoreError>(record)
        })();
        if finished.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            if let Ok(dir) = self.snapshot_dir(&id) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        finished
    }

    pub fn get_snapshot(&self, id: &str) -> Result<SnapshotRecord> {
        validate_id(id).map_err(|_| snapshot_not_found(id))?;
        self.store()
            .get_snapshot(id)?
            .ok_or_else(|| snapshot_not_found(id))
    }

    /// Snapshots, newest first; the Dockerfile step cache's own are left out.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        Ok(self
            .store()
            .list_snapshots()?
            .into_iter()
            .filter(|s| !crate::dockerfile::is_cache_snapshot(s))
            .collect())
    }

    /// Renames a snapshot and/or replaces its metadata (labels only; files are untouched).
    pub fn update_snapshot(
        &self,
        id: &str,
        name: Option<&str>,
        metadata: Option<&serde_json::Value>,
    ) -> Result<SnapshotRecord> {
        if let Some(n) = name {
            check_label(n)?;
        }
        if let Some(m) = metadata {
            check_metadata(m)?;
        }
        self.get_snapshot(id)?;
        self.store().update_snapshot_labels(id, name, metadata)?;
        self.get_snapshot(id)
    }

    /// Deletes a snapshot's record and files. VMs restored from it are unaffected.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.get_snapshot(id)?;
        self.store().delete_snapshot(id)?;
        match std::fs::remove_dir_all(self.snapshot_dir(id)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Starts a new VM from a snapshot. Many restores of one snapshot may run at once: each
    /// gets its own id, directory, sockets and disk copy. The guest clock is set to the host's.
    pub async fn restore_snapshot(
        self: &Arc<Self>,
        id: &str,
        opts: RestoreOptions,
    ) -> Result<VmRecord> {
        if let Some(n) = &opts.name {
            check_label(n)?;
        }
        if let Some(m) = &opts.metadata {
            check_metadata(m)?;
        }
        let snap = self.get_snapshot(id)?;
        let dir = self.snapshot_dir(id)?;
        for f in [STATE_FILE, DISK_FILE, KERNEL_FILE, INITRAMFS_FILE] {
            if !dir.join(f).is_file() {
                return Err(CoreError::Conflict(format!(
                    "snapshot {id} is damaged: {f} is missing; delete it"
                )));
            }
        }
        // Firecracker writes the guest memory next to the state (`state.mem`); QEMU does not.
        let written_by = if dir.join(format!("{STATE_FILE}.mem")).is_file() {
            "firecracker"
        } else {
            "qemu"
        };
        let backend = self.backend().0;
        if written_by != backend {
            return Err(CoreError::Conflict(format!(
                "snapshot {id} was taken under {written_by}; this server runs {backend}"
            )));
        }
        self.check_free_space(snap.disk_size_mib)?;
        let vm_id = new_id();
        let t = now();
        let record = VmRecord {
            id: vm_id.clone(),
            name: opts.name.unwrap_or_else(|| format!("from-{}", snap.name)),
            image: snap.image.clone(),
            image_digest: snap.image_digest.clone(),
            status: VmStatus::Creating,
            vcpu: snap.vcpu,
            mem_mib: snap.mem_mib,
            disk_size_mib: snap.disk_size_mib,
            created_at: t,
            updated_at: t,
            pid: None,
            error: None,
            metadata: opts.metadata.unwrap_or_else(|| serde_json::json!({})),
            env_vars: opts.env_vars.unwrap_or(snap.env_vars),
            restored_from: Some(snap.id.clone()),
            expires_at: None,
            timeout_action: TimeoutAction::Stop,
            vmm: self.backend().0.into(),
            stop_reason: None,
            stopped_at: None,
        };
        let boot = Boot::Restore {
            state: &dir.join(STATE_FILE),
            kernel: &dir.join(KERNEL_FILE),
            initramfs: &dir.join(INITRAMFS_FILE),
            disk: &dir.join(DISK_FILE),
        };
        use crate::network::NetChoice;
        let net = match (
            self.snapshot_has_nic(&snap.id)?,
            opts.enable_networking.unwrap_or(true),
        ) {
            (false, _) => NetChoice::None,
            (true, true) => NetChoice::Enabled,
            (true, false) => NetChoice::Isolated,
        };
        self.create_from(record, boot, net).await
    }

    /// Removes snapshot directories that a crash left half-written, and directories without
    /// a record.
    pub(crate) fn sweep_snapshot_dirs(&self) -> Result<()> {
        let Ok(rd) = std::fs::read_dir(self.snapshots_dir()) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let orphan = name.starts_with(".tmp-") || self.store().get_snapshot(&name)?.is_none();
            if orphan {
                tracing::info!(dir = %e.path().display(), "removing incomplete snapshot directory");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

fn not_live(vm: &VmRecord) -> CoreError {
    CoreError::Conflict(format!(
        "VM {} is {}; only running or paused VMs can be snapshotted",
        vm.id, vm.status
    ))
}

fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(drop))
}

/// Bytes allocated on disk by the files of `dir` (sparse files count what they use).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}
