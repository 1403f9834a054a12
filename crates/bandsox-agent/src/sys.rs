//! Thin wrappers over the Linux system calls std does not offer. This is the only module of the
//! agent with `unsafe` code; every block says why it is sound.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstring(source)?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    })
    .map(drop)
}

/// `chroot(2)`.
pub fn chroot(path: &str) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

/// `finit_module(2)` with no parameters and no flags.
pub fn finit_module(fd: BorrowedFd<'_>) -> io::Result<()> {
    let params = c"";
    // SAFETY: finit_module takes an fd, a NUL-terminated parameter string and flags; the fd is
    // borrowed for the duration of the call and the string is static.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            fd.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast::<libc::c_char>(), name.len()) }).map(drop)
}

/// Sets `CLOCK_REALTIME` to `unix_ns` nanoseconds since the epoch.
pub fn set_realtime_ns(unix_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec living on the stack for the duration of the call.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// Mixes `bytes` into the kernel RNG, credits them and reseeds the CRNG from them at once
/// (`RNDADDENTROPY` + `RNDRESEEDCRNG` on /dev/urandom, which need CAP_SYS_ADMIN: the agent
/// runs as root).
pub fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // SAFETY: `info` holds a complete rand_pool_info whose buf_size matches the bytes that
    // follow; the kernel only reads from it during the call.
    check(unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) })?;
    // Once the CRNG is ready, credited bytes only reach it at its next scheduled reseed (up
    // to a minute away): clones of one template would read the same /dev/urandom until then.
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    check(unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) }).map(drop)
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// Powers the machine off. Returns only on failure.
pub fn power_off() -> io::Error {
    // SAFETY: reboot with a valid command has no memory-safety preconditions.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

/// Resets the machine (`reboot(RB_AUTOBOOT)`). Returns only on failure.
pub fn restart() -> io::Error {
    // SAFETY: reboot with a valid command has no memory-safety preconditions.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// `kill(2)`. A negative `pid` addresses a process group, -1 every process but PID 1.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Blocks until some child has terminated and returns its pid **without reaping it**
/// (`waitid(P_ALL, WEXITED | WNOWAIT)`). Fails with `ECHILD` when there are no children.
pub fn wait_any_exited() -> io::Result<i32> {
    // SAFETY: siginfo_t is plain data; an all-zero value is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t.
    check(unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) })?;
    // SAFETY: after a successful waitid with WEXITED, si_pid is the field the kernel filled in.
    Ok(unsafe { info.si_pid() })
}

/// Reaps `pid` if it has terminated: `Ok(Some(raw wait status))`, `Ok(None)` if it is still
/// running, `Err(ECHILD)` if it is not (or no longer) our child.
pub fn reap(pid: i32) -> io::Result<Option<i32>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable int.
    let ret = check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    Ok((ret != 0).then_some(status))
}

/// Makes this process the reaper of orphaned descendants (what PID 1 is anyway).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) }).map(drop)
}

/// `poll(2)` on `fds`; returns how many have events. `timeout_ms < 0` waits forever.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a valid, writable slice of pollfd.
    let n = check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) })?;
    Ok(n as usize)
}

/// A `pollfd` for `fd` waiting for `events`.
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a borrowed, open fd with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// A close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `write(2)` once; returns the bytes written.
pub fn write(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `bytes`, readable for the duration of the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `read(2)` once; returns the bytes read (0 at end of file).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, writable for the duration of the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Filesystem magic of the filesystem holding `path` (`statfs(2)` `f_type`).
pub fn fs_magic(path: &str) -> io::Result<i64> {
    let path = cstring(path)?;
    // SAFETY: statfs is plain data; an all-zero value is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable.
    check(unsafe { libc::statfs(path.as_ptr(), &mut st) })?;
    Ok(st.f_type as i64)
}

/// `ifreq` as used by `SIOCGIFFLAGS`/`SIOCSIFFLAGS` (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Sets `IFF_UP` on network interface `name` (e.g. `lo`).
pub fn interface_up(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: socket takes integer arguments only.
    let raw =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded, so `raw` is an open fd that we now own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of a valid, writable ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// `ifreq` carrying an IPv4 `sockaddr_in` (`SIOCSIFADDR`, `SIOCSIFNETMASK`), 40 bytes.
#[repr(C)]
struct IfreqAddr {
    name: [u8; libc::IFNAMSIZ],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

fn sockaddr_v4(ip: std::net::Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes integer arguments only.
    let raw =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded, so `raw` is an open fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Gives interface `name` the IPv4 address `ip/prefix` (like `ip addr add`).
pub fn set_ipv4(name: &str, ip: std::net::Ipv4Addr, prefix: u8) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || prefix > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface address",
        ));
    }
    let sock = inet_socket()?;
    let mut req = IfreqAddr {
        name: [0; libc::IFNAMSIZ],
        addr: sockaddr_v4(ip),
        _pad: [0; 8],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCSIFADDR reads a valid ifreq holding a sockaddr_in.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) })?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    req.addr = sockaddr_v4(std::net::Ipv4Addr::from(mask));
    // SAFETY: as above, with the netmask.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &req) }).map(drop)
}

