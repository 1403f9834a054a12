//! PID 1 boot: from the initramfs to the image's root filesystem.
//!
//! Mount `/proc`, `/sys`, `/dev`; load the kernel modules listed in `/lib/modules/load-order`;
//! read the `bandsox.*` keys of the kernel command line; mount the image's read-only root and the
//! writable layer (a block device or a tmpfs) as an overlay at `/newroot`; move `/dev`, `/proc`,
//! `/sys` into it; free the initramfs and switch root the way busybox `switch_root` does (the
//! agent keeps running); then mount `/dev/pts`, `/dev/shm`, `/run`, bring up `lo` and set the
//! hostname. `/tmp` stays on the writable layer (the VM's disk, as in a container), so it
//! holds as much as the disk, not half the RAM; `/dev/shm` is the RAM tmpfs.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::log::log;
use crate::sys;

/// Directory of the initramfs modules and their load order.
const MODULES_DIR: &str = "/lib/modules";
/// How long to wait for a block device to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// `PATH` every program starts with.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environment every program starts with.
pub fn base_env() -> Vec<(String, String)> {
    vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
    ]
}

/// Settings from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `bandsox.root=`: the image's read-only root block device (ext4).
    pub root: String,
    /// `bandsox.rootfstype=`: its filesystem type.
    pub root_fstype: String,
    /// `bandsox.data=`: optional writable block device (ext4) for the overlay's upper layer;
    /// a tmpfs when absent.
    pub data: Option<String>,
    /// `bandsox.hostname=`.
    pub hostname: Option<String>,
    /// `bandsox.port=`: name of the virtio-serial port to serve on.
    pub port: String,
    /// `bandsox.vsock=`: vsock port to serve on instead (Firecracker, which has no
    /// virtio-serial).
    pub vsock: Option<u32>,
    /// `bandsox.net=<ip>/<prefix>,<gateway>`: configuration of `eth0`.
    pub net: Option<NetParams>,
    /// `bandsox.dns=<ip>,<ip>`: nameservers for `/etc/resolv.conf`.
    pub dns: Vec<std::net::Ipv4Addr>,
}

/// The guest's IPv4 configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetParams {
    pub ip: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: std::net::Ipv4Addr,
}

impl NetParams {
    fn parse(v: &str) -> Option<Self> {
        let (cidr, gw) = v.split_once(',')?;
        let (ip, prefix) = cidr.split_once('/')?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        Some(Self {
            ip: ip.parse().ok()?,
            prefix,
            gateway: gw.parse().ok()?,
        })
    }
}

impl Default for BootParams {
    fn default() -> Self {
        Self {
            root: "/dev/vda".to_owned(),
            root_fstype: "ext4".to_owned(),
            data: None,
            hostname: None,
            port: bandsox_protocol::SERIAL_PORT_NAME.to_owned(),
            vsock: None,
            net: None,
            dns: Vec::new(),
        }
    }
}

/// Parses the `bandsox.*` keys of a kernel command line; other words are ignored.
pub fn parse_cmdline(cmdline: &str) -> BootParams {
    let mut p = BootParams::default();
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let value = value.to_owned();
        match key {
            "bandsox.root" if !value.is_empty() => p.root = value,
            "bandsox.rootfstype" if !value.is_empty() => p.root_fstype = value,
            "bandsox.data" => p.data = Some(value).filter(|v| !v.is_empty()),
            "bandsox.hostname" => p.hostname = Some(value).filter(|v| !v.is_empty()),
            "bandsox.port" if !value.is_empty() => p.port = value,
            "bandsox.vsock" => p.vsock = value.parse().ok(),
            "bandsox.net" => p.net = NetParams::parse(&value),
            "bandsox.dns" => {
                p.dns = value.split(',').filter_map(|a| a.parse().ok()).collect();
            }
            _ => {}
        }
    }
    p
}

/// Milliseconds spent in each boot phase, for the console's "ready" line.
#[derive(Debug, Default)]
pub struct BootTimings {
    phases: Vec<(&'static str, u128)>,
    last: Option<Instant>,
}

impl BootTimings {
    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        if let Some(last) = self.last {
            self.phases.push((phase, (now - last).as_millis()));
        }
        self.last = Some(now);
    }

    /// `modules=12 root=40 ...`
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .phases
            .iter()
            .map(|(p, ms)| format!("{p}={ms}"))
            .collect();
        parts.join(" ")
    }
}

