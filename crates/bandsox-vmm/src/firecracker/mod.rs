//! Firecracker backend.
//!
//! One Firecracker process per VM, configured over its REST API (a Unix socket, see [`api`])
//! and, by default, started through the jailer (chroot per VM, cgroup limits in whichever
//! cgroup version the host offers (see [`cgroup`]), uid/gid drop, new PID namespace; see
//! [`jail`]). Without a jailer binary, or with the jailer disabled, the
//! plain `firecracker` binary runs in the same per-VM directory layout, so snapshots taken in
//! either mode use the same relative paths.
//!
//! The guest agent is reached through Firecracker's hybrid vsock: the host connects to the
//! `v.sock` Unix socket, writes `CONNECT <port>\n` and reads `OK <n>\n`; then the stream is
//! the guest's vsock port (the agent listens on `bandsox.vsock=<port>`).
//!
//! Snapshots: [`VmHandle::save_state`] writes a Full snapshot, the device state at the given
//! path and the guest memory next to it (`<path>.mem`). A restore starts a fresh VMM in a
//! fresh jail, hard-links both files in and loads them with the `File` memory backend (the
//! memory file is mapped for the restored VM's whole life; the hard link keeps it alive even
//! if the snapshot is deleted).
//!
//! Pitfalls handled here (see `docs/firecracker.md`): SIGTERM is ignored by Firecracker as
//! PID 1 of its namespace, so it is killed with SIGKILL; a stale `v.sock` makes a snapshot load
//! fail, so it is removed first; a VMM that exits while the VM runs is a failure whatever its
//! exit code (a KVM internal error ends with code 0); the jail directory and cgroup are
//! removed once the process is gone.

pub mod api;
pub mod cgroup;
pub mod jail;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::{VmHandle, VmSpec, VmmDriver, VmmError, VmmExit};
use api::ApiClient;
use cgroup::{CgroupHost, CgroupLimits, CgroupPlan};
use jail::{Jail, JailerOptions};

/// Default Firecracker binary name.
pub const FIRECRACKER_BINARY: &str = "firecracker";
/// Default jailer binary name.
pub const JAILER_BINARY: &str = "jailer";
/// Guest vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 52;
/// Guest CID of every VM (each VM has its own vsock device and host socket).
pub const GUEST_CID: u32 = 3;
/// The guest network interface (the guest sees it as `eth0`).
const NET_IFACE: &str = "eth0";

/// Where Firecracker is looked for: `BANDSOX_FIRECRACKER_BIN`, then `PATH`, then
/// `/usr/bin/firecracker`.
pub fn find_firecracker() -> Option<PathBuf> {
    if let Some(p) = bandsox_config::get_os(bandsox_config::FIRECRACKER_BIN) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    crate::qemu::find_in_path(FIRECRACKER_BINARY).or_else(|| {
        let p = PathBuf::from("/usr/bin/firecracker");
        p.is_file().then_some(p)
    })
}

/// Where the jailer is looked for: `BANDSOX_JAILER_BIN`, next to `firecracker`, then `PATH`.
pub fn find_jailer(firecracker: &Path) -> Option<PathBuf> {
    if let Some(p) = bandsox_config::get_os(bandsox_config::JAILER_BIN) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    firecracker
        .parent()
        .map(|d| d.join(JAILER_BINARY))
        .filter(|p| p.is_file())
        .or_else(|| crate::qemu::find_in_path(JAILER_BINARY))
}

/// True when KVM runs ordinary guests here (not a PVM nested hypervisor, `/dev/kvm` present).
pub fn kvm_usable() -> bool {
    crate::qemu::Accel::detect() == crate::qemu::Accel::Kvm
}

/// Settings of the Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    pub binary: PathBuf,
    /// Run under this jailer; `None` runs the plain binary.
    pub jailer: Option<JailerOptions>,
    /// Parent of every VM's directory (`<storage>/jail`).
    pub chroot_base: PathBuf,
    /// Owner of the VMM process (under the jailer) and of the files it opens.
    pub uid: u32,
    pub gid: u32,
    /// The mount table cgroup hierarchies are found in (the jailer's is `/proc/mounts`; tests
    /// point this at a fake host).
    pub cgroup_mounts: PathBuf,
    /// Whether a jailed VM may start when its cgroup limits cannot be applied.
    pub cgroup_limits: CgroupLimits,
    /// Limit for ordinary API calls.
    pub api_timeout: Duration,
    /// Limit for snapshot create and load.
    pub snapshot_timeout: Duration,
    /// Limit from process start until the API socket answers.
    pub start_timeout: Duration,
    /// Limit for the `OK` answer to a vsock `CONNECT`.
    pub vsock_connect_timeout: Duration,
    /// Guest vsock port of the agent.
    pub agent_port: u32,
}

