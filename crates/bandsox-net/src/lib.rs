//! Linux network plumbing of bandsox VMs: one network namespace per VM holding the VM's TAP,
//! a veth pair to the host, and nftables rules of our own.
//!
//! Layout of one VM (lease `n`, block `10.231.0.0 + 4n`, a /30):
//!
//! ```text
//!  host: bsxv<n> = block+1/30  <── veth ──>  netns bsx-<vm id>: veth0 = block+2/30
//!                                                     tap0 = 172.31.0.1/24 ── QEMU ── guest eth0 = 172.31.0.2/24
//! ```
//!
//! Every guest has the same address ([`GUEST_IP`]), so a restored clone needs no
//! reconfiguration. The namespace DNATs everything sent to `block+2` (the VM's *host-side
//! address*, what the API reports as `guest_ip`) to the guest, and masquerades the guest's
//! egress behind `block+2`. The host masquerades that again out of whichever interface routes
//! it. Isolation lives in two places: the namespace only forwards guest traffic to
//! destinations outside the pool and link-local, and never lets the guest open a connection to
//! the namespace itself; the host table `inet bandsox` drops connections from `bsxv*` to the
//! host and between `bsxv*` interfaces.
//!
//! Everything is done with the `ip` and `nft` commands (iproute2, nftables). Host-level
//! changes are serialised by an advisory lock on [`LOCK_FILE`].

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};

mod sys;

/// The address every guest has on its `eth0`.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
/// The guest's gateway (the TAP's address inside the namespace).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
/// Prefix length of the guest network.
pub const GUEST_PREFIX: u8 = 24;
/// The guest NIC's MAC address (the same in every VM, like its IP).
pub const GUEST_MAC: &str = "02:62:73:00:00:02";
/// The TAP's MAC address: fixed so a restored guest's ARP entry for the gateway stays right.
pub const TAP_MAC: &str = "02:62:73:00:00:01";
/// Name of the TAP inside each namespace.
pub const TAP_NAME: &str = "tap0";
/// Name of the namespace end of the veth pair.
const NS_VETH: &str = "veth0";
/// Prefix of bandsox namespaces.
pub const NETNS_PREFIX: &str = "bsx-";
/// Prefix of bandsox host interfaces.
pub const HOST_IF_PREFIX: &str = "bsxv";
/// Host-level nftables table (family `inet`).
pub const HOST_TABLE: &str = "bandsox";
/// The table inside each namespace (family `inet`).
const NS_TABLE: &str = "bandsox";
/// The address pool: 10.231.0.0/16, handed out in /30 blocks.
pub const POOL_BASE: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 0);
pub const POOL_PREFIX: u8 = 16;
/// Number of /30 blocks in the pool.
pub const POOL_SIZE: u32 = 1 << (32 - POOL_PREFIX - 2);
/// Serialises host-level changes between bandsox processes.
pub const LOCK_FILE: &str = "/run/bandsox-net.lock";

/// Errors of network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{0}` not found; install iproute2 and nftables (Debian: apt-get install iproute2 nftables)")]
    ToolMissing(&'static str),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("invalid network name `{0}`")]
    InvalidName(String),
    #[error("lease {0} is outside the address pool (0..{POOL_SIZE})")]
    LeaseOutOfRange(u32),
    #[error("the VM address pool (10.231.0.0/16) is exhausted on this host")]
    PoolExhausted,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, NetError>;

/// The addresses of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub index: u32,
}

impl Lease {
    pub fn new(index: u32) -> Result<Self> {
        if index >= POOL_SIZE {
            return Err(NetError::LeaseOutOfRange(index));
        }
        Ok(Self { index })
    }

    fn block(self) -> u32 {
        u32::from(POOL_BASE) + 4 * self.index
    }

    /// The host's end of the veth pair.
    pub fn host_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(self.block() + 1)
    }

    /// The namespace's end of the veth pair: the address the host reaches the VM at.
    pub fn vm_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(self.block() + 2)
    }

    /// Host interface name (`bsxv<n>`, at most 9 bytes).
    pub fn host_if(self) -> String {
        format!("{HOST_IF_PREFIX}{}", self.index)
    }
}

/// The namespace name of a VM (`bsx-<id>`). The id must be `[a-z0-9-]{1,64}`.
pub fn netns_name(vm_id: &str) -> Result<String> {
    let ok = !vm_id.is_empty()
        && vm_id.len() <= 64
        && vm_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(NetError::InvalidName(vm_id.to_owned()));
    }
    Ok(format!("{NETNS_PREFIX}{vm_id}"))
}

/// The VM id of a bandsox namespace name, if it is one.
pub fn vm_id_of_netns(name: &str) -> Option<&str> {
    name.strip_prefix(NETNS_PREFIX)
        .filter(|id| netns_name(id).is_ok())
}