/// Boots as PID 1. Returns the parsed parameters once `/` is the image's root.
pub fn boot() -> Result<(BootParams, BootTimings), String> {
    let mut t = BootTimings::default();
    t.mark("start");
    for dir in ["/proc", "/sys", "/dev"] {
        let _ = fs::create_dir_all(dir);
    }
    mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, None)?;
    mount("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, None)?;
    mount("devtmpfs", "/dev", "devtmpfs", NOSUID, Some("mode=0755"))?;

    t.mark("pseudofs");
    load_modules(Path::new(MODULES_DIR));
    t.mark("modules");

    let cmdline =
        fs::read_to_string("/proc/cmdline").map_err(|e| format!("read /proc/cmdline: {e}"))?;
    let params = parse_cmdline(&cmdline);

    wait_block_device(&params.root)?;
    t.mark("rootdev");
    mkdir("/lower")?;
    mount(
        &params.root,
        "/lower",
        &params.root_fstype,
        libc::MS_RDONLY,
        None,
    )?;

    mkdir("/rw")?;
    match &params.data {
        Some(dev) => {
            wait_block_device(dev)?;
            mount(dev, "/rw", "ext4", libc::MS_NOATIME, None)?;
        }
        None => mount("tmpfs", "/rw", "tmpfs", libc::MS_NOATIME, Some("mode=0755"))?,
    }
    mkdir("/rw/upper")?;
    mkdir("/rw/work")?;
    mkdir("/newroot")?;
    let overlay = "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work";
    if let Err(e) = mount("overlay", "/newroot", "overlay", 0, Some(overlay)) {
        // A kernel without overlayfs: run on the read-only root alone.
        log!("{e}; continuing with a read-only root");
        mount("/lower", "/newroot", "", libc::MS_BIND, None)?;
    }

    for dir in ["dev", "proc", "sys"] {
        let target = format!("/newroot/{dir}");
        let _ = fs::create_dir_all(&target);
        mount(&format!("/{dir}"), &target, "", libc::MS_MOVE, None)?;
    }
    t.mark("mounts");
    switch_root("/newroot")?;
    t.mark("switch");
    after_switch(&params);
    t.mark("setup");
    Ok((params, t))
}

/// busybox `switch_root`: free the initramfs, move the new root over `/`, chroot into it.
fn switch_root(new_root: &str) -> Result<(), String> {
    std::env::set_current_dir(new_root).map_err(|e| format!("chdir {new_root}: {e}"))?;
    match sys::fs_magic("/") {
        Ok(RAMFS_MAGIC | TMPFS_MAGIC) => {
            if let Ok(meta) = fs::symlink_metadata("/") {
                delete_same_device(Path::new("/"), meta.dev());
            }
        }
        Ok(magic) => log!("/ is not an initramfs (magic {magic:#x}); not freeing it"),
        Err(e) => log!("statfs /: {e}"),
    }
    sys::mount(".", "/", None, libc::MS_MOVE, None)
        .map_err(|e| format!("move {new_root} to /: {e}"))?;
    sys::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Removes everything under `dir` that lives on device `dev`, never crossing into mounts.
fn delete_same_device(dir: &Path, dev: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            delete_same_device(&path, dev);
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Mounts and settings that need the final root.
fn after_switch(params: &BootParams) {
    let mounts: &[(&str, &str, &str, libc::c_ulong, &str)] = &[
        (
            "devpts",
            "/dev/pts",
            "devpts",
            NOSUID | NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        ),
        ("shm", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", NOSUID | NODEV, "mode=0755"),
    ];
    for &(source, target, fstype, flags, data) in mounts {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(source, target, fstype, flags, Some(data)) {
            log!("{e}");
        }
    }
    disk_tmp();
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = symlink(target, link);
    }
    if let Err(e) = sys::interface_up("lo") {
        log!("bring up lo: {e}");
    }
    if let Some(net) = params.net {
        if let Err(e) = configure_eth0(net) {
            log!("configure eth0: {e}");
        }
    }
    if !params.dns.is_empty() {
        write_resolv_conf(&params.dns);
    }
    let hostname = params.hostname.clone().or_else(|| {
        fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    if let Err(e) = sys::sethostname(hostname.as_deref().unwrap_or("localhost")) {
        log!("set hostname: {e}");
    }
}

/// `/tmp` on the root's writable layer, world-writable and sticky. A tmpfs only when the root
/// cannot be written (a kernel without overlayfs).
fn disk_tmp() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = Path::new("/tmp");
    if fs::symlink_metadata(tmp).is_err() {
        let _ = fs::create_dir(tmp);
    }
    let probe = tmp.join(".bandsox-probe");
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            match fs::symlink_metadata(tmp) {
                Ok(m) if m.is_dir() && m.permissions().mode() & 0o7777 != 0o1777 => {
                    let _ = fs::set_permissions(tmp, fs::Permissions::from_mode(0o1777));
                }
                _ => {}
            }
        }
        Err(e) => {
            log!("/tmp is not writable on the root ({e}); using a tmpfs");
            if let Err(e) = mount("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, Some("mode=1777")) {
                log!("{e}");
            }
        }
    }
}

/// Configures `eth0` (the VM's only NIC) from `bandsox.net`. The device appears when
/// `virtio_net` probes it, which can lag module loading a little.
fn configure_eth0(net: NetParams) -> std::io::Result<()> {
    let mut tries = 0;
    while !Path::new("/sys/class/net/eth0").exists() && tries < 100 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        tries += 1;
    }
    sys::set_ipv4("eth0", net.ip, net.prefix)?;
    sys::interface_up("eth0")?;
    sys::add_default_route("eth0", net.gateway)
}