impl FirecrackerConfig {
    /// Defaults for `binary` with VM directories under `chroot_base`: the jailer when
    /// `jailer` is given, uid/gid from `BANDSOX_FC_UID`/`BANDSOX_FC_GID` (default 65534).
    pub fn new(binary: PathBuf, jailer: Option<PathBuf>, chroot_base: PathBuf) -> Self {
        let id = |var: &str| {
            bandsox_config::get(var)
                .and_then(|v| v.parse().ok())
                .unwrap_or(65534)
        };
        Self {
            binary,
            jailer: jailer.map(|jailer| JailerOptions {
                jailer,
                netns: None,
            }),
            chroot_base,
            uid: id(bandsox_config::FC_UID),
            gid: id(bandsox_config::FC_GID),
            cgroup_mounts: PathBuf::from(cgroup::MOUNTS),
            cgroup_limits: CgroupLimits::Required,
            api_timeout: Duration::from_secs(10),
            snapshot_timeout: Duration::from_secs(300),
            start_timeout: Duration::from_secs(10),
            vsock_connect_timeout: Duration::from_secs(3),
            agent_port: AGENT_VSOCK_PORT,
        }
    }

    /// Finds the binaries (see [`find_firecracker`], [`find_jailer`]); `BANDSOX_FC_JAILER=0`
    /// runs without the jailer; `BANDSOX_FC_CGROUP_LIMITS=optional` lets jailed VMs start
    /// without the cgroup limits this host cannot apply (default `required`: such a host is
    /// refused here, before any VM starts).
    pub fn from_env(chroot_base: PathBuf) -> Result<Self, VmmError> {
        let binary = find_firecracker().ok_or(VmmError::BinaryMissing {
            binary: FIRECRACKER_BINARY.into(),
            package: "firecracker (see docs/firecracker.md)",
        })?;
        let use_jailer = bandsox_config::get(bandsox_config::FC_JAILER).as_deref() != Some("0");
        let jailer = if use_jailer {
            find_jailer(&binary)
        } else {
            None
        };
        let mut config = Self::new(binary, jailer, chroot_base);
        if let Some(v) =
            bandsox_config::get(bandsox_config::FC_CGROUP_LIMITS).filter(|v| !v.is_empty())
        {
            config.cgroup_limits = CgroupLimits::parse(&v).ok_or_else(|| {
                VmmError::CgroupLimits(format!(
                    "BANDSOX_FC_CGROUP_LIMITS={v}: expected `required` or `optional`"
                ))
            })?;
        }
        if config.jailer.is_some() {
            config.cgroup_plan(1, 1)?;
        }
        Ok(config)
    }

    /// The jailer's cgroup arguments for a VM of this size on this host; an error when limits
    /// are missing and [`CgroupLimits::Required`], else a warning naming what is missing.
    pub fn cgroup_plan(&self, vcpu: u32, mem_mib: u32) -> Result<CgroupPlan, VmmError> {
        let host = CgroupHost::detect(&self.cgroup_mounts);
        let plan = host.plan(vcpu, mem_mib);
        if plan.missing.is_empty() {
            return Ok(plan);
        }
        let why = host.describe_missing(&plan.missing);
        match self.cgroup_limits {
            CgroupLimits::Required => Err(VmmError::CgroupLimits(format!(
                "{why}; set BANDSOX_FC_CGROUP_LIMITS=optional to start VMs without these limits (see docs/firecracker.md)"
            ))),
            CgroupLimits::Optional => {
                tracing::warn!(
                    "starting a Firecracker VM without its {} limit: {why} (BANDSOX_FC_CGROUP_LIMITS=optional)",
                    plan.missing.join(" and ")
                );
                Ok(plan)
            }
        }
    }
}

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerDriver {
    config: Arc<FirecrackerConfig>,
}