/// The lease of a bandsox host interface name, if it is one.
pub fn lease_of_host_if(name: &str) -> Option<u32> {
    let n = name.strip_prefix(HOST_IF_PREFIX)?;
    if n.is_empty() || n.len() > 5 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|&i| i < POOL_SIZE)
}

/// What a VM's namespace gets.
#[derive(Debug, Clone)]
pub struct VmNet {
    pub vm_id: String,
    /// `None`: a TAP in an isolated namespace (the VM has a NIC but networking is off).
    pub lease: Option<Lease>,
}

fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => NetError::ToolMissing(program),
        _ => NetError::Io(e),
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(NetError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args, None)
}

/// Host-wide lease claims: one file per lease in use by any bandsox server on this host (each
/// server keeps its own database, so two of them must not hand out the same /30 and `bsxv<n>`).
pub const CLAIMS_DIR: &str = "/run/bandsox-net/leases";
/// A claim whose owner directory is gone is stale after this long (its server crashed before
/// the VM was deleted, or a create failed half-way).
const STALE_CLAIM: std::time::Duration = std::time::Duration::from_secs(60);

/// Claims the lowest lease that is not in `taken` (this server's own records), not claimed by
/// another server and not an existing host interface. The claim names `owner` (the VM's
/// directory); [`release_lease`] drops it when the VM is deleted.
pub fn claim_lease(taken: &[u32], owner: &Path) -> Result<Lease> {
    let _lock = HostLock::acquire()?;
    let dir = Path::new(CLAIMS_DIR);
    std::fs::create_dir_all(dir)?;
    for index in (0..POOL_SIZE).filter(|i| !taken.contains(i)) {
        let lease = Lease { index };
        let claim = dir.join(index.to_string());
        if claim.exists() && !claim_is_stale(&claim) {
            continue;
        }
        if Path::new("/sys/class/net").join(lease.host_if()).exists() {
            continue;
        }
        std::fs::write(&claim, owner.as_os_str().as_encoded_bytes())?;
        return Ok(lease);
    }
    Err(NetError::PoolExhausted)
}

/// Drops the claim of `lease` if `owner` holds it.
pub fn release_lease(lease: Lease, owner: &Path) {
    let claim = Path::new(CLAIMS_DIR).join(lease.index.to_string());
    let Ok(_lock) = HostLock::acquire() else {
        return;
    };
    if std::fs::read(&claim).is_ok_and(|c| c == owner.as_os_str().as_encoded_bytes()) {
        let _ = std::fs::remove_file(&claim);
    }
}

fn claim_is_stale(claim: &Path) -> bool {
    let Ok(owner) = std::fs::read(claim) else {
        return true;
    };
    let owner = Path::new(std::ffi::OsStr::from_bytes(&owner));
    let old = std::fs::metadata(claim)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_CLAIM);
    old && !owner.exists()
}

/// Holds [`LOCK_FILE`] (an exclusive `flock`) while alive.
struct HostLock(std::fs::File);

impl HostLock {
    fn acquire() -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)?;
        sys::flock(&f, true)?;
        Ok(Self(f))
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let _ = sys::flock(&self.0, false);
    }
}

/// The host table's rules (replaced as a whole, atomically, so applying them is idempotent).
fn host_rules() -> String {
    let pool = format!("{POOL_BASE}/{POOL_PREFIX}");
    format!(
        r#"table inet {HOST_TABLE} {{}}
flush table inet {HOST_TABLE}
table inet {HOST_TABLE} {{
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname "{HOST_IF_PREFIX}*" ct state established,related accept
        iifname "{HOST_IF_PREFIX}*" drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{HOST_IF_PREFIX}*" oifname "{HOST_IF_PREFIX}*" drop
        iifname "{HOST_IF_PREFIX}*" ip daddr {{ 169.254.0.0/16, {pool} }} drop
        iifname "{HOST_IF_PREFIX}*" ct state established,related,new accept
        oifname "{HOST_IF_PREFIX}*" ct state established,related accept
        oifname "{HOST_IF_PREFIX}*" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {pool} oifname != "{HOST_IF_PREFIX}*" masquerade
    }}
}}
"#
    )
}

/// Rules inside a VM's namespace.
fn ns_rules(lease: Lease) -> String {
    let vm_ip = lease.vm_ip();
    let pool = format!("{POOL_BASE}/{POOL_PREFIX}");
    format!(
        r#"table inet {NS_TABLE} {{}}
flush table inet {NS_TABLE}
table inet {NS_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{NS_VETH}" ip daddr {vm_ip} dnat ip to {GUEST_IP}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{NS_VETH}" ip saddr {GATEWAY_IP}/{GUEST_PREFIX} masquerade
    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        ct state established,related accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{NS_VETH}" oifname "{TAP_NAME}" ip daddr {GUEST_IP} accept
        iifname "{TAP_NAME}" oifname "{NS_VETH}" ip daddr {{ 169.254.0.0/16, {pool}, {GATEWAY_IP}/{GUEST_PREFIX} }} drop
        iifname "{TAP_NAME}" oifname "{NS_VETH}" accept
    }}
}}
"#
    )
}

