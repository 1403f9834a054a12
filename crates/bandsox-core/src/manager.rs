//! The VM manager: creates, drives and removes VMs, and keeps SQLite in step with reality.
//!
//! Each VM has one [`VmEntry`]: its lifecycle lock (so create/stop/delete never interleave on
//! one VM), its VMM handle, its agent connection and a readiness signal that calls on a
//! booting VM wait for. A watcher task per VM notices a VMM that dies under a running VM and
//! marks it `failed`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bandsox_protocol::{ExecRequest, ReplyBody, Request};
use bandsox_vmm::{Disk, VmHandle, VmSpec, VmmDriver};
use tokio::sync::{watch, Mutex};

use crate::agent::{AgentClient, ExecOutput};
use crate::backend::VmmChoice;
use crate::error::{CoreError, Result};
use crate::images;
use crate::storage::{new_id, validate_id, Storage};
use crate::store::{now, StopReason, Store, VmRecord, VmStatus};

/// File name of a VM's writable disk inside its directory.
pub(crate) const DATA_DISK: &str = "disk.ext4";

/// How a VM comes up.
pub(crate) enum Boot<'a> {
    /// A fresh kernel boot of its disks.
    Cold,
    /// From a snapshot: saved state, the kernel and initramfs it was saved with, and the disk
    /// to copy as the VM's writable disk.
    Restore {
        state: &'a std::path::Path,
        kernel: &'a std::path::Path,
        initramfs: &'a std::path::Path,
        disk: &'a std::path::Path,
    },
}

/// Limits on create parameters.
pub const MAX_VCPU: u32 = 32;
pub const MIN_MEM_MIB: u32 = 64;
pub const MAX_MEM_MIB: u32 = 65_536;
pub const MIN_DISK_MIB: u64 = 64;
pub const MAX_DISK_MIB: u64 = 1 << 20;
/// Longest accepted VM name (names are labels, never paths).
pub const MAX_NAME_LEN: usize = 256;

/// A label (VM or snapshot name) given on rename or snapshot: 1 to [`MAX_NAME_LEN`] bytes
/// without NUL. Any other text is fine: labels never reach a path.
pub(crate) fn check_label(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(CoreError::InvalidInput(format!(
            "names are 1 to {MAX_NAME_LEN} bytes without NUL"
        )));
    }
    Ok(())
}

/// Metadata must be a JSON object.
pub(crate) fn check_metadata(m: &serde_json::Value) -> Result<()> {
    if !m.is_object() {
        return Err(CoreError::InvalidInput(
            "metadata must be a JSON object".into(),
        ));
    }
    Ok(())
}

/// Settings of a [`Manager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub storage: Storage,
    /// How long a VM may take from VMM start to agent hello.
    pub boot_timeout: Duration,
    pub limits: Limits,
    /// Nameservers written to guests' `/etc/resolv.conf` (`bandsox serve --dns`).
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Build a template in the background after a cold create, so the next create of that
    /// image and shape is a restore. `bandsox serve` turns it on unless
    /// `--no-auto-template` / `BANDSOX_AUTO_TEMPLATE=0`; off here, for embedders and tests
    /// that count VMMs. Templates that exist are used either way.
    pub auto_template: bool,
    /// How long a background build waits after the cold create that asked for it, so the
    /// new VM's first commands do not compete with the build's boot for CPU.
    pub template_build_delay: Duration,
    /// Warm pools kept from the start (`bandsox serve --warm-pool`).
    pub warm_pools: Vec<crate::pool::PoolSpec>,
    /// Most memory all warm-pool VMs together may be given, in MiB.
    pub warm_pool_mem_mib: u64,
}

impl ManagerConfig {
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            boot_timeout: Duration::from_secs(90),
            limits: Limits::default(),
            dns: bandsox_net::default_resolvers(),
            auto_template: false,
            template_build_delay: Duration::from_secs(2),
            warm_pools: Vec::new(),
            warm_pool_mem_mib: 2048,
        }
    }
}

/// What one server allows (`bandsox serve --max-vcpu ...`). Each is capped by the hard
/// bounds above; a request beyond a limit is refused before anything is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_vcpu: u32,
    pub max_mem_mib: u32,
    pub max_disk_mib: u64,
    /// VMs that may exist at once (any state).
    pub max_vms: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_vcpu: MAX_VCPU,
            max_mem_mib: MAX_MEM_MIB,
            max_disk_mib: MAX_DISK_MIB,
            max_vms: 256,
        }
    }
}

/// Parameters of a new VM.
#[derive(Debug, Clone)]
pub struct CreateVm {
    pub image: String,
    pub name: Option<String>,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    pub env_vars: BTreeMap<String, String>,
    pub metadata: serde_json::Value,
    /// Seconds until `timeout_action` runs; 0 = never.
    pub timeout_s: u64,
    pub timeout_action: crate::store::TimeoutAction,
    /// Re-pull (registry images) and rebuild the base disk even when cached.
    pub force_rebuild: bool,
    /// A NIC with NATed egress, reachable from the host (BandSox default: true).
    pub enable_networking: bool,
    /// Use (and build) the template of this image and shape: `None` follows the server's
    /// setting; `Some(false)` always cold boots and builds nothing.
    pub template: Option<bool>,
}