impl FirecrackerDriver {
    pub fn new(config: FirecrackerConfig) -> Self {
        if config.jailer.is_some() {
            // Under `--new-pid-ns` the jailer exits after starting Firecracker; as a
            // subreaper we inherit the orphan and can reap it and read its exit status.
            crate::sys::become_subreaper();
        }
        Self {
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &FirecrackerConfig {
        &self.config
    }

    /// The name the jailer gives Firecracker: the file name of the canonical `--exec-file`
    /// (a symlink `firecracker -> firecracker-v1.16.1-x86_64` yields the target's name). It
    /// names the jail directory, the pid file and the parent cgroup.
    fn exec_name(&self) -> String {
        let b = &self.config.binary;
        std::fs::canonicalize(b)
            .unwrap_or_else(|_| b.clone())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| FIRECRACKER_BINARY.into())
    }

    /// The directory layout of VM `id`.
    pub fn jail(&self, id: &str) -> Result<Jail, VmmError> {
        let c = &self.config;
        let exec_name = self.exec_name();
        let cgroups = match c.jailer {
            Some(_) => CgroupHost::detect(&c.cgroup_mounts).vm_dirs(&exec_name, id),
            None => Vec::new(),
        };
        Jail::new(&c.chroot_base, &exec_name, id, c.uid, c.gid, cgroups)
    }

    /// The guest kernel command line.
    pub fn boot_args(&self, spec: &VmSpec) -> String {
        let mut s = format!(
            "console=ttyS0 quiet reboot=k panic=1 pci=off bandsox.vsock={}",
            self.config.agent_port
        );
        for a in &spec.kernel_args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Links the boot files and disks into a fresh jail.
    fn prepare(&self, spec: &VmSpec, jail: &Jail) -> Result<(), VmmError> {
        jail.create()?;
        jail.link_read_only(&spec.kernel, jail::KERNEL)?;
        jail.link_read_only(&spec.initramfs, jail::INITRD)?;
        for (i, d) in spec.disks.iter().enumerate() {
            if d.read_only {
                jail.link_read_only(&d.path, &jail::drive_name(i))?;
            } else {
                jail.link(&d.path, &jail::drive_name(i))?;
            }
        }
        jail.log_file(&spec.run_dir.join("firecracker.log"), jail::LOG)?;
        jail.log_file(&spec.run_dir.join("firecracker.metrics"), jail::METRICS)?;
        Ok(())
    }

    /// Starts the VMM (through the jailer with `jailed`'s options and cgroup limits, or
    /// directly) and waits for its API socket.
    async fn start_process(
        &self,
        spec: &VmSpec,
        jail: &Jail,
        jailed: Option<(&JailerOptions, &CgroupPlan)>,
    ) -> Result<FirecrackerHandle, VmmError> {
        let c = &self.config;
        let console = std::fs::File::create(spec.run_dir.join("console.log"))?;
        let (program, args, cwd) = match jailed {
            Some((opts, cgroups)) => (
                opts.jailer.clone(),
                jail::jailer_args(opts, &c.binary, &c.chroot_base, jail, spec, cgroups),
                None,
            ),
            None => (
                c.binary.clone(),
                jail::firecracker_args(&spec.id, &jail.path(jail::API_SOCK)),
                Some(jail.root.clone()),
            ),
        };
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            // Own process group: a Ctrl-C on the server's terminal must not kill the VMs.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        if let (Some(n), None) = (&spec.network, jailed) {
            // Without the jailer the VMM joins the VM's namespace itself (the jailer does it
            // with --netns).
            let ns = std::fs::File::open(jail::netns_path(&n.netns))?;
            crate::sys::join_netns_before_exec(&mut cmd, ns);
        }
        let started = tokio::time::Instant::now();
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::BinaryMissing {
                binary: program.display().to_string(),
                package: "firecracker (see docs/firecracker.md)",
            },
            _ => VmmError::Spawn(e),
        })?;
        let child_pid = child.id().ok_or_else(|| VmmError::Exited {
            operation: "spawn",
            detail: "process ended before it could be tracked".into(),
        })?;
        let pid = if jailed.is_some() {
            // The jailer exits once Firecracker runs in its new PID namespace; the
            // Firecracker pid (as seen from here) is in `<root>/<exec-name>.pid`.
            let status = tokio::time::timeout(c.start_timeout, child.wait())
                .await
                .map_err(|_| {
                    crate::sys::kill_process(child_pid);
                    VmmError::Timeout {
                        operation: "jailer start",
                        timeout_ms: c.start_timeout.as_millis() as u64,
                    }
                })??;
            if !status.success() {
                return Err(VmmError::Exited {
                    operation: "jailer start",
                    detail: format!(
                        "jailer {status}: {}",
                        tail(&spec.run_dir.join("console.log"))
                    ),
                });
            }
            let pid_file = jail.path(&format!("{}.pid", self.exec_name()));
            read_pid(&pid_file).ok_or_else(|| VmmError::Exited {
                operation: "jailer start",
                detail: format!("no pid in {}", pid_file.display()),
            })?
        } else {
            // Our child: reap it through tokio, then remove its directory.
            let (tx, rx) = watch::channel(None);
            let dir = jail.clone();
            tokio::spawn(async move {
                let exit = match child.wait().await {
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        VmmExit {
                            code: s.code(),
                            signal: s.signal(),
                        }
                    }
                    Err(_) => VmmExit::UNKNOWN,
                };
                dir.remove();
                let _ = tx.send(Some(exit));
            });
            let handle = self.handle(spec, jail, child_pid, rx);
            return self.await_api(handle, started).await;
        };
        let rx = watch_pid(pid, jail.clone());
        let handle = self.handle(spec, jail, pid, rx);
        self.await_api(handle, started).await
    }

    fn handle(
        &self,
        spec: &VmSpec,
        jail: &Jail,
        pid: u32,
        exit: crate::ExitRx,
    ) -> FirecrackerHandle {
        let api_sock = jail.path(jail::API_SOCK);
        FirecrackerHandle {
            pid,
            jail: jail.clone(),
            run_dir: spec.run_dir.clone(),
            api: ApiClient::new(&api_sock, self.config.api_timeout),
            slow_api: ApiClient::new(&api_sock, self.config.snapshot_timeout),
            exit,
            config: self.config.clone(),
            timings: StartTimings::default(),
        }
    }

    /// Waits for the API socket; kills the VMM and cleans up when it does not come.
    async fn await_api(
        &self,
        handle: FirecrackerHandle,
        started: tokio::time::Instant,
    ) -> Result<FirecrackerHandle, VmmError> {
        let wait = handle.api.wait_ready(self.config.start_timeout);
        let ready = tokio::select! {
            r = wait => r,
            exit = handle.wait() => Err(VmmError::Exited {
                operation: "start",
                detail: format!("{exit}: {}", tail(&handle.run_dir.join("console.log"))),
            }),
        };
        match ready {
            Ok(()) => {
                let mut handle = handle;
                handle.timings.api_ready = started.elapsed();
                tracing::debug!(
                    pid = handle.pid,
                    ms = started.elapsed().as_millis() as u64,
                    "Firecracker API ready"
                );
                Ok(handle)
            }
            Err(e) => {
                let _ = handle.kill().await;
                Err(e)
            }
        }
    }

    /// Configures a fresh VMM for a cold boot and starts the guest.
    async fn configure(&self, handle: &FirecrackerHandle, spec: &VmSpec) -> Result<(), VmmError> {
        let api = &handle.api;
        logs_and_metrics(api).await?;
        api.put(
            "/machine-config",
            &json!({
                "vcpu_count": spec.vcpu,
                "mem_size_mib": spec.mem_mib,
                "track_dirty_pages": true,
            }),
            "configure machine",
        )
        .await?;
        api.put(
            "/boot-source",
            &json!({
                "kernel_image_path": jail::KERNEL,
                "initrd_path": jail::INITRD,
                "boot_args": self.boot_args(spec),
            }),
            "configure boot source",
        )
        .await?;
        for (i, d) in spec.disks.iter().enumerate() {
            let id = jail::drive_name(i);
            api.put(
                &format!("/drives/{id}"),
                &json!({
                    "drive_id": id,
                    "path_on_host": id,
                    "is_root_device": false,
                    "is_read_only": d.read_only,
                }),
                "configure drive",
            )
            .await?;
        }
        let _ = std::fs::remove_file(handle.jail.path(jail::VSOCK));
        api.put(
            "/vsock",
            &json!({ "guest_cid": GUEST_CID, "uds_path": jail::VSOCK }),
            "configure vsock",
        )
        .await?;
        api.put("/entropy", &json!({}), "configure entropy").await?;
        if let Some(n) = &spec.network {
            api.put(
                &format!("/network-interfaces/{NET_IFACE}"),
                &json!({
                    "iface_id": NET_IFACE,
                    "host_dev_name": n.tap,
                    "guest_mac": n.guest_mac,
                }),
                "configure network interface",
            )
            .await?;
        }
        api.put(
            "/actions",
            &json!({ "action_type": "InstanceStart" }),
            "InstanceStart",
        )
        .await
    }

    /// Loads a snapshot into a fresh VMM and resumes it.
    async fn load(&self, handle: &FirecrackerHandle, spec: &VmSpec) -> Result<(), VmmError> {
        let api = &handle.api;
        logs_and_metrics(api).await?;
        // Binding fails with EADDRINUSE when the socket file exists.
        let _ = std::fs::remove_file(handle.jail.path(jail::VSOCK));
        let mut body = json!({
            "snapshot_path": jail::LOAD_STATE,
            "mem_backend": { "backend_type": "File", "backend_path": jail::LOAD_MEM },
            "vsock_override": { "uds_path": jail::VSOCK },
            "track_dirty_pages": true,
            "resume_vm": true,
        });
        if let Some(n) = &spec.network {
            // The clone's TAP has the same name in its own namespace; naming it anyway keeps
            // the load correct if the snapshot came from a VM whose TAP was named otherwise.
            body["network_overrides"] = json!([{ "iface_id": NET_IFACE, "host_dev_name": n.tap }]);
        }
        if crate::sys::kernel_at_least(5, 16) {
            // KVM_CLOCK_REALTIME: the guest clock jumps to now instead of snapshot time.
            body["clock_realtime"] = json!(true);
        }
        handle
            .slow_api
            .put("/snapshot/load", &body, "snapshot load")
            .await
    }
}

