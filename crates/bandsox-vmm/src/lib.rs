//! Virtual machine monitors behind one trait.
//!
//! [`VmmDriver`] starts a VM from a [`VmSpec`] and returns a [`VmHandle`] that owns the VMM
//! process: pause/resume, kill, exit status, and the agent channel (one byte stream to the guest
//! agent, opened with [`VmHandle::connect_agent`]). [`firecracker`] is the production backend
//! (jailer, REST API, vsock); [`qemu`] is the QEMU `microvm` backend used wherever Firecracker
//! cannot run.

use std::path::{Path, PathBuf};

pub mod firecracker;
pub mod qemu;
mod sys;

pub use sys::{kill_process, process_alive};

/// Errors from starting or controlling a VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("VMM binary `{binary}` not found; install it (Debian: apt-get install {package})")]
    BinaryMissing {
        binary: String,
        package: &'static str,
    },
    #[error("failed to start the VMM: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("socket path {0} is longer than the 107 bytes a Unix socket allows; use a shorter --storage path")]
    SocketPathTooLong(PathBuf),
    #[error("VMM exited during {operation}: {detail}")]
    Exited {
        operation: &'static str,
        detail: String,
    },
    #[error("VMM control channel: {0}")]
    Control(String),
    #[error("VMM did not answer {operation} within {timeout_ms} ms")]
    Timeout {
        operation: &'static str,
        timeout_ms: u64,
    },
    #[error("cgroup limits cannot be applied: {0}")]
    CgroupLimits(String),
    #[error("{0} is not a VMM process of this VM")]
    NotOurProcess(u32),
    #[error("saving or restoring VM state failed: {0}")]
    Migration(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A disk attached to the VM, in attachment order (`/dev/vda`, `/dev/vdb`, ...).
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Everything a backend needs to boot a VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// VM id (already validated by the caller: `[a-z0-9-]`).
    pub id: String,
    /// Directory owned by this VM; the backend puts its sockets and logs here.
    pub run_dir: PathBuf,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Extra kernel arguments (`key=value`) for the guest agent.
    pub kernel_args: Vec<String>,
    pub disks: Vec<Disk>,
    /// A NIC backed by a TAP inside a network namespace; `None`: no NIC.
    pub network: Option<NetSpec>,
}

/// The VM's NIC: the VMM runs inside network namespace `netns` and opens TAP `tap` there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Name under `/run/netns`.
    pub netns: String,
    pub tap: String,
    pub guest_mac: String,
}

/// How a VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl VmmExit {
    /// An end whose status could not be read (the process was not our child).
    pub const UNKNOWN: VmmExit = VmmExit {
        code: None,
        signal: None,
    };
}

/// Where a driver's watcher task publishes how its VMM process ended (`None` while it runs).
/// Both drivers' handles answer [`VmHandle::wait`], [`VmHandle::wait_exit`] and
/// [`VmHandle::exit_status`] from it.
pub(crate) type ExitRx = tokio::sync::watch::Receiver<Option<VmmExit>>;

/// Waits until `rx` reports the exit, at most `timeout` when given. A watcher that went away
/// without reporting leaves whatever it last published.
pub(crate) async fn wait_for_exit(
    rx: &ExitRx,
    timeout: Option<std::time::Duration>,
) -> Option<VmmExit> {
    let mut rx = rx.clone();
    let seen = async { rx.wait_for(|s| s.is_some()).await.ok()?.clone() };
    let seen = match timeout {
        Some(t) => tokio::time::timeout(t, seen).await.ok().flatten(),
        None => seen.await,
    };
    seen.or_else(|| rx.borrow().clone())
}

/// SIGKILLs `pid` unless `rx` already reports its exit, then waits up to 10 s for the report.
pub(crate) async fn kill_and_wait(pid: u32, rx: &ExitRx) -> Result<(), VmmError> {
    if rx.borrow().is_none() {
        sys::kill_process(pid);
    }
    match wait_for_exit(rx, Some(std::time::Duration::from_secs(10))).await {
        Some(_) => Ok(()),
        None => Err(VmmError::Timeout {
            operation: "kill",
            timeout_ms: 10_000,
        }),
    }
}

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (_, Some(s)) => write!(f, "signal {s}"),
            _ => f.write_str("unknown status"),
        }
    }
}

/// `Ok` when `path` is an executable file (a binary the driver found at start-up may have been
/// removed by an upgrade since).
pub(crate) fn executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("{} is not an executable file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Starts VMs.
#[async_trait::async_trait]
pub trait VmmDriver: Send + Sync {
    /// Short backend name (`qemu`, `firecracker`).
    fn name(&self) -> &'static str;
    /// Accelerator in use (`kvm`, `tcg`).
    fn accelerator(&self) -> &'static str;
    /// Whether a VM could start now (its binaries are still there); why not, when not.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Spawns the VMM and starts the guest. Returns once the process runs; the guest agent
    /// may still be booting.
    async fn spawn(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, VmmError>;
    /// Starts a VM from a memory and device state file written by [`VmHandle::save_state`].
    /// `spec` must describe the same devices and memory size as the saved VM (disk paths may
    /// differ). Returns once the guest runs again.
    async fn restore(&self, spec: &VmSpec, state: &Path) -> Result<Box<dyn VmHandle>, VmmError>;
    /// Takes over a VMM process started by an earlier server process (after a restart).
    /// Fails if `pid` is not this VM's VMM.
    async fn attach(&self, spec: &VmSpec, pid: u32) -> Result<Box<dyn VmHandle>, VmmError>;
}

/// A running VMM process. Dropping the handle does not stop the VM; call [`VmHandle::kill`].
#[async_trait::async_trait]
pub trait VmHandle: Send + Sync {
    fn pid(&self) -> u32;
    /// Unix socket of the agent channel (QEMU: carries the stream directly; Firecracker: the
    /// hybrid vsock socket that needs a `CONNECT` first).
    fn agent_socket(&self) -> PathBuf;
    /// Opens a byte stream to the guest agent. The default connects to [`Self::agent_socket`];
    /// Firecracker connects to its hybrid vsock socket and forwards to the agent's port. Fails
    /// (retry later) while the guest agent does not listen yet.
    async fn connect_agent(&self) -> Result<tokio::net::UnixStream, VmmError> {
        Ok(tokio::net::UnixStream::connect(self.agent_socket()).await?)
    }
    /// Stops the vCPUs.
    async fn pause(&self) -> Result<(), VmmError>;
    /// Resumes the vCPUs.
    async fn resume(&self) -> Result<(), VmmError>;
    /// Writes the VM's memory and device state to `path`. The VM must be paused and stays
    /// paused.
    async fn save_state(&self, path: &Path) -> Result<(), VmmError>;
    /// Kills the VMM process and waits until it is reaped.
    async fn kill(&self) -> Result<(), VmmError>;
    /// Waits until the process has exited.
    async fn wait(&self) -> VmmExit;
    /// Waits up to `timeout` for the process to exit on its own (after a guest power-off).
    async fn wait_exit(&self, timeout: std::time::Duration) -> Option<VmmExit>;
    /// The exit status once the process has ended, else `None`.
    fn exit_status(&self) -> Option<VmmExit>;
}