/// Writes `/etc/resolv.conf` in the VM's (overlay) root, replacing a symlink the image had.
fn write_resolv_conf(dns: &[std::net::Ipv4Addr]) {
    let path = Path::new("/etc/resolv.conf");
    if fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
        let _ = fs::create_dir_all("/etc");
        let _ = fs::remove_file(path);
    }
    let _ = fs::create_dir_all("/etc");
    let text: String = dns.iter().map(|a| format!("nameserver {a}\n")).collect();
    if let Err(e) = fs::write(path, text) {
        log!("write /etc/resolv.conf: {e}");
    }
}

/// Loads the modules named in `<dir>/load-order`, in order. Once the virtio-mmio bus driver is
/// in, drivers for virtio device types the VM does not have are skipped (a VM without a NIC
/// does not pay for `virtio_net`). Already-loaded modules are fine; other failures are logged
/// and skipped.
fn load_modules(dir: &Path) {
    let Ok(order) = fs::read_to_string(dir.join("load-order")) else {
        return; // an initramfs without modules (a kernel with the drivers built in)
    };
    let mut present: Option<Vec<u32>> = None;
    for file in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = module_name(file);
        let skip = match (&present, virtio_device_for(&name)) {
            (Some(ids), Some(id)) => !ids.contains(&id),
            _ => false,
        };
        let path = dir.join(file);
        if !skip {
            let result = fs::File::open(&path).and_then(|f| sys::finit_module(f.as_fd()));
            match result {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => log!("load module {file}: {e}"),
            }
            if name == "virtio_mmio" {
                // Devices are probed while the bus driver loads; an empty list means we cannot
                // tell, so everything is loaded.
                present = Some(virtio_device_ids()).filter(|ids| !ids.is_empty());
            }
        }
        // Free the initramfs copy as we go.
        let _ = fs::remove_file(&path);
    }
}

/// `virtio_rng.ko` -> `virtio_rng`.
fn module_name(file: &str) -> String {
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The virtio device type a module is only useful for (virtio spec device IDs).
fn virtio_device_for(module: &str) -> Option<u32> {
    match module {
        "virtio_net" | "net_failover" | "failover" => Some(1),
        "virtio_blk" => Some(2),
        "virtio_console" => Some(3),
        "virtio_rng" => Some(4),
        "vsock" | "vmw_vsock_virtio_transport_common" | "vmw_vsock_virtio_transport" => Some(19),
        _ => None,
    }
}

/// Device type IDs of the virtio devices on the bus (`/sys/bus/virtio/devices/*/device`).
fn virtio_device_ids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/sys/bus/virtio/devices") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let id = fs::read_to_string(e.path().join("device")).ok()?;
            u32::from_str_radix(id.trim().trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

/// Waits up to [`DEVICE_WAIT`] for `path` to be a block device.
fn wait_block_device(path: &str) -> Result<(), String> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        if fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "block device {path} did not appear within {} s",
                DEVICE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let fstype = (!fstype.is_empty()).then_some(fstype);
    sys::mount(source, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {source} on {target} ({}): {e}",
            fstype.unwrap_or("move/bind")
        )
    })
}