#[async_trait::async_trait]
impl VmmDriver for FirecrackerDriver {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn accelerator(&self) -> &'static str {
        "kvm"
    }

    fn ready(&self) -> Result<(), String> {
        crate::executable(&self.config.binary)?;
        match &self.config.jailer {
            Some(j) => crate::executable(&j.jailer),
            None => Ok(()),
        }
    }

    async fn spawn(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, VmmError> {
        Ok(Box::new(self.spawn_handle(spec).await?))
    }

    async fn restore(&self, spec: &VmSpec, state: &Path) -> Result<Box<dyn VmHandle>, VmmError> {
        Ok(Box::new(self.restore_handle(spec, state).await?))
    }

    async fn attach(&self, spec: &VmSpec, pid: u32) -> Result<Box<dyn VmHandle>, VmmError> {
        // Plain or jailed (the jailer execs its copy `/<exec-name> --id <id> ...`; under
        // `--new-pid-ns` the recorded pid is that process as seen from here).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !jail::is_firecracker_of(&cmdline, &self.exec_name(), &spec.id) {
            return Err(VmmError::NotOurProcess(pid));
        }
        let jail = self.jail(&spec.id)?;
        let handle = self.handle(spec, &jail, pid, watch_pid(pid, jail.clone()));
        // The API must answer with this VM's id.
        let info = handle
            .api
            .call("GET", "/", None, "attach")
            .await
            .map_err(|_| VmmError::NotOurProcess(pid))?;
        let id = info
            .body
            .as_ref()
            .and_then(|b| b.get("id"))
            .and_then(|v| v.as_str());
        if id != Some(spec.id.as_str()) {
            return Err(VmmError::NotOurProcess(pid));
        }
        Ok(Box::new(handle))
    }
}