impl CreateVm {
    /// BandSox's defaults for `image`.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            name: None,
            vcpu: 1,
            mem_mib: 128,
            disk_size_mib: 4096,
            env_vars: BTreeMap::new(),
            metadata: serde_json::json!({}),
            timeout_s: 0,
            timeout_action: crate::store::TimeoutAction::Stop,
            force_rebuild: false,
            enable_networking: true,
            template: None,
        }
    }

    fn validate(&self, limits: &Limits) -> Result<()> {
        let max_vcpu = limits.max_vcpu.min(MAX_VCPU);
        if self.vcpu == 0 || self.vcpu > max_vcpu {
            return Err(CoreError::InvalidInput(format!(
                "vcpu must be 1 to {max_vcpu}, got {}",
                self.vcpu
            )));
        }
        let max_mem = limits.max_mem_mib.min(MAX_MEM_MIB);
        if !(MIN_MEM_MIB..=max_mem).contains(&self.mem_mib) {
            return Err(CoreError::InvalidInput(format!(
                "mem_mib must be {MIN_MEM_MIB} to {max_mem}, got {}",
                self.mem_mib
            )));
        }
        let max_disk = limits.max_disk_mib.min(MAX_DISK_MIB);
        if !(MIN_DISK_MIB..=max_disk).contains(&self.disk_size_mib) {
            return Err(CoreError::InvalidInput(format!(
                "disk_size_mib must be {MIN_DISK_MIB} to {max_disk}, got {}",
                self.disk_size_mib
            )));
        }
        if let Some(name) = &self.name {
            if name.len() > MAX_NAME_LEN || name.contains('\0') {
                return Err(CoreError::InvalidInput(format!(
                    "name must be at most {MAX_NAME_LEN} bytes without NUL"
                )));
            }
        }
        for (k, v) in &self.env_vars {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(CoreError::InvalidInput(format!(
                    "invalid environment variable name `{}`",
                    crate::error::short(k)
                )));
            }
            // A NUL cannot reach a program's environment: every exec would fail.
            if v.contains('\0') {
                return Err(CoreError::InvalidInput(format!(
                    "the value of environment variable `{}` contains a NUL byte",
                    crate::error::short(k)
                )));
            }
        }
        if self.timeout_s > crate::ttl::MAX_TIMEOUT_S {
            return Err(CoreError::InvalidInput(format!(
                "timeout must be at most {} seconds",
                crate::ttl::MAX_TIMEOUT_S
            )));
        }
        check_metadata(&self.metadata)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Readiness {
    Booting,
    Ready,
    Gone(String),
}

pub(crate) struct VmEntry {
    pub(crate) id: String,
    /// Serialises lifecycle operations on this VM.
    pub(crate) lifecycle: Mutex<()>,
    pub(crate) handle: RwLock<Option<Arc<dyn VmHandle>>>,
    pub(crate) agent: Mutex<Option<AgentClient>>,
    pub(crate) ready: watch::Sender<Readiness>,
    /// Set before the manager itself stops the VMM, so the watcher does not report a failure.
    pub(crate) expect_exit: AtomicBool,
}

impl VmEntry {
    pub(crate) fn handle(&self) -> Option<Arc<dyn VmHandle>> {
        self.handle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_handle(&self, h: Option<Arc<dyn VmHandle>>) {
        *self.handle.write().unwrap_or_else(|p| p.into_inner()) = h;
    }
}

/// Owns every VM of one storage root.
pub struct Manager {
    storage: Storage,
    store: Store,
    driver: Arc<dyn VmmDriver>,
    config: ManagerConfig,
    vms: RwLock<HashMap<String, Arc<VmEntry>>>,
    /// Held while a new VM is counted against `max_vms` and recorded.
    admission: std::sync::Mutex<()>,
    templates: crate::template::Templates,
    pub(crate) pools: crate::pool::Pools,
    /// This process owns the storage root while the manager lives.
    _lock: crate::storage::StorageLock,
}

impl Manager {
    /// Opens the storage root with the backend `BANDSOX_VMM` names (default `auto`:
    /// Firecracker where it can run, else QEMU) and reconciles recorded VMs with the
    /// processes that actually exist.
    pub async fn open(config: ManagerConfig) -> Result<Arc<Self>> {
        let driver = crate::backend::select_driver(VmmChoice::from_env()?, &config.storage)?;
        Self::with_driver(config, driver).await
    }