fn mkdir(path: &str) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("mkdir {path}: {e}"))
}

/// Milliseconds since the kernel started (`/proc/uptime`).
pub fn uptime_ms() -> Option<u64> {
    let s = fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Set under Firecracker, which has no power-off device: the guest ends the VM with a
/// keyboard-controller reset instead (`reboot=k` on its command line), on which Firecracker
/// exits.
static POWER_OFF_BY_RESET: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Makes [`power_off`] reset the machine instead (Firecracker).
pub fn power_off_by_reset() {
    POWER_OFF_BY_RESET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Syncs, kills every other process, remounts `/` read-only and powers off (or resets, see
/// [`power_off_by_reset`]). Never returns.
pub fn power_off() -> ! {
    log!("powering off");
    sys::sync();
    let _ = sys::kill(-1, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(20));
    sys::sync();
    if let Err(e) = sys::mount("none", "/", None, libc::MS_REMOUNT | libc::MS_RDONLY, None) {
        log!("remount / read-only: {e}");
    }
    sys::sync();
    let e = if POWER_OFF_BY_RESET.load(std::sync::atomic::Ordering::Relaxed) {
        sys::restart()
    } else {
        sys::power_off()
    };
    log!("power off failed: {e}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The `set_identity` op: a restored clone's own hostname and machine id. The hostname is
/// a DNS label (1 to 63 of `[A-Za-z0-9-]`, no leading `-`); the machine id 32 lowercase hex
/// digits. `/etc/machine-id` and `/etc/hostname` are replaced, never written through a link.
pub fn set_identity(hostname: &str, machine_id: &str) -> bandsox_protocol::Reply {
    use bandsox_protocol::{ErrorBody, ErrorCode, Reply, ReplyBody};
    let label_ok = !hostname.is_empty()
        && hostname.len() <= 63
        && !hostname.starts_with('-')
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let id_ok = machine_id.len() == 32
        && machine_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !label_ok || !id_ok {
        return Reply::Error(ErrorBody::new(
            ErrorCode::BadRequest,
            "set_identity needs a hostname label and a 32-hex-digit machine id",
        ));
    }
    if let Err(e) = sys::sethostname(hostname) {
        return Reply::Error(crate::server::io_error_body("set the hostname", &e));
    }
    for (path, text) in [("/etc/hostname", hostname), ("/etc/machine-id", machine_id)] {
        let _ = fs::create_dir_all("/etc");
        let _ = fs::remove_file(path);
        if let Err(e) = fs::write(path, format!("{text}\n")) {
            return Reply::Error(crate::server::io_error_body(&format!("write {path}"), &e));
        }
    }
    Reply::Ok(ReplyBody::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keys() {
        let p = parse_cmdline(
            "console=ttyS0 quiet panic=-1 bandsox.root=/dev/vdb bandsox.data=/dev/vdc \
             bandsox.hostname=box-1 bandsox.port=org.test.port bandsox.vsock=52 bandsox.unknown=1\n",
        );
        assert_eq!(
            p,
            BootParams {
                root: "/dev/vdb".into(),
                root_fstype: "ext4".into(),
                data: Some("/dev/vdc".into()),
                hostname: Some("box-1".into()),
                port: "org.test.port".into(),
                vsock: Some(52),
                net: None,
                dns: Vec::new(),
            }
        );
        let n = parse_cmdline("bandsox.net=172.31.0.2/24,172.31.0.1 bandsox.dns=1.1.1.1,x,8.8.8.8");
        assert_eq!(
            n.net,
            Some(NetParams {
                ip: "172.31.0.2".parse().unwrap(),
                prefix: 24,
                gateway: "172.31.0.1".parse().unwrap(),
            })
        );
        assert_eq!(n.dns.len(), 2);
        assert_eq!(parse_cmdline("bandsox.net=1.2.3.4/40,1.1.1.1").net, None);
        let d = parse_cmdline("console=ttyS0 bandsox.root= bandsox.data=");
        assert_eq!(module_name("virtio-rng.ko"), "virtio_rng");
        assert_eq!(virtio_device_for("virtio_rng"), Some(4));
        assert_eq!(virtio_device_for("overlay"), None);
        assert_eq!(d, BootParams::default());
        assert_eq!(d.port, bandsox_protocol::SERIAL_PORT_NAME);
    }
}