/// Rules of a namespace whose VM has a NIC but no network: nothing in or out.
fn isolated_rules() -> String {
    format!(
        r#"table inet {NS_TABLE} {{}}
flush table inet {NS_TABLE}
table inet {NS_TABLE} {{
    chain input {{ type filter hook input priority filter; policy drop; iifname "lo" accept; }}
    chain forward {{ type filter hook forward priority filter; policy drop; }}
}}
"#
    )
}

/// Creates the host table and enables IPv4 forwarding (idempotent).
pub fn ensure_host() -> Result<()> {
    let _lock = HostLock::acquire()?;
    run("nft", &["-f", "-"], Some(&host_rules()))?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    Ok(())
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Creates (or recreates) the namespace, TAP, veth and rules of one VM. Leftovers of an
/// earlier run of the same VM are removed first, so this is safe to call again.
pub fn setup(net: &VmNet) -> Result<()> {
    let ns = netns_name(&net.vm_id)?;
    teardown(&net.vm_id, net.lease)?;
    if let Some(lease) = net.lease {
        ensure_host()?;
        let done = setup_inner(&ns, Some(lease));
        if done.is_err() {
            let _ = teardown(&net.vm_id, Some(lease));
        }
        done
    } else {
        let done = setup_inner(&ns, None);
        if done.is_err() {
            let _ = teardown(&net.vm_id, None);
        }
        done
    }
}

fn setup_inner(ns: &str, lease: Option<Lease>) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", ns, "tuntap", "add", "dev", TAP_NAME, "mode", "tap", "vnet_hdr",
    ])?;
    ip(&["-n", ns, "link", "set", TAP_NAME, "address", TAP_MAC])?;
    let gw = format!("{GATEWAY_IP}/{GUEST_PREFIX}");
    ip(&["-n", ns, "addr", "add", &gw, "dev", TAP_NAME])?;
    ip(&["-n", ns, "link", "set", TAP_NAME, "up"])?;
    let Some(lease) = lease else {
        return run(
            "ip",
            &["netns", "exec", ns, "nft", "-f", "-"],
            Some(&isolated_rules()),
        )
        .map(drop);
    };
    let host_if = lease.host_if();
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", NS_VETH, "netns", ns,
    ])?;
    let host_addr = format!("{}/30", lease.host_ip());
    ip(&["addr", "add", &host_addr, "dev", &host_if])?;
    ip(&["link", "set", &host_if, "up"])?;
    let vm_addr = format!("{}/30", lease.vm_ip());
    ip(&["-n", ns, "addr", "add", &vm_addr, "dev", NS_VETH])?;
    ip(&["-n", ns, "link", "set", NS_VETH, "up"])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &lease.host_ip().to_string(),
    ])?;
    run(
        "ip",
        &["netns", "exec", ns, "nft", "-f", "-"],
        Some(&ns_rules(lease)),
    )?;
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{host_if}/rp_filter"), "1").ok();
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ],
        None,
    )?;
    Ok(())
}

/// Removes a VM's namespace (with its TAP, veth and rules) and host interface. Missing
/// pieces are fine.
pub fn teardown(vm_id: &str, lease: Option<Lease>) -> Result<()> {
    let ns = netns_name(vm_id)?;
    if let Some(lease) = lease {
        let host_if = lease.host_if();
        if link_exists(&host_if) {
            // First, and explicitly: deleting the pair from the host side is synchronous, while
            // a deleted namespace frees its devices later (or only once its last process exits).
            let _ = ip(&["link", "delete", &host_if]);
        }
    }
    if netns_exists(&ns) {
        ip(&["netns", "delete", &ns])?;
    }
    Ok(())
}

/// What [`cleanup`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    pub namespaces: Vec<String>,
    pub interfaces: Vec<String>,
    pub host_table: bool,
}

/// Bandsox namespaces present on the host.
pub fn list_namespaces() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| vm_id_of_netns(n).is_some())
        .collect();
    out.sort();
    out
}

/// Bandsox host interfaces present on the host.
pub fn list_host_interfaces() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| lease_of_host_if(n).is_some())
        .collect();
    out.sort();
    out
}

/// True when some process runs inside namespace `name`.
pub fn netns_in_use(name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(std::path::Path::new("/run/netns").join(name)) else {
        return false;
    };
    let want = format!("net:[{}]", meta.ino());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            std::fs::read_link(e.path().join("ns/net"))
                .is_ok_and(|l| l.as_os_str() == want.as_str())
        })
}

