//! QEMU `microvm` backend.
//!
//! One `qemu-system-x86_64` process per VM, controlled over QMP. The guest agent's channel is
//! a `virtserialport` backed by a Unix socket in the VM's run directory (not vsock: a QEMU VM
//! with `vhost-user-vsock` cannot be migrated, so it could never be snapshotted).
//!
//! The accelerator is KVM where KVM runs ordinary guests, TCG otherwise: a PVM nested
//! hypervisor (`/sys/module/kvm_pvm`) or a missing `/dev/kvm` means TCG. `BANDSOX_ACCEL`
//! (`kvm` or `tcg`) overrides the detection.

pub mod qmp;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::{VmHandle, VmSpec, VmmDriver, VmmError, VmmExit};
use qmp::Qmp;

/// Default QEMU binary name.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// How long QMP may take to appear after the process starts.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest Unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// CPU virtualisation used by QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// Picks the accelerator for this host (see the module docs).
    pub fn detect() -> Self {
        match bandsox_config::get(bandsox_config::ACCEL).as_deref() {
            Some("kvm") => return Self::Kvm,
            Some("tcg") => return Self::Tcg,
            _ => {}
        }
        if Path::new("/sys/module/kvm_pvm").exists() || !Path::new("/dev/kvm").exists() {
            Self::Tcg
        } else {
            Self::Kvm
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuDriver {
    binary: PathBuf,
    accel: Accel,
    tsc_khz: Option<u64>,
}

impl QemuDriver {
    /// Finds the QEMU binary (`BANDSOX_QEMU_BIN` or `PATH`) and detects the accelerator.
    pub fn new() -> Result<Self, VmmError> {
        let binary = match bandsox_config::get_os(bandsox_config::QEMU_BIN) {
            Some(p) => PathBuf::from(p),
            None => find_in_path(QEMU_BINARY).ok_or(VmmError::BinaryMissing {
                binary: QEMU_BINARY.into(),
                package: "qemu-system-x86",
            })?,
        };
        Ok(Self {
            binary,
            accel: Accel::detect(),
            tsc_khz: host_tsc_khz(),
        })
    }

    /// The full QEMU argument list for `spec` (exposed for tests and benchmarks).
    pub fn command_line(&self, spec: &VmSpec) -> Result<Vec<String>, VmmError> {
        let qmp = socket_path(&spec.run_dir, "qmp.sock")?;
        let agent = socket_path(&spec.run_dir, "agent.sock")?;
        let console = spec.run_dir.join("console.log");
        let mut args: Vec<String> = vec![
            "-M".into(),
            "microvm,acpi=on".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-monitor".into(),
            "none".into(),
        ];
        match self.accel {
            Accel::Tcg => {
                args.extend(["-accel", "tcg,tb-size=32", "-cpu", "max"].map(String::from))
            }
            Accel::Kvm => args.extend(["-accel", "kvm", "-cpu", "host"].map(String::from)),
        }
        args.extend([
            "-m".into(),
            format!("{}M", spec.mem_mib),
            "-smp".into(),
            spec.vcpu.to_string(),
            "-serial".into(),
            format!("file:{}", console.display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initramfs.display().to_string(),
            "-append".into(),
            self.kernel_cmdline(spec),
        ]);
        for (i, disk) in spec.disks.iter().enumerate() {
            args.push("-drive".into());
            args.push(format!(
                "id=disk{i},file={},format=raw,if=none{}",
                escape_opt(&disk.path.display().to_string()),
                if disk.read_only { ",readonly=on" } else { "" }
            ));
            args.push("-device".into());
            args.push(format!("virtio-blk-device,drive=disk{i}"));
        }
        args.extend([
            "-device".into(),
            "virtio-rng-device".into(),
            "-device".into(),
            "virtio-serial-device,max_ports=2".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                escape_opt(&agent.display().to_string())
            ),
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                bandsox_protocol::SERIAL_PORT_NAME
            ),
        ]);
        if let Some(net) = &spec.network {
            args.extend([
                "-netdev".into(),
                format!(
                    "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
                    escape_opt(&net.tap)
                ),
                "-device".into(),
                format!(
                    "virtio-net-device,netdev=net0,mac={}",
                    escape_opt(&net.guest_mac)
                ),
            ]);
        }
        Ok(args)
    }

    fn kernel_cmdline(&self, spec: &VmSpec) -> String {
        let mut cmdline = String::from("console=ttyS0 quiet panic=-1");
        if self.accel == Accel::Tcg {
            // Without these about one boot in three hangs at TSC calibration on a busy host.
            if let Some(khz) = self.tsc_khz {
                cmdline.push_str(&format!(" tsc_early_khz={khz}"));
            }
            cmdline.push_str(" tsc=reliable");
        }
        for a in &spec.kernel_args {
            cmdline.push(' ');
            cmdline.push_str(a);
        }
        cmdline
    }
}

#[async_trait::async_trait]
impl VmmDriver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accelerator(&self) -> &'static str {
        self.accel.name()
    }

    fn ready(&self) -> Result<(), String> {
        crate::executable(&self.binary)
    }

    async fn spawn(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, VmmError> {
        Ok(Box::new(self.start_process(spec, None)?))
    }

    async fn restore(&self, spec: &VmSpec, state: &Path) -> Result<Box<dyn VmHandle>, VmmError> {
        let handle = self.start_process(spec, Some(state))?;
        let restored = async {
            wait_migration(&handle, "restore").await?;
            handle.qmp_execute("cont", None).await?;
            Ok::<_, VmmError>(())
        };
        if let Err(e) = restored.await {
            let _ = handle.kill().await;
            return Err(e);
        }
        Ok(Box::new(handle))
    }

    async fn attach(&self, spec: &VmSpec, pid: u32) -> Result<Box<dyn VmHandle>, VmmError> {
        let qmp = spec.run_dir.join("qmp.sock");
        if !crate::sys::cmdline_contains(pid, qmp.as_os_str().as_encoded_bytes()) {
            return Err(VmmError::NotOurProcess(pid));
        }
        // Not our child: poll for its end (the process is reaped by whoever adopted it).
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            while crate::sys::process_alive(pid) && !crate::sys::is_zombie(pid) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let _ = exit_tx.send(Some(VmmExit::UNKNOWN));
        });
        let handle = QemuHandle {
            pid,
            run_dir: spec.run_dir.clone(),
            exit: exit_rx,
            qmp: Arc::new(Mutex::new(None)),
        };
        settle_migration(&handle).await?;
        Ok(Box::new(handle))
    }
}