/// How long the phases of a start took (for benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimings {
    /// Process start until the API socket accepts connections.
    pub api_ready: Duration,
    /// Configuration and `InstanceStart` (cold boot) or `/snapshot/load` (restore).
    pub configured: Duration,
}

impl FirecrackerDriver {
    /// [`VmmDriver::spawn`] returning the concrete handle.
    pub async fn spawn_handle(&self, spec: &VmSpec) -> Result<FirecrackerHandle, VmmError> {
        let handle = self.start_jailed(spec, |_| Ok(())).await?;
        let t = std::time::Instant::now();
        if let Err(e) = self.configure(&handle, spec).await {
            let _ = handle.kill().await;
            return Err(e);
        }
        let mut handle = handle;
        handle.timings.configured = t.elapsed();
        Ok(handle)
    }

    /// A fresh jail with the VM's files (and whatever `extra` links in), and the VMM process
    /// in it; the jail is removed again if any of that fails.
    async fn start_jailed(
        &self,
        spec: &VmSpec,
        extra: impl FnOnce(&Jail) -> Result<(), VmmError>,
    ) -> Result<FirecrackerHandle, VmmError> {
        // Refused before anything is made when the host cannot apply the limits.
        let jailed = match &self.config.jailer {
            Some(opts) => Some((opts, self.config.cgroup_plan(spec.vcpu, spec.mem_mib)?)),
            None => None,
        };
        let jail = self.jail(&spec.id)?;
        if let Err(e) = self.prepare(spec, &jail).and_then(|()| extra(&jail)) {
            jail.remove();
            return Err(e);
        }
        let jailed = jailed.as_ref().map(|(opts, plan)| (*opts, plan));
        match self.start_process(spec, &jail, jailed).await {
            Ok(h) => Ok(h),
            Err(e) => {
                jail.remove();
                Err(e)
            }
        }
    }

    /// [`VmmDriver::restore`] returning the concrete handle.
    pub async fn restore_handle(
        &self,
        spec: &VmSpec,
        state: &Path,
    ) -> Result<FirecrackerHandle, VmmError> {
        let handle = self
            .start_jailed(spec, |jail| {
                jail.link_read_only(state, jail::LOAD_STATE)?;
                jail.link_read_only(&mem_path(state), jail::LOAD_MEM)
            })
            .await?;
        let t = std::time::Instant::now();
        if let Err(e) = self.load(&handle, spec).await {
            let _ = handle.kill().await;
            return Err(VmmError::Migration(format!("restore: {e}")));
        }
        let mut handle = handle;
        handle.timings.configured = t.elapsed();
        Ok(handle)
    }
}