/// Whether the host table exists.
pub fn host_table_exists() -> bool {
    run("nft", &["list", "table", "inet", HOST_TABLE], None).is_ok()
}

/// Removes bandsox namespaces and host interfaces that belong to no live VM (`live` says
/// whether a VM id / lease is in use), and the host table when nothing is live. Never touches
/// anything whose name is not ours.
pub fn cleanup(
    live_vm: &dyn Fn(&str) -> bool,
    live_lease: &dyn Fn(u32) -> bool,
) -> Result<Cleaned> {
    let _lock = HostLock::acquire()?;
    let mut cleaned = Cleaned::default();
    let mut kept = 0usize;
    for ns in list_namespaces() {
        let Some(id) = vm_id_of_netns(&ns) else {
            continue;
        };
        // A namespace with a process inside belongs to a VM (perhaps of another storage
        // root): never pull the network from under it.
        if live_vm(id) || netns_in_use(&ns) {
            kept += 1;
        } else {
            ip(&["netns", "delete", &ns])?;
            cleaned.namespaces.push(ns);
        }
    }
    let mut any_live = kept > 0;
    for ifname in list_host_interfaces() {
        let Some(lease) = lease_of_host_if(&ifname) else {
            continue;
        };
        if live_lease(lease) || kept > 0 {
            any_live = true;
        } else if link_exists(&ifname) {
            ip(&["link", "delete", &ifname])?;
            cleaned.interfaces.push(ifname);
        }
    }
    if !any_live && list_namespaces().is_empty() && host_table_exists() {
        run("nft", &["delete", "table", "inet", HOST_TABLE], None)?;
        cleaned.host_table = true;
    }
    Ok(cleaned)
}

/// Nameservers for guests: those of the host's `/etc/resolv.conf` that a guest can reach
/// (not loopback, not link-local, not in the pool), else Cloudflare's and Google's.
pub fn default_resolvers() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out: Vec<Ipv4Addr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_link_local() && !a.is_unspecified())
        .filter(|a| !in_pool(*a))
        .collect();
    if out.is_empty() {
        out = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)];
    }
    out.truncate(3);
    out
}

fn in_pool(a: Ipv4Addr) -> bool {
    u32::from(a) >> (32 - POOL_PREFIX) == u32::from(POOL_BASE) >> (32 - POOL_PREFIX)
}

/// Kernel arguments that make the agent configure the guest's `eth0` and resolver.
pub fn kernel_args(dns: &[Ipv4Addr]) -> Vec<String> {
    let mut args = vec![format!(
        "bandsox.net={GUEST_IP}/{GUEST_PREFIX},{GATEWAY_IP}"
    )];
    if !dns.is_empty() {
        let list: Vec<String> = dns.iter().map(ToString::to_string).collect();
        args.push(format!("bandsox.dns={}", list.join(",")));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_addresses() {
        let l = Lease::new(0).unwrap();
        assert_eq!(l.host_ip(), Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(l.vm_ip(), Ipv4Addr::new(10, 231, 0, 2));
        let l = Lease::new(POOL_SIZE - 1).unwrap();
        assert_eq!(l.vm_ip(), Ipv4Addr::new(10, 231, 255, 254));
        assert!(l.host_if().len() <= 15);
        assert!(Lease::new(POOL_SIZE).is_err());
    }

    #[test]
    fn names_are_validated_and_recognised() {
        assert_eq!(netns_name("ab-1").unwrap(), "bsx-ab-1");
        assert!(netns_name("../x").is_err());
        assert!(netns_name("").is_err());
        assert!(netns_name("A").is_err());
        assert_eq!(vm_id_of_netns("bsx-ab-1"), Some("ab-1"));
        assert_eq!(vm_id_of_netns("bsx-../"), None);
        assert_eq!(vm_id_of_netns("other"), None);
        assert_eq!(lease_of_host_if("bsxv12"), Some(12));
        assert_eq!(lease_of_host_if("bsxvx"), None);
        assert_eq!(lease_of_host_if("bsxv99999"), None);
        assert_eq!(lease_of_host_if("tap0"), None);
    }

    #[test]
    fn kernel_args_carry_fixed_address() {
        let a = kernel_args(&[Ipv4Addr::new(9, 9, 9, 9)]);
        assert_eq!(a[0], "bandsox.net=172.31.0.2/24,172.31.0.1");
        assert_eq!(a[1], "bandsox.dns=9.9.9.9");
        assert!(!in_pool(Ipv4Addr::new(10, 230, 0, 1)));
        assert!(in_pool(Ipv4Addr::new(10, 231, 4, 1)));
    }
}