/// Cancels a state save that an earlier server left running (it was abandoned with that
/// server) and waits until QEMU has left the migration states, so the VM can be continued.
async fn settle_migration(handle: &QemuHandle) -> Result<(), VmmError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut cancelled = false;
    loop {
        let info = handle.qmp_execute("query-migrate", None).await?;
        let status = info
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("none");
        if !matches!(
            status,
            "setup" | "active" | "device" | "pre-switchover" | "cancelling"
        ) {
            return Ok(());
        }
        if !cancelled {
            handle.qmp_execute("migrate_cancel", None).await?;
            cancelled = true;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(VmmError::Timeout {
                operation: "cancel an interrupted snapshot",
                timeout_ms: 30_000,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl QemuDriver {
    /// Spawns QEMU (optionally waiting for incoming state) and a task that reaps it.
    fn start_process(
        &self,
        spec: &VmSpec,
        incoming: Option<&Path>,
    ) -> Result<QemuHandle, VmmError> {
        let mut args = self.command_line(spec)?;
        if let Some(state) = incoming {
            args.push("-incoming".into());
            args.push(format!(
                "exec:cat {}",
                shell_quote(&state.display().to_string())
            ));
        }
        let log = std::fs::File::create(spec.run_dir.join("qemu.log"))?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: a Ctrl-C on the server's terminal must not kill the VMs.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(net) = &spec.network {
            let ns = std::fs::File::open(Path::new("/run/netns").join(&net.netns))?;
            crate::sys::join_netns_before_exec(&mut cmd, ns);
        }
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::BinaryMissing {
                binary: self.binary.display().to_string(),
                package: "qemu-system-x86",
            },
            _ => VmmError::Spawn(e),
        })?;
        let pid = child.id().ok_or_else(|| VmmError::Exited {
            operation: "spawn",
            detail: "process ended before it could be tracked".into(),
        })?;
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let exit = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    VmmExit {
                        code: s.code(),
                        signal: s.signal(),
                    }
                }
                Err(_) => VmmExit::UNKNOWN,
            };
            let _ = exit_tx.send(Some(exit));
        });
        Ok(QemuHandle {
            pid,
            run_dir: spec.run_dir.clone(),
            exit: exit_rx,
            qmp: Arc::new(Mutex::new(None)),
        })
    }
}

