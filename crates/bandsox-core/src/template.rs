//! Templates: a VM of one image and one shape booted to agent-ready, paused and saved, so
//! that `create` of that image and shape is a restore (plus an identity fix-up) instead of a
//! cold boot.
//!
//! A template is keyed by everything the saved state depends on: the backend, the image
//! digest, vCPUs, memory, disk size, networking on/off, and the kernel and initramfs files
//! (which carry the agent). Change any of them and the key changes, so a template is never
//! used for another shape, and a re-pulled image, `bandsox init --force` or a new agent
//! leads to a new template (the superseded one is removed when the new one is built).
//!
//! Layout of `templates/<key>/`: `state`, `disk.ext4` (the writable disk as the template VM
//! left it: freshly made, nearly empty and sparse), `vmlinux` and `initramfs` (hard links),
//! `template.json`. A template is built in `templates/.build-<id>/` (with the build VMM's pid
//! in `pid`) and renamed into place, so a crash never leaves a half-made template usable;
//! [`Manager::sweep_template_dirs`] removes what a crash left behind, VMM included.
//!
//! The template VM is not a user VM: it has no record in `vms`, no lease, no watcher. It
//! boots in its own isolated network namespace (when the shape has a NIC) and is killed as
//! soon as its state is saved.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::agent::AgentClient;
use crate::error::{CoreError, Result};
use crate::manager::Manager;
use crate::storage::new_id;
use crate::store::now;

const STATE_FILE: &str = "state";
const DISK_FILE: &str = "disk.ext4";
const KERNEL_FILE: &str = "vmlinux";
const INITRAMFS_FILE: &str = "initramfs";
const RECORD_FILE: &str = "template.json";
const BUILD_PREFIX: &str = ".build-";

/// A stored template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    /// The key: 32 hex digits derived from everything the saved state depends on.
    pub id: String,
    /// The image reference it was built for (a label; the digest is what counts).
    pub image: String,
    pub image_digest: String,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    pub enable_networking: bool,
    pub vmm: String,
    /// Identity of the kernel and initramfs files it was built with.
    pub kernel: String,
    pub initramfs: String,
    pub created_at: f64,
    /// Milliseconds from build start to the saved state.
    pub build_ms: u64,
    /// Bytes allocated on disk.
    pub size_bytes: u64,
}

/// The shape a template is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateShape {
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    pub enable_networking: bool,
}

/// Build bookkeeping of one manager.
#[derive(Default)]
pub(crate) struct Templates {
    /// Keys being built (a second request for the same key waits for nothing: it is skipped).
    building: std::sync::Mutex<HashSet<String>>,
    /// One build at a time: a build is a cold boot and competes with user VMs for CPU.
    build_lock: tokio::sync::Mutex<()>,
}

fn template_not_found(id: &str) -> CoreError {
    CoreError::NotFound {
        kind: "template",
        id: id.to_owned(),
    }
}

fn check_template_id(id: &str) -> Result<()> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(template_not_found(id))
    }
}