    /// Like [`Manager::open`] with an explicit backend.
    pub async fn with_driver(
        config: ManagerConfig,
        driver: Arc<dyn VmmDriver>,
    ) -> Result<Arc<Self>> {
        let storage = config.storage.clone();
        if !storage.db_path().exists() {
            return Err(CoreError::NotInitialised(format!(
                "storage {} is not initialised",
                storage.root().display()
            )));
        }
        // Before recovery: a second server must not touch the first one's VMs.
        let lock = storage.lock("serve")?;
        crate::error::set_storage_root(storage.root());
        let store = Store::open(&storage.db_path())?;
        let mgr = Arc::new(Self {
            storage,
            store,
            driver,
            config,
            vms: RwLock::default(),
            admission: std::sync::Mutex::default(),
            templates: Default::default(),
            pools: Default::default(),
            _lock: lock,
        });
        mgr.recover().await?;
        mgr.spawn_timeout_task();
        for spec in mgr.config.warm_pools.clone() {
            mgr.set_pool(spec)?;
        }
        mgr.spawn_pool_task();
        Ok(mgr)
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bounds and limits creates are checked against.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    pub(crate) fn templates_state(&self) -> &crate::template::Templates {
        &self.templates
    }

    pub(crate) fn boot_timeout(&self) -> Duration {
        self.config.boot_timeout
    }

    pub(crate) fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// The VMM backend.
    pub(crate) fn driver(&self) -> &Arc<dyn VmmDriver> {
        &self.driver
    }

    /// Backend and accelerator names.
    pub fn backend(&self) -> (&'static str, &'static str) {
        (self.driver.name(), self.driver.accelerator())
    }

    /// VMs left `creating`, `running` or `paused` by a previous server process: their VMM
    /// processes are stopped and their records settled, so nothing half-made survives.
    /// (Re-attaching to VMs that still run comes with the lifecycle work.)
    async fn recover(self: &Arc<Self>) -> Result<()> {
        self.sweep_snapshot_dirs()?;
        self.sweep_template_dirs();
        self.sweep_pool_vms()?;
        for vm in self.store.list_vms()? {
            match vm.status {
                VmStatus::Stopped | VmStatus::Failed => {
                    if self.orphan_alive(&vm) {
                        // A VMM left running after a failed re-attach keeps its network.
                        continue;
                    }
                    // A crash may have left its namespace behind.
                    self.net_down_blocking(&vm.id);
                    continue;
                }
                VmStatus::Creating => {
                    self.kill_orphan(&vm);
                    self.net_down_blocking(&vm.id);
                    let _ = std::fs::remove_dir_all(self.storage.vm_dir(&vm.id)?);
                    self.store.delete_vm(&vm.id)?;
                }
                VmStatus::Running | VmStatus::Paused => {
                    if let Err(e) = self.reattach(&vm).await {
                        self.unregister(&vm.id);
                        // Never kill a VMM this server could not attach to: it may belong to
                        // someone else. It is left running and the VM marked failed; deleting
                        // or starting the VM stops it.
                        if let Some(pid) = vm.pid.filter(|_| self.orphan_alive(&vm)) {
                            tracing::warn!(vm = %vm.id, pid, error = %e, "could not re-attach; VMM left running, VM marked failed");
                            let msg = format!(
                                "could not re-attach to its VMM (PID {pid} still runs; delete or start the VM to stop it): {e}"
                            );
                            self.store.set_vm_stopped(
                                &vm.id,
                                VmStatus::Failed,
                                Some(pid),
                                Some(&msg),
                                StopReason::HostRestart,
                            )?;
                            continue;
                        }
                        tracing::warn!(vm = %vm.id, error = %e, "could not re-attach; marking the VM stopped");
                        self.net_down_blocking(&vm.id);
                        self.remove_sockets(&vm.id);
                        let msg = format!("lost while the server was down: {e}");
                        self.store.set_vm_stopped(
                            &vm.id,
                            VmStatus::Stopped,
                            None,
                            Some(&msg),
                            StopReason::HostRestart,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes over the VMM of a VM that kept running while the server was down.
    async fn reattach(self: &Arc<Self>, vm: &VmRecord) -> Result<()> {
        let pid = vm
            .pid
            .ok_or_else(|| CoreError::Conflict("no VMM process recorded".into()))?;
        if vm.vmm != self.driver.name() {
            return Err(CoreError::Conflict(format!(
                "the VM runs under {} but this server uses {}",
                vm.vmm,
                self.driver.name()
            )));
        }
        let spec = self.vm_spec(vm, PathBuf::new(), PathBuf::new())?;
        let handle: Arc<dyn VmHandle> = Arc::from(self.driver.attach(&spec, pid).await?);
        let entry = self.register(&vm.id);
        entry.set_handle(Some(handle.clone()));
        if vm.status == VmStatus::Running {
            // A server killed in the middle of a snapshot leaves the VM paused: continue it.
            handle.resume().await?;
            let agent =
                AgentClient::connect_handle(handle.as_ref(), Duration::from_secs(10)).await?;
            *entry.agent.lock().await = Some(agent);
        }
        entry.ready.send_replace(Readiness::Ready);
        self.spawn_watcher(entry);
        tracing::info!(vm = %vm.id, pid, "re-attached");
        Ok(())
    }

    /// Kills a VMM left by a previous server, but only if its command line names this VM's
    /// directory (the pid may have been reused by an unrelated process).
    fn kill_orphan(&self, vm: &VmRecord) {
        if let (Some(pid), true) = (vm.pid, self.orphan_alive(vm)) {
            bandsox_vmm::kill_process(pid);
            for _ in 0..100 {
                if !bandsox_vmm::process_alive(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // A Firecracker VM's jail (`<storage>/jail/<exec-name>/<id>`) is the driver's to
            // remove, but the driver that made it is gone.
            if let Ok(execs) = std::fs::read_dir(self.storage.root().join("jail")) {
                for e in execs.flatten() {
                    let _ = std::fs::remove_dir_all(e.path().join(&vm.id));
                }
            }
        }
    }

    /// Whether the VMM recorded for `vm` still runs: its pid exists and its command line
    /// names this VM (QEMU names the VM directory; Firecracker runs with `--id=<id>`).
    fn orphan_alive(&self, vm: &VmRecord) -> bool {
        let (Some(pid), Ok(dir)) = (vm.pid, self.storage.vm_dir(&vm.id)) else {
            return false;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let needle = dir.as_os_str().as_encoded_bytes();
        let fc_needle = format!("id={}\0", vm.id);
        let fc_needle = fc_needle.as_bytes();
        cmdline.windows(needle.len()).any(|w| w == needle)
            || cmdline.windows(fc_needle.len()).any(|w| w == fc_needle)
    }

    pub(crate) fn entry(&self, id: &str) -> Option<Arc<VmEntry>> {
        self.vms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Checks a create request against the bounds and limits without creating anything.
    pub fn validate_create(&self, req: &CreateVm) -> Result<()> {
        req.validate(&self.config.limits)
    }

    /// Creates a VM and returns once its agent answers, or fails within the boot timeout
    /// leaving nothing behind.
    pub async fn create_vm(self: &Arc<Self>, req: CreateVm) -> Result<VmRecord> {
        self.create_vm_with_id(req, new_id()).await
    }

    /// [`Manager::create_vm`] under an id chosen by the caller (a cluster places the VM
    /// under its id before the owner node creates it). The id must be a canonical id no VM
    /// has.
    pub async fn create_vm_with_id(
        self: &Arc<Self>,
        req: CreateVm,
        id: String,
    ) -> Result<VmRecord> {
        crate::storage::validate_id(&id)?;
        if self.store.get_vm(&id)?.is_some() {
            return Err(CoreError::Conflict(format!("a VM with id {id} exists")));
        }
        req.validate(&self.config.limits)?;
        bandsox_image::assets::kernel_paths(self.storage.root())?;
        let image = images::resolve_for_create(
            &self.store,
            &self.storage,
            &req.image,
            req.disk_size_mib,
            req.force_rebuild,
        )
        .await?;
        self.check_free_space(req.disk_size_mib)?;

        let shape = crate::template::TemplateShape {
            vcpu: req.vcpu,
            mem_mib: req.mem_mib,
            disk_size_mib: req.disk_size_mib,
            enable_networking: req.enable_networking,
        };
        // `template: false` neither uses nor builds one; unset uses one that exists and builds
        // one when the server builds in the background; `true` also builds one.
        let use_template = req.template != Some(false);
        let build_template = req.template.unwrap_or(self.config.auto_template);
        let template = if use_template {
            self.find_template(&image.record.digest, &shape)?
        } else {
            None
        };
        let t = now();
        let mut record = VmRecord {
            name: req
                .name
                .clone()
                .unwrap_or_else(|| format!("vm-{}", &id[..8])),
            id: id.clone(),
            image: req.image.clone(),
            image_digest: image.record.digest.clone(),
            status: VmStatus::Creating,
            vcpu: req.vcpu,
            mem_mib: req.mem_mib,
            disk_size_mib: req.disk_size_mib,
            created_at: t,
            updated_at: t,
            pid: None,
            error: None,
            metadata: req.metadata.clone(),
            env_vars: req.env_vars.clone(),
            restored_from: None,
            // Counted from the moment the VM is ready; set below.
            expires_at: None,
            timeout_action: req.timeout_action,
            vmm: self.driver.name().into(),
            stop_reason: None,
            stopped_at: None,
        };
        let net = if req.enable_networking {
            crate::network::NetChoice::Enabled
        } else {
            crate::network::NetChoice::None
        };
        let vm = match &template {
            Some((t, dir)) => {
                record.restored_from = Some(format!("template:{}", t.id));
                if let Some(vm) = self.claim_from_pool(&t.id, &record).await? {
                    if req.timeout_s > 0 {
                        return self.set_timeout(&vm.id, req.timeout_s, Some(req.timeout_action));
                    }
                    return Ok(vm);
                }
                let (state, kernel, initramfs, disk) = crate::template::boot_files(dir);
                let boot = Boot::Restore {
                    state: &state,
                    kernel: &kernel,
                    initramfs: &initramfs,
                    disk: &disk,
                };
                self.create_from(record, boot, net).await?
            }
            None => {
                let vm = self.create_from(record, Boot::Cold, net).await?;
                if build_template {
                    self.spawn_template_build(
                        req.image.clone(),
                        image.record.digest.clone(),
                        shape,
                    );
                }
                vm
            }
        };
        if req.timeout_s > 0 {
            return self.set_timeout(&vm.id, req.timeout_s, Some(req.timeout_action));
        }
        Ok(vm)
    }

    /// Registers a new VM record and boots it; on failure removes every trace of it.
    pub(crate) async fn create_from(
        self: &Arc<Self>,
        record: VmRecord,
        boot: Boot<'_>,
        net: crate::network::NetChoice,
    ) -> Result<VmRecord> {
        self.create_in(record, boot, net, None).await
    }

    /// [`Manager::create_from`], as a warm-pool VM of template `pool` when given.
    pub(crate) async fn create_in(
        self: &Arc<Self>,
        record: VmRecord,
        boot: Boot<'_>,
        net: crate::network::NetChoice,
        pool: Option<&str>,
    ) -> Result<VmRecord> {
        let id = record.id.clone();
        let dir = self.storage.vm_dir(&id)?;
        let entry = self.register(&id);
        let _guard = entry.lifecycle.lock().await;
        if let Err(e) = self.admit(&record, pool) {
            self.unregister(&id);
            return Err(e);
        }
        if let Err(e) = self.assign_network(&id, net) {
            let _ = self.store.delete_vm(&id);
            self.unregister(&id);
            return Err(e);
        }
        let prepared = (|| {
            std::fs::create_dir_all(&dir)?;
            match &boot {
                Boot::Cold => make_data_disk(&dir.join(DATA_DISK), record.disk_size_mib),
                Boot::Restore { disk, .. } => {
                    crate::sys::copy_file_sparse(disk, &dir.join(DATA_DISK)).map_err(CoreError::Io)
                }
            }
        })();
        let launched = match prepared {
            Ok(()) => self.launch(&entry, &record, &boot).await,
            Err(e) => Err(e),
        };
        match launched {
            Ok(()) => self
                .store
                .get_any_vm(&id)?
                .ok_or_else(|| CoreError::vm_not_found(&id)),
            Err(e) => {
                let console = read_tail(&dir.join("console.log"), 2048);
                let _ = std::fs::remove_dir_all(&dir);
                // The host-wide lease claim goes with the record (another server would wait
                // for it to turn stale).
                if let Ok(Some(net)) = self.vm_network(&id) {
                    if let Some(lease) = net.lease {
                        bandsox_net::release_lease(lease, &dir);
                    }
                }
                self.store.delete_vm(&id)?;
                self.unregister(&id);
                Err(match e {
                    CoreError::BootTimeout { timeout_s, detail } if !console.is_empty() => {
                        CoreError::BootTimeout {
                            timeout_s,
                            detail: format!("{detail}; last console output: {console}"),
                        }
                    }
                    e => e,
                })
            }
        }
    }

    /// A fresh in-memory entry for VM `id`, in the booting state.
    /// Records a new VM unless the server already holds `max_vms`.
    /// A warm-pool VM (`pool`: its template) is not counted.
    fn admit(&self, record: &VmRecord, pool: Option<&str>) -> Result<()> {
        let _one_at_a_time = self.admission.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(template) = pool {
            return self.store.insert_pool_vm(record, template);
        }
        let max = self.config.limits.max_vms;
        if self.store.count_vms()? >= max {
            return Err(CoreError::LimitReached(format!(
                "this server allows at most {max} VMs"
            )));
        }
        self.store.insert_vm(record)
    }

    pub(crate) fn register(&self, id: &str) -> Arc<VmEntry> {
        let entry = Arc::new(VmEntry {
            id: id.to_owned(),
            lifecycle: Mutex::new(()),
            handle: RwLock::new(None),
            agent: Mutex::new(None),
            ready: watch::Sender::new(Readiness::Booting),
            expect_exit: AtomicBool::new(false),
        });
        self.vms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), entry.clone());
        entry
    }

    fn unregister(&self, id: &str) {
        let removed = self
            .vms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(e) = removed {
            e.ready
                .send_replace(Readiness::Gone("the VM is gone".into()));
        }
    }

    pub(crate) fn check_free_space(&self, disk_size_mib: u64) -> Result<()> {
        let free_mib = free_space_mib(&self.storage.vms_dir())?;
        if disk_size_mib > free_mib {
            return Err(CoreError::InvalidInput(format!(
                "disk_size_mib {disk_size_mib} exceeds the {free_mib} MiB free on the storage filesystem"
            )));
        }
        Ok(())
    }

    /// The machine description of a stored VM.
    fn vm_spec(&self, vm: &VmRecord, kernel: PathBuf, initramfs: PathBuf) -> Result<VmSpec> {
        let dir = self.storage.vm_dir(&vm.id)?;
        let hostname = guest_hostname(vm);
        let machine = Machine {
            id: &vm.id,
            image: &vm.image,
            image_digest: &vm.image_digest,
            vcpu: vm.vcpu,
            mem_mib: vm.mem_mib,
            networked: self.vm_network(&vm.id)?.is_some(),
            hostname: &hostname,
        };
        self.machine_spec(&machine, dir, kernel, initramfs)
    }

    /// The VMM spec of a machine whose files live in `dir`.
    pub(crate) fn machine_spec(
        &self,
        m: &Machine<'_>,
        dir: PathBuf,
        kernel: PathBuf,
        initramfs: PathBuf,
    ) -> Result<VmSpec> {
        let base = self.storage.image_dir(m.image_digest)?.join("rootfs.ext4");
        if !base.is_file() {
            return Err(CoreError::NotFound {
                kind: "image",
                id: format!("{} (base disk {} is missing)", m.image, base.display()),
            });
        }
        let mut kernel_args = vec![
            // Freed guest pages are zeroed, so snapshots carry them as zero pages: smaller
            // state files and faster restores.
            "init_on_free=1".into(),
            "bandsox.root=/dev/vda".into(),
            "bandsox.data=/dev/vdb".into(),
            format!("bandsox.hostname={}", m.hostname),
        ];
        let network = if m.networked {
            kernel_args.extend(bandsox_net::kernel_args(&self.config.dns));
            Some(bandsox_vmm::NetSpec {
                netns: bandsox_net::netns_name(m.id)
                    .map_err(|e| CoreError::Network(e.to_string()))?,
                tap: bandsox_net::TAP_NAME.into(),
                guest_mac: bandsox_net::GUEST_MAC.into(),
            })
        } else {
            None
        };
        Ok(VmSpec {
            id: m.id.to_owned(),
            run_dir: dir.clone(),
            vcpu: m.vcpu,
            mem_mib: m.mem_mib,
            kernel,
            initramfs,
            kernel_args,
            network,
            disks: vec![
                Disk {
                    path: base,
                    read_only: true,
                },
                Disk {
                    path: dir.join(DATA_DISK),
                    read_only: false,
                },
            ],
        })
    }

    /// Starts the VMM of `vm` (cold or from a saved state) and waits for its agent. On
    /// success the VM is `running`; on failure its VMM is killed (files are the caller's).
    /// The caller holds the entry's lifecycle lock.
    pub(crate) async fn launch(
        self: &Arc<Self>,
        entry: &Arc<VmEntry>,
        vm: &VmRecord,
        boot: &Boot<'_>,
    ) -> Result<()> {
        entry.expect_exit.store(false, Ordering::Release);
        entry.ready.send_replace(Readiness::Booting);
        let result = self.launch_inner(entry, vm, boot).await;
        match result {
            Ok(pid) => {
                self.store
                    .set_vm_state(&vm.id, VmStatus::Running, Some(pid), None)?;
                entry.ready.send_replace(Readiness::Ready);
                self.spawn_watcher(entry.clone());
                Ok(())
            }
            Err(e) => {
                entry.expect_exit.store(true, Ordering::Release);
                if let Some(h) = entry.handle() {
                    let _ = h.kill().await;
                }
                entry.set_handle(None);
                *entry.agent.lock().await = None;
                entry.ready.send_replace(Readiness::Gone(e.to_string()));
                self.remove_sockets(&vm.id);
                self.net_down(&vm.id).await;
                Err(e)
            }
        }
    }

    async fn launch_inner(&self, entry: &VmEntry, vm: &VmRecord, boot: &Boot<'_>) -> Result<u32> {
        let (kernel, initramfs) = match boot {
            Boot::Cold => bandsox_image::assets::kernel_paths(self.storage.root())?,
            Boot::Restore {
                kernel, initramfs, ..
            } => (kernel.to_path_buf(), initramfs.to_path_buf()),
        };
        let spec = self.vm_spec(vm, kernel, initramfs)?;
        self.net_up(&vm.id).await?;
        let handle: Arc<dyn VmHandle> = Arc::from(match boot {
            Boot::Cold => self.driver.spawn(&spec).await?,
            Boot::Restore { state, .. } => self.driver.restore(&spec, state).await?,
        });
        entry.set_handle(Some(handle.clone()));
        self.store
            .set_vm_state(&vm.id, VmStatus::Creating, Some(handle.pid()), None)?;
        let timeout = self.config.boot_timeout;
        let connect = AgentClient::connect_handle(handle.as_ref(), timeout);
        // Stop waiting as soon as the VMM dies: a guest that panics does not need the whole
        // timeout to be reported.
        let boot_failed = |exit: bandsox_vmm::VmmExit| -> CoreError {
            let said = self
                .storage
                .vm_dir(&vm.id)
                .ok()
                .and_then(|dir| {
                    ["qemu.log", "firecracker.log"]
                        .iter()
                        .map(|f| read_tail(&dir.join(f), 1024))
                        .find(|t| !t.is_empty())
                })
                .map(|t| format!(": {t}"))
                .unwrap_or_default();
            CoreError::BootFailed(format!("the VMM exited during boot ({exit}){said}"))
        };
        let agent = tokio::select! {
            r = connect => match r {
                Ok(agent) => agent,
                Err(e) => {
                    // The channel broke because the VMM died (it reset the socket as it
                    // exited): that is a boot failure with the VMM's reason, not a timeout.
                    if let Some(exit) = handle.wait_exit(Duration::from_secs(1)).await {
                        return Err(boot_failed(exit));
                    }
                    return Err(CoreError::BootTimeout {
                        timeout_s: timeout.as_secs(),
                        detail: e.to_string(),
                    });
                }
            },
            exit = handle.wait() => return Err(boot_failed(exit)),
        };
        if matches!(boot, Boot::Restore { .. }) {
            self.fix_identity(&agent, vm).await?;
        }
        *entry.agent.lock().await = Some(agent);
        Ok(handle.pid())
    }

    /// After a restore or a pool claim: the host's clock, fresh entropy, the VM's hostname
    /// and a new machine id.
    pub(crate) async fn fix_identity(&self, agent: &AgentClient, vm: &VmRecord) -> Result<()> {
        // The guest clock stood still while the snapshot waited.
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        agent
            .call(&Request::SetTime { unix_ns }, Duration::from_secs(10))
            .await?;
        // Clones of one snapshot start with the same RNG state: give each its own.
        let bytes: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
        agent
            .call(&Request::AddEntropy { bytes }, Duration::from_secs(10))
            .await?;
        // A clone is its own machine: its hostname and a fresh machine id.
        let identity = Request::SetIdentity {
            hostname: guest_hostname(vm),
            machine_id: crate::template::new_machine_id(),
        };
        match agent.call(&identity, Duration::from_secs(10)).await {
            Ok(_) => {}
            // Snapshots taken under an agent older than the op.
            Err(CoreError::Guest(e)) if e.code == bandsox_protocol::ErrorCode::Unsupported => {
                tracing::warn!(vm = %vm.id, "the guest agent cannot set its identity: {}", e.message);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn spawn_watcher(self: &Arc<Self>, entry: Arc<VmEntry>) {
        let Some(handle) = entry.handle() else { return };
        let mgr = Arc::downgrade(self);
        tokio::spawn(async move {
            let exit = handle.wait().await;
            if entry.expect_exit.load(Ordering::Acquire) {
                return;
            }
            let Some(mgr) = mgr.upgrade() else { return };
            // Status 0 is a guest that powered off (or rebooted: VMMs run with no reboot);
            // anything else is a VMM that died under the VM.
            let msg = if exit.code == Some(0) {
                tracing::info!(vm = %entry.id, "the guest powered off");
                let _ = mgr.store.set_vm_stopped(
                    &entry.id,
                    VmStatus::Stopped,
                    None,
                    None,
                    StopReason::GuestPoweroff,
                );
                "the guest powered off".to_owned()
            } else {
                tracing::warn!(vm = %entry.id, %exit, "VMM exited unexpectedly");
                let msg = format!("the VMM exited unexpectedly ({exit})");
                let _ = mgr.store.set_vm_stopped(
                    &entry.id,
                    VmStatus::Failed,
                    None,
                    Some(&msg),
                    StopReason::VmmExited,
                );
                msg
            };
            entry.ready.send_replace(Readiness::Gone(msg));
            *entry.agent.lock().await = None;
            entry.set_handle(None);
            mgr.remove_sockets(&entry.id);
            mgr.net_down(&entry.id).await;
            let mut vms = mgr.vms.write().unwrap_or_else(|p| p.into_inner());
            if vms.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                vms.remove(&entry.id);
            }
        });
    }

    pub fn get_vm(&self, id: &str) -> Result<VmRecord> {
        validate_id(id).map_err(|_| CoreError::vm_not_found(id))?;
        self.store
            .get_vm(id)?
            .ok_or_else(|| CoreError::vm_not_found(id))
    }

    pub fn list_vms(&self) -> Result<Vec<VmRecord>> {
        self.store.list_vms()
    }

    /// The agent of a running VM, waiting while it boots and reconnecting a dropped channel.
    pub async fn agent(&self, id: &str) -> Result<AgentClient> {
        let vm = self.get_vm(id)?;
        let entry = self.entry(id).ok_or_else(|| not_running(&vm))?;
        let mut ready = entry.ready.subscribe();
        let state = tokio::time::timeout(
            self.config.boot_timeout,
            ready.wait_for(|r| *r != Readiness::Booting),
        )
        .await
        .map_err(|_| CoreError::Conflict(format!("VM {id} is still booting")))?
        .map(|r| r.clone())
        .unwrap_or(Readiness::Gone("VM is gone".into()));
        if let Readiness::Gone(why) = state {
            return Err(CoreError::Conflict(format!(
                "VM {id} is not running: {why}"
            )));
        }
        let vm = self.get_vm(id)?;
        if vm.status != VmStatus::Running {
            return Err(not_running(&vm));
        }
        let mut slot = entry.agent.lock().await;
        match slot.as_ref() {
            Some(a) if !a.is_closed() => Ok(a.clone()),
            _ => {
                let handle = entry.handle().ok_or_else(|| not_running(&vm))?;
                let a =
                    AgentClient::connect_handle(handle.as_ref(), Duration::from_secs(10)).await?;
                *slot = Some(a.clone());
                Ok(a)
            }
        }
    }

    /// Stops the vCPUs of a running VM. Pausing a paused VM is a no-op.
    pub async fn pause_vm(&self, id: &str) -> Result<VmRecord> {
        self.set_paused(id, true, StopReason::User).await
    }

    /// Resumes a paused VM. Resuming a running VM is a no-op.
    pub async fn resume_vm(&self, id: &str) -> Result<VmRecord> {
        self.set_paused(id, false, StopReason::User).await
    }

    pub(crate) async fn set_paused(
        &self,
        id: &str,
        pause: bool,
        reason: StopReason,
    ) -> Result<VmRecord> {
        let vm = self.get_vm(id)?;
        let entry = self.entry(id).ok_or_else(|| not_running(&vm))?;
        let _guard = entry.lifecycle.lock().await;
        let vm = self.get_vm(id)?;
        let (from, to) = if pause {
            (VmStatus::Running, VmStatus::Paused)
        } else {
            (VmStatus::Paused, VmStatus::Running)
        };
        if vm.status == to {
            return Ok(vm);
        }
        if vm.status != from {
            return Err(not_running(&vm));
        }
        let handle = entry.handle().ok_or_else(|| not_running(&vm))?;
        if pause {
            handle.pause().await?;
        } else {
            handle.resume().await?;
        }
        if pause {
            self.store.set_vm_stopped(id, to, vm.pid, None, reason)?;
        } else {
            self.store.set_vm_state(id, to, vm.pid, None)?;
        }
        self.get_vm(id)
    }

    /// Runs a command to completion.
    pub async fn exec(
        &self,
        id: &str,
        req: ExecRequest,
        stdin: Option<Vec<u8>>,
        cap_bytes: usize,
    ) -> Result<ExecOutput> {
        if req.argv.is_some() == req.command.is_some() {
            return Err(CoreError::InvalidInput(
                "give exactly one of `command` and `argv`".into(),
            ));
        }
        let req = self.with_vm_env(id, req)?;
        let agent = self.agent(id).await?;
        agent.exec(req, stdin, cap_bytes).await
    }

    /// Powers a VM off (the agent syncs and powers off; the VMM is killed after a grace
    /// period). Stopping a stopped VM is a no-op.
    pub async fn stop_vm(&self, id: &str) -> Result<VmRecord> {
        self.stop_vm_because(id, StopReason::User).await
    }

    /// [`Manager::stop_vm`], recording `reason`.
    pub(crate) async fn stop_vm_because(&self, id: &str, reason: StopReason) -> Result<VmRecord> {
        let vm = self.get_vm(id)?;
        let Some(entry) = self.entry(id) else {
            return Ok(vm);
        };
        let _guard = entry.lifecycle.lock().await;
        self.stop_locked(&entry).await?;
        self.store
            .set_vm_stopped(id, VmStatus::Stopped, None, None, reason)?;
        self.vms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.get_vm(id)
    }

    /// Cold-boots a stopped (or failed) VM from its disks. Starting a running or paused VM
    /// is a no-op.
    pub async fn start_vm(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let vm = self.get_vm(id)?;
        if self.entry(id).is_some() {
            return Ok(vm);
        }
        if !matches!(vm.status, VmStatus::Stopped | VmStatus::Failed) {
            return Err(CoreError::Conflict(format!("VM {id} is {}", vm.status)));
        }
        let dir = self.storage.vm_dir(id)?;
        if !dir.join(DATA_DISK).is_file() {
            return Err(CoreError::Conflict(format!(
                "VM {id} has no disk left to boot from; delete it"
            )));
        }
        // A VMM left running after a failed re-attach: the user asked for a fresh boot.
        self.kill_orphan(&vm);
        let entry = self.register(id);
        let _guard = entry.lifecycle.lock().await;
        match self.launch(&entry, &vm, &Boot::Cold).await {
            Ok(()) => self.get_vm(id),
            Err(e) => {
                self.unregister(id);
                self.store.set_vm_stopped(
                    id,
                    VmStatus::Stopped,
                    None,
                    Some(&e.to_string()),
                    StopReason::BootFailed,
                )?;
                Err(e)
            }
        }
    }

    /// Stops (if needed) and starts a VM again.
    pub async fn restart_vm(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.stop_vm(id).await?;
        self.start_vm(id).await
    }

    /// Renames a VM and/or replaces its metadata. Names are labels: nothing else changes.
    pub fn update_vm(
        &self,
        id: &str,
        name: Option<&str>,
        metadata: Option<&serde_json::Value>,
    ) -> Result<VmRecord> {
        name.map(check_label).transpose()?;
        metadata.map(check_metadata).transpose()?;
        self.get_vm(id)?;
        self.store.update_vm_labels(id, name, metadata)?;
        self.get_vm(id)
    }

    async fn stop_locked(&self, entry: &VmEntry) -> Result<()> {
        entry.expect_exit.store(true, Ordering::Release);
        entry
            .ready
            .send_replace(Readiness::Gone("the VM was stopped".into()));
        let agent = entry.agent.lock().await.take();
        if let Some(h) = entry.handle() {
            let mut clean = false;
            if let Some(agent) = agent {
                if let Ok(ReplyBody::Done) =
                    agent.call(&Request::Shutdown, Duration::from_secs(5)).await
                {
                    clean = h.wait_exit(Duration::from_secs(10)).await.is_some();
                }
            }
            if !clean {
                h.kill().await?;
            }
        }
        entry.set_handle(None);
        self.remove_sockets(&entry.id);
        self.net_down(&entry.id).await;
        Ok(())
    }

    /// Stops a VM if needed and removes every file, socket and record of it.
    pub async fn delete_vm(&self, id: &str) -> Result<()> {
        let vm = self.get_vm(id)?;
        self.remove_vm(vm).await
    }

    /// [`Manager::delete_vm`] of a record in hand (a user VM or a warm-pool VM).
    pub(crate) async fn remove_vm(&self, vm: VmRecord) -> Result<()> {
        let id = vm.id.as_str();
        if let Some(entry) = self.entry(id) {
            let _guard = entry.lifecycle.lock().await;
            self.stop_locked(&entry).await?;
        } else if vm.pid.is_some() {
            self.kill_orphan(&vm);
        }
        self.net_down(id).await;
        let dir = self.storage.vm_dir(id)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Ok(Some(net)) = self.vm_network(id) {
            if let Some(lease) = net.lease {
                bandsox_net::release_lease(lease, &dir);
            }
        }
        self.store.delete_vm(id)?;
        self.vms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// A VM of a previous server that is not to be kept (a warm-pool VM): its VMM (only if
    /// its command line names the VM), namespace, lease, files and record.
    pub(crate) fn purge_orphan(&self, vm: &VmRecord) -> Result<()> {
        self.kill_orphan(vm);
        self.net_down_blocking(&vm.id);
        let dir = self.storage.vm_dir(&vm.id)?;
        if let Ok(Some(net)) = self.vm_network(&vm.id) {
            if let Some(lease) = net.lease {
                bandsox_net::release_lease(lease, &dir);
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.store.delete_vm(&vm.id)
    }

    fn remove_sockets(&self, id: &str) {
        if let Ok(dir) = self.storage.vm_dir(id) {
            for s in ["agent.sock", "qmp.sock"] {
                let _ = std::fs::remove_file(dir.join(s));
            }
        }
    }
}

fn not_running(vm: &VmRecord) -> CoreError {
    CoreError::NotRunning {
        id: vm.id.clone(),
        status: vm.status,
    }
}

fn hostname_for(id: &str) -> String {
    format!("bandsox-{}", &id[..id.len().min(8)])
}

/// The guest hostname of a VM: its name when that is a valid DNS label, else
/// `bandsox-<id prefix>`.
pub(crate) fn guest_hostname(vm: &VmRecord) -> String {
    let n = &vm.name;
    let label = !n.is_empty()
        && n.len() <= 63
        && !n.starts_with('-')
        && !n.ends_with('-')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if label {
        n.clone()
    } else {
        hostname_for(&vm.id)
    }
}

/// What a VMM spec is made of (a user VM or a template build VM).
pub(crate) struct Machine<'a> {
    pub id: &'a str,
    pub image: &'a str,
    pub image_digest: &'a str,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub networked: bool,
    pub hostname: &'a str,
}

/// Creates the VM's sparse writable disk (the overlay's upper layer). Inode tables are
/// initialised lazily so the file stays sparse.
pub(crate) fn make_data_disk(path: &std::path::Path, size_mib: u64) -> Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(size_mib << 20)?;
    drop(f);
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-L",
            "bandsox-data",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(path)
        .output()
        .map_err(|e| {
            CoreError::NotInitialised(format!("cannot run mkfs.ext4 ({e}); install e2fsprogs"))
        })?;
    if !out.status.success() {
        return Err(CoreError::Io(std::io::Error::other(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))));
    }
    Ok(())
}

fn free_space_mib(dir: &std::path::Path) -> Result<u64> {
    crate::sys::free_space_bytes(dir)
        .map(|b| b >> 20)
        .map_err(CoreError::Io)
}

fn read_tail(path: &PathBuf, max: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}