/// Polls `query-migrate` until the migration completed; errors when it failed.
async fn wait_migration(handle: &QemuHandle, operation: &'static str) -> Result<(), VmmError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let info = handle.qmp_execute("query-migrate", None).await?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = info
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or("no detail");
                return Err(VmmError::Migration(format!("{operation}: {why}")));
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(VmmError::Timeout {
                operation,
                timeout_ms: 600_000,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Quotes a word for `/bin/sh` (QEMU runs `exec:` migration URIs through the shell).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A running QEMU process.
pub struct QemuHandle {
    pid: u32,
    run_dir: PathBuf,
    exit: crate::ExitRx,
    qmp: Arc<Mutex<Option<Qmp>>>,
}

impl QemuHandle {
    async fn qmp_execute(
        &self,
        command: &'static str,
        args: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VmmError> {
        if let Some(exit) = self.exit_status() {
            return Err(VmmError::Exited {
                operation: command,
                detail: exit.to_string(),
            });
        }
        let mut guard = self.qmp.lock().await;
        if guard.is_none() {
            *guard = Some(Qmp::connect(&self.run_dir.join("qmp.sock"), QMP_CONNECT_TIMEOUT).await?);
        }
        let Some(qmp) = guard.as_mut() else {
            return Err(VmmError::Control("QMP session missing".into()));
        };
        match qmp.execute(command, args).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // Drop a broken session so the next call reconnects.
                *guard = None;
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl VmHandle for QemuHandle {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn agent_socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.qmp_execute("stop", None).await.map(drop)
    }

    async fn resume(&self) -> Result<(), VmmError> {
        self.qmp_execute("cont", None).await.map(drop)
    }

    async fn save_state(&self, path: &Path) -> Result<(), VmmError> {
        // The default bandwidth cap (32 MiB/s) would make saving slow for no reason.
        self.qmp_execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": 100u64 << 30 })),
        )
        .await?;
        let uri = format!("exec:cat > {}", shell_quote(&path.display().to_string()));
        self.qmp_execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .await?;
        wait_migration(self, "save").await
    }

    async fn kill(&self) -> Result<(), VmmError> {
        crate::kill_and_wait(self.pid, &self.exit).await
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

/// Escapes a value for QEMU's comma-separated option syntax (`,` is written `,,`).
fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

fn socket_path(dir: &Path, name: &str) -> Result<PathBuf, VmmError> {
    let p = dir.join(name);
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(VmmError::SocketPathTooLong(p));
    }
    Ok(p)
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo`'s `cpu MHz` line.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disk;

    fn spec(dir: &str) -> VmSpec {
        VmSpec {
            id: "abc".into(),
            run_dir: PathBuf::from(dir),
            vcpu: 2,
            mem_mib: 256,
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs".into(),
            kernel_args: vec!["bandsox.root=/dev/vda".into()],
            disks: vec![Disk {
                path: "/img/a,b.ext4".into(),
                read_only: true,
            }],
            network: None,
        }
    }

    #[test]
    fn tcg_command_line_has_tsc_args_and_escapes_commas() {
        let d = QemuDriver {
            binary: "qemu".into(),
            accel: Accel::Tcg,
            tsc_khz: Some(2_596_098),
        };
        let args = d.command_line(&spec("/run/vm")).unwrap();
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.contains("tsc_early_khz=2596098 tsc=reliable"));
        assert!(append.ends_with("bandsox.root=/dev/vda"));
        assert!(args
            .contains(&"id=disk0,file=/img/a,,b.ext4,format=raw,if=none,readonly=on".to_string()));
        assert!(args.contains(&"tcg,tb-size=32".to_string()));
    }

    #[test]
    fn overlong_socket_path_is_refused() {
        let d = QemuDriver {
            binary: "qemu".into(),
            accel: Accel::Kvm,
            tsc_khz: None,
        };
        let long = format!("/{}", "x".repeat(120));
        assert!(matches!(
            d.command_line(&spec(&long)),
            Err(VmmError::SocketPathTooLong(_))
        ));
    }
}