/// Device, inode, size and modification time: changes whenever the file is replaced.
fn file_identity(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(format!(
        "{:x}-{:x}-{:x}-{:x}.{:x}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// A fresh machine id: 128 random bits as 32 lowercase hex digits (systemd's format).
pub(crate) fn new_machine_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

struct BuildGuard<'a> {
    set: &'a std::sync::Mutex<HashSet<String>>,
    key: String,
}

impl Drop for BuildGuard<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Manager {
    fn templates_dir(&self) -> PathBuf {
        self.storage().root().join("templates")
    }

    /// The key of a template for this image digest and shape with the current kernel,
    /// initramfs and backend, and the two file identities.
    fn template_key(
        &self,
        digest: &str,
        shape: &TemplateShape,
    ) -> Result<(String, String, String)> {
        let (kernel, initramfs) = bandsox_image::assets::kernel_paths(self.storage().root())?;
        let (k, i) = (file_identity(&kernel)?, file_identity(&initramfs)?);
        // The nameservers reach the guest on the kernel command line at boot: a template
        // booted with others would hand its clones a stale /etc/resolv.conf.
        let dns: Vec<String> = self.config().dns.iter().map(|a| a.to_string()).collect();
        let text = format!(
            "bandsox-template-v2\n{}\n{digest}\n{}\n{}\n{}\n{}\n{k}\n{i}\n{}\n",
            self.backend().0,
            shape.vcpu,
            shape.mem_mib,
            shape.disk_size_mib,
            shape.enable_networking,
            dns.join(",")
        );
        let key = hex::encode(&Sha256::digest(text.as_bytes())[..16]);
        Ok((key, k, i))
    }

    fn read_template(&self, dir: &Path) -> Option<TemplateRecord> {
        let rec: TemplateRecord =
            serde_json::from_slice(&std::fs::read(dir.join(RECORD_FILE)).ok()?).ok()?;
        let complete = [STATE_FILE, DISK_FILE, KERNEL_FILE, INITRAMFS_FILE]
            .iter()
            .all(|f| dir.join(f).is_file());
        (complete && dir.file_name()? == rec.id.as_str()).then_some(rec)
    }

    /// Every complete template, oldest first.
    pub fn list_templates(&self) -> Result<Vec<TemplateRecord>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.templates_dir()) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if check_template_id(&name).is_err() {
                continue;
            }
            if let Some(rec) = self.read_template(&e.path()) {
                out.push(rec);
            }
        }
        out.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        Ok(out)
    }

    pub fn get_template(&self, id: &str) -> Result<TemplateRecord> {
        check_template_id(id)?;
        self.read_template(&self.templates_dir().join(id))
            .ok_or_else(|| template_not_found(id))
    }

    /// Whether a template is still current (kernel and initramfs unchanged). A stale one is
    /// never used; the next build for its image and shape replaces it.
    pub fn template_is_current(&self, t: &TemplateRecord) -> bool {
        let shape = TemplateShape {
            vcpu: t.vcpu,
            mem_mib: t.mem_mib,
            disk_size_mib: t.disk_size_mib,
            enable_networking: t.enable_networking,
        };
        self.template_key(&t.image_digest, &shape)
            .is_ok_and(|(k, _, _)| k == t.id)
    }

    /// Removes a template. VMs created from it are unaffected (their disk is their own copy
    /// and the VMM has read the state).
    pub fn delete_template(&self, id: &str) -> Result<()> {
        self.get_template(id)?;
        match std::fs::remove_dir_all(self.templates_dir().join(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The current template for `digest` and `shape`, if one is built: the paths to boot a
    /// clone from.
    pub(crate) fn find_template(
        &self,
        digest: &str,
        shape: &TemplateShape,
    ) -> Result<Option<(TemplateRecord, PathBuf)>> {
        let (key, _, _) = self.template_key(digest, shape)?;
        let dir = self.templates_dir().join(&key);
        Ok(self.read_template(&dir).map(|t| (t, dir)))
    }

    /// Builds the template of `image` and `shape` in the background unless it exists or is
    /// being built. Failures are logged: the create that asked has already succeeded.
    pub(crate) fn spawn_template_build(
        self: &Arc<Self>,
        image: String,
        digest: String,
        shape: TemplateShape,
    ) {
        let Ok((key, _, _)) = self.template_key(&digest, &shape) else {
            return;
        };
        if self.templates_dir().join(&key).is_dir()
            || self
                .templates_state()
                .building
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key)
        {
            return;
        }
        let mgr = Arc::downgrade(self);
        let delay = self.config().template_build_delay;
        tokio::spawn(async move {
            // The new VM's first commands go first; a manager dropped meanwhile builds nothing.
            tokio::time::sleep(delay).await;
            let Some(mgr) = mgr.upgrade() else { return };
            match mgr.build_template_for(&image, &digest, &shape).await {
                Ok(t) => {
                    tracing::info!(template = %t.id, image = %image, build_ms = t.build_ms, "template built")
                }
                Err(e) => tracing::warn!(image = %image, error = %e, "template build failed"),
            }
        });
    }

    /// Builds (or returns the existing) template of an image reference and shape.
    pub async fn build_template(
        self: &Arc<Self>,
        image: &str,
        shape: TemplateShape,
    ) -> Result<TemplateRecord> {
        let probe = crate::manager::CreateVm {
            vcpu: shape.vcpu,
            mem_mib: shape.mem_mib,
            disk_size_mib: shape.disk_size_mib,
            ..crate::manager::CreateVm::new(image)
        };
        self.validate_create(&probe)?;
        bandsox_image::assets::kernel_paths(self.storage().root())?;
        let resolved = crate::images::resolve_for_create(
            self.store(),
            self.storage(),
            image,
            shape.disk_size_mib,
            false,
        )
        .await?;
        self.build_template_for(image, &resolved.record.digest, &shape)
            .await
    }

    async fn build_template_for(
        self: &Arc<Self>,
        image: &str,
        digest: &str,
        shape: &TemplateShape,
    ) -> Result<TemplateRecord> {
        let (key, _, _) = self.template_key(digest, shape)?;
        let state = self.templates_state();
        {
            let mut building = state.building.lock().unwrap_or_else(|p| p.into_inner());
            if !building.insert(key.clone()) {
                return Err(CoreError::Conflict(format!(
                    "template {key} is being built"
                )));
            }
        }
        let _building = BuildGuard {
            set: &state.building,
            key: key.clone(),
        };
        let _one = state.build_lock.lock().await;
        // Built meanwhile (or before): nothing to do.
        if let Ok(t) = self.get_template(&key) {
            return Ok(t);
        }
        let (key, kernel_id, initramfs_id) = self.template_key(digest, shape)?;
        let build_id = new_id();
        let tmp = self
            .templates_dir()
            .join(format!("{BUILD_PREFIX}{build_id}"));
        std::fs::create_dir_all(&tmp)?;
        let started = Instant::now();
        let built = self.boot_and_save(&build_id, &tmp, digest, shape).await;
        let net_id = build_id.clone();
        if shape.enable_networking {
            let _ = tokio::task::spawn_blocking(move || bandsox_net::teardown(&net_id, None)).await;
        }
        let finished = built.and_then(|(kernel, initramfs)| {
            std::fs::File::open(tmp.join(STATE_FILE))?.sync_all()?;
            std::fs::File::open(tmp.join(DISK_FILE))?.sync_all()?;
            link_or_copy(&kernel, &tmp.join(KERNEL_FILE))?;
            link_or_copy(&initramfs, &tmp.join(INITRAMFS_FILE))?;
            for f in ["pid", "console.log", "agent.sock", "qmp.sock"] {
                let _ = std::fs::remove_file(tmp.join(f));
            }
            let rec = TemplateRecord {
                id: key.clone(),
                image: image.to_owned(),
                image_digest: digest.to_owned(),
                vcpu: shape.vcpu,
                mem_mib: shape.mem_mib,
                disk_size_mib: shape.disk_size_mib,
                enable_networking: shape.enable_networking,
                vmm: self.backend().0.into(),
                kernel: kernel_id,
                initramfs: initramfs_id,
                created_at: now(),
                build_ms: started.elapsed().as_millis() as u64,
                size_bytes: allocated_bytes(&tmp),
            };
            let json = serde_json::to_vec_pretty(&rec)
                .map_err(|e| CoreError::Io(std::io::Error::other(e)))?;
            std::fs::write(tmp.join(RECORD_FILE), json)?;
            std::fs::rename(&tmp, self.templates_dir().join(&key))?;
            Ok(rec)
        });
        if finished.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let rec = finished?;
        // Superseded: the same image reference and shape under an older digest, kernel or
        // initramfs.
        for old in self.list_templates()? {
            let same_shape = old.image == rec.image
                && old.vcpu == rec.vcpu
                && old.mem_mib == rec.mem_mib
                && old.disk_size_mib == rec.disk_size_mib
                && old.enable_networking == rec.enable_networking;
            if old.id != rec.id && (same_shape || !self.template_is_current(&old)) {
                tracing::info!(template = %old.id, "removing superseded template");
                let _ = std::fs::remove_dir_all(self.templates_dir().join(&old.id));
            }
        }
        Ok(rec)
    }

    /// Cold-boots the template VM in `dir`, waits for its agent, pauses it and saves its
    /// state; the VMM is killed whatever happens. Returns the kernel and initramfs it ran.
    async fn boot_and_save(
        &self,
        build_id: &str,
        dir: &Path,
        digest: &str,
        shape: &TemplateShape,
    ) -> Result<(PathBuf, PathBuf)> {
        let (kernel, initramfs) = bandsox_image::assets::kernel_paths(self.storage().root())?;
        crate::manager::make_data_disk(&dir.join(DISK_FILE), shape.disk_size_mib)?;
        if shape.enable_networking {
            let net = bandsox_net::VmNet {
                vm_id: build_id.to_owned(),
                lease: None,
            };
            tokio::task::spawn_blocking(move || bandsox_net::setup(&net))
                .await
                .map_err(|e| CoreError::Network(e.to_string()))?
                .map_err(|e| CoreError::Network(e.to_string()))?;
        }
        let spec = self.machine_spec(
            &crate::manager::Machine {
                id: build_id,
                image_digest: digest,
                image: "template",
                vcpu: shape.vcpu,
                mem_mib: shape.mem_mib,
                networked: shape.enable_networking,
                hostname: "bandsox-template",
            },
            dir.to_path_buf(),
            kernel.clone(),
            initramfs.clone(),
        )?;
        let handle = self.driver().spawn(&spec).await?;
        // Killed if this future is dropped half-way (the server's runtime shutting down):
        // the build VMM is no user VM and must not outlive its server.
        let mut guard = KillOnDrop(Some(handle.pid()));
        std::fs::write(dir.join("pid"), handle.pid().to_string())?;
        // Background work: user VMs get the CPU first.
        crate::sys::lower_priority(handle.pid());
        let saved = async {
            let timeout = self.boot_timeout();
            let agent = tokio::select! {
                r = AgentClient::connect_handle(handle.as_ref(), timeout) => r.map_err(|e| CoreError::BootTimeout { timeout_s: timeout.as_secs(), detail: e.to_string() })?,
                exit = handle.wait() => return Err(CoreError::BootTimeout {
                    timeout_s: timeout.as_secs(),
                    detail: format!("the template VMM exited during boot ({exit})"),
                }),
            };
            agent.ping(Duration::from_secs(10)).await?;
            // Threads the VMM started during boot.
            crate::sys::lower_priority(handle.pid());
            // No host frame may be cut in half by the pause.
            let writer = agent.write_lock().await;
            handle.pause().await?;
            handle.save_state(&dir.join(STATE_FILE)).await?;
            drop(writer);
            Ok::<_, CoreError>(())
        }
        .await;
        let _ = handle.kill().await;
        guard.0 = None;
        saved.map(|()| (kernel, initramfs))
    }

    /// Removes what a crash left of template builds: the build VMM (only if its command
    /// line names the build directory), its network namespace and the directory.
    pub(crate) fn sweep_template_dirs(&self) {
        let Ok(rd) = std::fs::read_dir(self.templates_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(build_id) = name.strip_prefix(BUILD_PREFIX) else {
                if check_template_id(&name).is_err() || self.read_template(&e.path()).is_none() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
                continue;
            };
            let dir = e.path();
            if let Some(pid) = std::fs::read_to_string(dir.join("pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                let needle = dir.as_os_str().as_encoded_bytes().to_vec();
                let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle));
                if ours {
                    bandsox_vmm::kill_process(pid);
                    for _ in 0..100 {
                        if !bandsox_vmm::process_alive(pid) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            if crate::storage::validate_id(build_id).is_ok() {
                let _ = bandsox_net::teardown(build_id, None);
            }
            tracing::info!(dir = %dir.display(), "removing incomplete template build");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// State, kernel, initramfs and disk of the template in `dir`.
pub(crate) fn boot_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    (
        dir.join(STATE_FILE),
        dir.join(KERNEL_FILE),
        dir.join(INITRAMFS_FILE),
        dir.join(DISK_FILE),
    )
}

/// SIGKILLs a build VMM when dropped while armed.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            bandsox_vmm::kill_process(pid);
        }
    }
}

fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(drop))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_ids_are_32_hex_digits() {
        assert!(check_template_id("0123456789abcdef0123456789abcdef").is_ok());
        for bad in ["", "../x", "0123456789ABCDEF0123456789abcdef", ".build-x"] {
            assert!(check_template_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn machine_ids_are_fresh_and_well_formed() {
        let (a, b) = (new_machine_id(), new_machine_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