/// Adds the default route via `gateway` on interface `name`.
pub fn add_default_route(name: &str, gateway: std::net::Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let dev = cstring(name)?;
    // SAFETY: rtentry is plain data; all-zero is a valid (empty) value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    let any = sockaddr_v4(std::net::Ipv4Addr::UNSPECIFIED);
    let gw = sockaddr_v4(gateway);
    // SAFETY: sockaddr_in and sockaddr have the same size; we copy the bytes of one into the
    // other (the kernel reads them as sockaddr_in because the family is AF_INET).
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&raw const any).cast::<u8>(),
            (&raw mut rt.rt_dst).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr>(),
        );
        std::ptr::copy_nonoverlapping(
            (&raw const any).cast::<u8>(),
            (&raw mut rt.rt_genmask).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr>(),
        );
        std::ptr::copy_nonoverlapping(
            (&raw const gw).cast::<u8>(),
            (&raw mut rt.rt_gateway).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr>(),
        );
    }
    rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
    rt.rt_dev = dev.as_ptr().cast_mut();
    // SAFETY: SIOCADDRT reads a valid rtentry whose rt_dev points at a live C string.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) }).map(drop)
}

/// Identity a child switches to before `exec`.
#[derive(Debug, Clone)]
pub struct ChildIdentity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Arranges for the child of `cmd` to (optionally) start a new session with its stdin (a PTY
/// slave) as controlling terminal, and to (optionally) drop to `identity`, right before `exec`.
pub fn child_setup(
    cmd: &mut std::process::Command,
    identity: Option<ChildIdentity>,
    pty_session: bool,
) {
    use std::os::unix::process::CommandExt;
    if identity.is_none() && !pty_session {
        return;
    }
    let groups: Vec<libc::gid_t> = identity
        .as_ref()
        .map(|i| i.groups.clone())
        .unwrap_or_default();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, ioctl, setgroups, setgid, setuid) on data allocated
    // before the fork (`groups`, `identity`); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if pty_session {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(id) = &identity {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(id.gid) < 0
                    || libc::setuid(id.uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Opens a pseudo-terminal pair `(master, slave)` of `cols` x `rows`, both close-on-exec.
pub fn openpty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out pointers are valid writable ints; name is null (not wanted); termios is
    // null (defaults); `ws` is a valid winsize that outlives the call.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    })?;
    // SAFETY: openpty succeeded, so both fds are open and owned by nobody else.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&m, &s] {
        // SAFETY: fcntl on an open fd with integer arguments.
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok((m, s))
}

/// Sets the window size of the terminal behind `fd`.
pub fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize from a pointer that outlives the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// `fchmod(2)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a borrowed, open fd with an integer mode.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// A read-only shared mapping of part of a file. Its bytes are never touched from user space:
/// they are only handed to `write(2)` ([`write_from_map`]), so a file that shrinks while
/// mapped makes that write fail with `EFAULT` instead of raising `SIGBUS` in the agent.
pub struct FileMap {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; no user-space reference to its
// bytes is ever created, so moving it between threads is sound.
unsafe impl Send for FileMap {}

impl FileMap {
    /// Maps `len` bytes of `fd` from `offset` (a multiple of the page size), read-only and
    /// pre-faulted (`MAP_POPULATE`).
    pub fn new(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Self> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: a fresh mapping at an address of the kernel's choosing; it aliases no Rust
        // memory. The result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// `write(2)` once of `map[offset..offset + len]` to `fd`; returns the bytes written.
pub fn write_from_map(
    fd: BorrowedFd<'_>,
    map: &FileMap,
    offset: usize,
    len: usize,
) -> io::Result<usize> {
    if offset.checked_add(len).is_none_or(|end| end > map.len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range outside the mapping",
        ));
    }
    // SAFETY: the range lies inside the mapping (checked above), which lives for the call; the
    // kernel reads it and reports a vanished page as EFAULT.
    let n = unsafe { libc::write(fd.as_raw_fd(), map.ptr.cast::<u8>().add(offset).cast(), len) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `fcntl` command and owner type of `F_SETOWN_EX` (not in the libc crate for glibc).
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// The set holding only `SIGIO`.
fn sigio_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it fully.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        set
    }
}

/// Makes `fd` signal readiness to the calling thread with `SIGIO` (`O_ASYNC`, owner = this
/// thread), which blocks `SIGIO` so it stays pending for [`wait_sigio`].
pub fn sigio_to_this_thread(fd: BorrowedFd<'_>) -> io::Result<()> {
    let set = sigio_set();
    // SAFETY: `set` is an initialised sigset; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let owner = FOwnerEx {
        kind: F_OWNER_TID,
        // SAFETY: gettid has no preconditions.
        pid: unsafe { libc::gettid() },
    };
    // SAFETY: F_SETOWN_EX reads one f_owner_ex, which `owner` is (same layout).
    check(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &owner) })?;
    // SAFETY: flag changes on a borrowed, open fd.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_ASYNC) }).map(drop)
}

/// Waits up to `timeout` for a pending or arriving `SIGIO` of this thread and consumes it.
pub fn wait_sigio(timeout: std::time::Duration) {
    let set = sigio_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` and `ts` are initialised; no siginfo is wanted. Timeouts and EINTR are
    // fine: the caller tries its read again either way.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfreqFlags>(), 40);
    }

    #[test]
    fn pipe_poll_read_write() {
        use std::os::fd::AsFd;
        let (r, w) = pipe().unwrap();
        let mut fds = [pollfd(r.as_raw_fd(), libc::POLLIN)];
        assert_eq!(poll(&mut fds, 0).unwrap(), 0);
        assert_eq!(write(w.as_fd(), b"abc").unwrap(), 3);
        assert_eq!(poll(&mut fds, 1000).unwrap(), 1);
        let mut buf = [0u8; 8];
        assert_eq!(read(r.as_fd(), &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        set_nonblocking(r.as_fd()).unwrap();
        assert_eq!(
            read(r.as_fd(), &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