/// Guest memory file written next to a saved state file.
pub fn mem_path(state: &Path) -> PathBuf {
    let mut s = state.as_os_str().to_owned();
    s.push(".mem");
    PathBuf::from(s)
}

/// A running Firecracker process.
pub struct FirecrackerHandle {
    pid: u32,
    jail: Jail,
    run_dir: PathBuf,
    api: ApiClient,
    slow_api: ApiClient,
    exit: crate::ExitRx,
    config: Arc<FirecrackerConfig>,
    timings: StartTimings,
}

impl FirecrackerHandle {
    /// How long starting this VMM took.
    pub fn timings(&self) -> StartTimings {
        self.timings
    }

    /// The VM's directory layout.
    pub fn jail(&self) -> &Jail {
        &self.jail
    }

    /// The API client (for tests and benchmarks).
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    fn check_running(&self, operation: &'static str) -> Result<(), VmmError> {
        match self.exit_status() {
            Some(exit) => Err(VmmError::Exited {
                operation,
                detail: exit.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Runs an API call, reporting a VMM that died meanwhile as such.
    async fn guarded<T>(
        &self,
        operation: &'static str,
        fut: impl std::future::Future<Output = Result<T, VmmError>>,
    ) -> Result<T, VmmError> {
        self.check_running(operation)?;
        match fut.await {
            Ok(v) => Ok(v),
            Err(e) => {
                // Give the exit watcher a moment to see a VMM that just died.
                if self.wait_exit(Duration::from_millis(50)).await.is_some() {
                    self.check_running(operation)?;
                }
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl VmHandle for FirecrackerHandle {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn agent_socket(&self) -> PathBuf {
        self.jail.path(jail::VSOCK)
    }

    async fn connect_agent(&self) -> Result<UnixStream, VmmError> {
        self.check_running("agent connect")?;
        let path = self.agent_socket();
        let port = self.config.agent_port;
        let timeout = self.config.vsock_connect_timeout;
        let fut = async {
            let mut s = UnixStream::connect(&path).await?;
            s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
            // Byte by byte: what follows the newline already belongs to the agent.
            let mut line = Vec::with_capacity(32);
            let mut b = [0u8; 1];
            loop {
                if s.read(&mut b).await? == 0 {
                    return Err(VmmError::Control(format!(
                        "vsock port {port}: closed without OK (no listener in the guest yet)"
                    )));
                }
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
                if line.len() > 64 {
                    return Err(VmmError::Control("vsock: overlong CONNECT reply".into()));
                }
            }
            if line.starts_with(b"OK ") {
                Ok(s)
            } else {
                Err(VmmError::Control(format!(
                    "vsock: unexpected CONNECT reply `{}`",
                    String::from_utf8_lossy(&line)
                )))
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| VmmError::Timeout {
                operation: "vsock CONNECT",
                timeout_ms: timeout.as_millis() as u64,
            })?
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.guarded(
            "pause",
            self.api
                .patch("/vm", &json!({ "state": "Paused" }), "pause"),
        )
        .await
    }

    async fn resume(&self) -> Result<(), VmmError> {
        self.guarded(
            "resume",
            self.api
                .patch("/vm", &json!({ "state": "Resumed" }), "resume"),
        )
        .await
    }

    async fn save_state(&self, path: &Path) -> Result<(), VmmError> {
        // Fresh names: a restored VM maps `load.mem`, which must never be overwritten.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let state_name = format!("save-{n}.vmstate");
        let mem_name = format!("save-{n}.mem");
        let body = json!({
            "snapshot_type": "Full",
            "snapshot_path": state_name,
            "mem_file_path": mem_name,
        });
        let created = self
            .guarded(
                "snapshot create",
                self.slow_api
                    .put("/snapshot/create", &body, "snapshot create"),
            )
            .await;
        let (state_in, mem_in) = (self.jail.path(&state_name), self.jail.path(&mem_name));
        let moved = created.and_then(|()| {
            move_file(&state_in, path)?;
            move_file(&mem_in, &mem_path(path))?;
            self.jail.seal(path)?;
            self.jail.seal(&mem_path(path))
        });
        if moved.is_err() {
            let _ = std::fs::remove_file(&state_in);
            let _ = std::fs::remove_file(&mem_in);
        }
        moved.map_err(|e| match e {
            e @ (VmmError::Exited { .. } | VmmError::Timeout { .. }) => e,
            e => VmmError::Migration(format!("save: {e}")),
        })
    }

    async fn kill(&self) -> Result<(), VmmError> {
        // SIGKILL: SIGTERM is ignored by Firecracker as PID 1 of its namespace.
        let killed = crate::kill_and_wait(self.pid, &self.exit).await;
        self.jail.remove();
        killed
    }

    async fn wait(&self) -> VmmExit {
        crate::wait_for_exit(&self.exit, None)
            .await
            .unwrap_or(VmmExit::UNKNOWN)
    }

    async fn wait_exit(&self, timeout: Duration) -> Option<VmmExit> {
        crate::wait_for_exit(&self.exit, Some(timeout)).await
    }

    fn exit_status(&self) -> Option<VmmExit> {
        self.exit.borrow().clone()
    }
}

/// Watches a VMM that is not a tokio child (jailed, or attached after a restart): reaps it
/// when it is ours (we are its subreaper), else polls until it is gone. Removes the jail once
/// the process has ended.
fn watch_pid(pid: u32, jail: Jail) -> crate::ExitRx {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let exit = loop {
            match crate::sys::try_reap(pid) {
                crate::sys::Reap::Exited(code, signal) => break VmmExit { code, signal },
                crate::sys::Reap::Running => {}
                crate::sys::Reap::NotOurs => {
                    if !crate::sys::process_alive(pid) || crate::sys::is_zombie(pid) {
                        break VmmExit::UNKNOWN;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        jail.remove();
        let _ = tx.send(Some(exit));
    });
    rx
}

/// Renames `from` to `to`, copying across filesystems.
fn move_file(from: &Path, to: &Path) -> Result<(), VmmError> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)?;
    std::fs::remove_file(from)?;
    Ok(())
}

fn read_pid(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The last bytes of a log file, for error messages.
fn tail(p: &Path) -> String {
    let data = std::fs::read(p).unwrap_or_default();
    let start = data.len().saturating_sub(1024);
    String::from_utf8_lossy(&data[start..]).trim().to_string()
}

/// The per-VM log and metrics files (in the jail), set first on every fresh VMM.
async fn logs_and_metrics(api: &api::ApiClient) -> Result<(), VmmError> {
    api.put(
        "/logger",
        &json!({ "log_path": jail::LOG, "level": "Warning", "show_level": true }),
        "configure logger",
    )
    .await?;
    api.put(
        "/metrics",
        &json!({ "metrics_path": jail::METRICS }),
        "configure metrics",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disk;

    fn spec() -> VmSpec {
        VmSpec {
            id: "abc-1".into(),
            run_dir: "/run/vm".into(),
            vcpu: 2,
            mem_mib: 256,
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs".into(),
            kernel_args: vec!["bandsox.root=/dev/vda".into()],
            disks: vec![Disk {
                path: "/img/a.ext4".into(),
                read_only: true,
            }],
            network: None,
        }
    }

    fn driver_on(mounts: &Path) -> FirecrackerDriver {
        let mut c = FirecrackerConfig::new(
            "/usr/bin/firecracker".into(),
            Some("/usr/bin/jailer".into()),
            "/srv/bs/jail".into(),
        );
        c.uid = 1000;
        c.gid = 1001;
        c.cgroup_mounts = mounts.into();
        FirecrackerDriver {
            config: Arc::new(c),
        }
    }

    fn args_on(d: &FirecrackerDriver) -> Vec<String> {
        let jail = d.jail("abc-1").unwrap();
        let plan = d.config.cgroup_plan(2, 256).unwrap();
        let opts = d.config.jailer.clone().unwrap();
        jail::jailer_args(
            &opts,
            &d.config.binary,
            &d.config.chroot_base,
            &jail,
            &spec(),
            &plan,
        )
    }

    #[test]
    fn jailer_command_line_on_a_v2_host() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = dir.path().join("mounts");
        let root = dir.path().join("cg");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(
            &mounts,
            format!("cgroup2 {} cgroup2 rw 0 0\n", root.display()),
        )
        .unwrap();
        let d = driver_on(&mounts);
        let jail = d.jail("abc-1").unwrap();
        assert_eq!(
            jail.root,
            PathBuf::from("/srv/bs/jail/firecracker/abc-1/root")
        );
        assert_eq!(jail.cgroups, [root.join("firecracker/abc-1")]);
        let s = args_on(&d).join(" ");
        assert_eq!(
            s,
            "--id abc-1 --exec-file /usr/bin/firecracker --uid 1000 --gid 1001 \
             --chroot-base-dir /srv/bs/jail --cgroup-version 2 --cgroup cpu.max=200000 100000 \
             --cgroup memory.max=536870912 --new-pid-ns -- --api-sock /api.sock"
        );
        assert!(d
            .boot_args(&spec())
            .ends_with("bandsox.vsock=52 bandsox.root=/dev/vda"));
    }

    #[test]
    fn jailer_command_line_on_a_hybrid_host() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = dir.path().join("mounts");
        let unified = dir.path().join("unified");
        std::fs::create_dir(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "hugetlb\n").unwrap();
        std::fs::write(
            &mounts,
            format!(
                "cgroup /c/cpu cgroup rw,cpu 0 0\ncgroup /c/memory cgroup rw,memory 0 0\ncgroup2 {} cgroup2 rw 0 0\n",
                unified.display()
            ),
        )
        .unwrap();
        let d = driver_on(&mounts);
        let s = args_on(&d).join(" ");
        assert!(
            s.contains(
                "--cgroup-version 1 --cgroup cpu.cfs_period_us=100000 \
                 --cgroup cpu.cfs_quota_us=200000 --cgroup memory.limit_in_bytes=536870912 --new-pid-ns"
            ),
            "{s}"
        );
        // Cleanup covers every hierarchy the jailer may have used.
        assert_eq!(
            d.jail("abc-1").unwrap().cgroups,
            [
                unified.join("firecracker/abc-1"),
                PathBuf::from("/c/cpu/firecracker/abc-1"),
                PathBuf::from("/c/memory/firecracker/abc-1"),
            ]
        );
    }

    #[test]
    fn missing_limits_refuse_unless_optional() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = dir.path().join("mounts");
        std::fs::write(&mounts, "cgroup2 /nowhere cgroup2 rw 0 0\n").unwrap();
        let d = driver_on(&mounts);
        let err = d.config.cgroup_plan(1, 128).unwrap_err().to_string();
        assert!(
            err.contains("`cpu` and `memory` unavailable")
                && err.contains("BANDSOX_FC_CGROUP_LIMITS=optional"),
            "{err}"
        );
        let mut c = (*d.config).clone();
        c.cgroup_limits = CgroupLimits::Optional;
        let plan = c.cgroup_plan(1, 128).unwrap();
        assert_eq!(
            (plan.version, &plan.missing[..]),
            (None, &["cpu", "memory"][..])
        );
        let d = FirecrackerDriver {
            config: Arc::new(c),
        };
        let jail = d.jail("abc-1").unwrap();
        let args = jail::jailer_args(
            d.config.jailer.as_ref().unwrap(),
            &d.config.binary,
            &d.config.chroot_base,
            &jail,
            &spec(),
            &plan,
        );
        assert!(!args.iter().any(|a| a.starts_with("--cgroup")), "{args:?}");
    }

    #[test]
    fn plain_command_line_and_process_recognition() {
        let args = jail::firecracker_args("abc-1", Path::new("/j/api.sock"));
        assert_eq!(args, ["--id", "abc-1", "--api-sock", "/j/api.sock"]);
        let line = |words: &[&str]| words.join("\0").into_bytes();
        let yes = [
            // Plain, as the driver starts it.
            line(&[
                "/usr/bin/firecracker",
                "--id",
                "abc-1",
                "--api-sock",
                "/j/api.sock",
                "",
            ]),
            // Under the jailer: its copy, with the jailer's own options first.
            line(&[
                "/firecracker",
                "--id",
                "abc-1",
                "--start-time-us",
                "1",
                "--start-time-cpu-us",
                "2",
                "--parent-cpu-time-us",
                "3",
                "--api-sock",
                "/api.sock",
                "",
            ]),
        ];
        for l in &yes {
            assert!(jail::is_firecracker_of(l, "firecracker", "abc-1"));
        }
        let no = [
            line(&["/usr/bin/firecracker", "--id=abc-1", ""]),
            line(&["/usr/bin/firecracker", "--id", "abc-10", ""]),
            line(&["/usr/bin/firecracker", "--id", "abc", ""]),
            line(&[
                "/usr/bin/jailer",
                "--id",
                "abc-1",
                "--exec-file",
                "/usr/bin/firecracker",
                "",
            ]),
            line(&[
                "/usr/bin/firecracker",
                "--api-sock",
                "/a",
                "--",
                "--id",
                "abc-1",
                "",
            ]),
            line(&["/bin/sleep", "--id", "abc-1", ""]),
            Vec::new(),
        ];
        for l in &no {
            assert!(
                !jail::is_firecracker_of(l, "firecracker", "abc-1"),
                "{:?}",
                String::from_utf8_lossy(l)
            );
        }
    }

    #[test]
    fn overlong_jail_path_is_refused() {
        let long = format!("/{}", "x".repeat(120));
        let c = FirecrackerConfig::new("fc".into(), None, long.into());
        let d = FirecrackerDriver::new(c);
        assert!(matches!(d.jail("abc"), Err(VmmError::SocketPathTooLong(_))));
    }

    #[test]
    fn memory_file_sits_next_to_the_state() {
        assert_eq!(
            mem_path(Path::new("/s/state")),
            PathBuf::from("/s/state.mem")
        );
    }
}
