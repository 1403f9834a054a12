//! Byte-stream transports the agent serves on. A [`Connector`] yields one [`Connection`] (a
//! `Read` half and a `Write` half) per host connection; the server runs a session on it until
//! the reader reports end of stream, then asks for the next one.
//!
//! - [`SerialConnector`]: a virtio-serial port (QEMU). The port stays open across host
//!   connections: `read()` returning 0 means "no host connected", and writes block while no host
//!   is connected, so the fd is non-blocking and a write that finds the port hung up fails
//!   instead of waiting (the frame is dropped rather than delivered, half-written, to the next
//!   host).
//! - [`VsockConnector`]: a listening `AF_VSOCK` socket (Firecracker: the host reaches it
//!   through the VMM's hybrid vsock Unix socket with `CONNECT <port>`). Each accepted
//!   connection is one session.
//! - [`UnixConnector`]: a listening Unix socket, for running the agent outside a VM (tests, host
//!   development).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys;

/// One host connection.
pub struct Connection {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    /// The descriptor `writer` writes to, when bulk data may be written to it straight from a
    /// file mapping (`write(2)` then copies the file's pages into the device's buffers once).
    /// A non-blocking descriptor is waited on with `poll`, as [`SerialWriter`] does.
    pub channel_fd: Option<Arc<OwnedFd>>,
}

/// Produces host connections, one at a time.
pub trait Connector: Send {
    /// Blocks until the next host connection; `Ok(None)` ends serving.
    fn connect(&mut self) -> io::Result<Option<Connection>>;
}

/// Finds the virtio-serial port named `name`: `/dev/<vportNpM>` whose
/// `/sys/class/virtio-ports/<vportNpM>/name` equals it.
pub fn find_virtio_port(name: &str) -> Option<PathBuf> {
    let entries = fs::read_dir("/sys/class/virtio-ports").ok()?;
    entries.flatten().find_map(|e| {
        let port_name = fs::read_to_string(e.path().join("name")).ok()?;
        (port_name.trim_end() == name).then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// Waits up to `timeout` for the port named `name` and its device node.
pub fn wait_virtio_port(name: &str, timeout: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = find_virtio_port(name).filter(|p| p.exists()) {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A virtio-serial port, open for the agent's whole life.
pub struct SerialConnector {
    fd: Arc<OwnedFd>,
    sessions: u64,
}

impl SerialConnector {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let fd = OwnedFd::from(file);
        sys::set_nonblocking(fd.as_fd())?;
        Ok(Self {
            fd: Arc::new(fd),
            sessions: 0,
        })
    }

    /// True when a host is connected: the port is writable and not hung up.
    fn host_connected(&self) -> bool {
        let mut fds = [sys::pollfd(self.fd.as_raw_fd(), libc::POLLOUT)];
        matches!(sys::poll(&mut fds, 0), Ok(1))
            && fds[0].revents & libc::POLLOUT != 0
            && fds[0].revents & libc::POLLHUP == 0
    }
}

impl Connector for SerialConnector {
    fn connect(&mut self) -> io::Result<Option<Connection>> {
        // The first session starts at once: bytes a host sent before the port opened are
        // waiting. Later ones wait for a host to connect (the port reports POLLHUP until then).
        if self.sessions > 0 {
            while !self.host_connected() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.sessions += 1;
        // The reader waits for input with SIGIO, not poll: the port's one wait queue is also
        // woken each time the host takes a buffer the agent wrote, so a reader in poll() wakes
        // (and context-switches) once per 32 KiB of a download. SIGIO comes only for input.
        let sigio = sys::sigio_to_this_thread(self.fd.as_fd()).is_ok();
        Ok(Some(Connection {
            reader: Box::new(SerialReader {
                fd: Arc::clone(&self.fd),
                sigio,
            }),
            writer: Box::new(SerialWriter(Arc::clone(&self.fd))),
            channel_fd: Some(Arc::clone(&self.fd)),
        }))
    }
}

/// Reads the port; must be used on the thread that opened the connection (SIGIO goes there).
struct SerialReader {
    fd: Arc<OwnedFd>,
    /// Input arrival is signalled with SIGIO (else: poll).
    sigio: bool,
}

/// Longest wait for a SIGIO before reading again anyway.
const SIGIO_WAIT: Duration = Duration::from_millis(100);

impl Read for SerialReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match sys::read(self.fd.as_fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.sigio => {
                    sys::wait_sigio(SIGIO_WAIT);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [sys::pollfd(self.fd.as_raw_fd(), libc::POLLIN)];
                    match sys::poll(&mut fds, -1) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

struct SerialWriter(Arc<OwnedFd>);

/// Waits until the non-blocking `fd` takes writes again; fails if the peer hung up.
pub fn wait_writable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut fds = [sys::pollfd(fd.as_raw_fd(), libc::POLLOUT)];
    match sys::poll(&mut fds, -1) {
        Ok(_) if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 => Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "host disconnected from the serial port",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(e),
    }
}

impl Write for SerialWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match sys::write(self.0.as_fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_writable(self.0.as_fd())?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening Unix socket; each accepted connection is one session.
pub struct UnixConnector {
    listener: UnixListener,
}

impl UnixConnector {
    pub fn bind(path: &Path) -> io::Result<Self> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            listener: UnixListener::bind(path)?,
        })
    }
}

impl Connector for UnixConnector {
    fn connect(&mut self) -> io::Result<Option<Connection>> {
        let (stream, _) = self.listener.accept()?;
        let writer = stream.try_clone()?;
        let fd = OwnedFd::from(stream.try_clone()?);
        Ok(Some(Connection {
            reader: Box::new(stream),
            writer: Box::new(writer),
            channel_fd: Some(Arc::new(fd)),
        }))
    }
}

/// A listening vsock socket on `port` of any local CID.
pub struct VsockConnector {
    fd: OwnedFd,
}

impl VsockConnector {
    pub fn bind(port: u32) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket() has no memory preconditions; the result is checked.
        let raw =
            unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_vm is plain old data; zeroed is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        // SAFETY: `addr` is a valid sockaddr_vm and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen on our own socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }
}

impl Connector for VsockConnector {
    fn connect(&mut self) -> io::Result<Option<Connection>> {
        use std::os::fd::FromRawFd;
        loop {
            // SAFETY: accept4 with null address pointers only returns a descriptor.
            let raw = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if raw < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: `raw` is a fresh descriptor we own.
            let stream = unsafe { std::fs::File::from_raw_fd(raw) };
            let writer = stream.try_clone()?;
            let fd = OwnedFd::from(stream.try_clone()?);
            return Ok(Some(Connection {
                reader: Box::new(stream),
                writer: Box::new(writer),
                channel_fd: Some(Arc::new(fd)),
            }));
        }
    }
}

/// A single pre-made connection (tests): served once, then serving ends.
#[cfg(test)]
pub struct OnceConnector(pub Option<Connection>);

#[cfg(test)]
impl Connector for OnceConnector {
    fn connect(&mut self) -> io::Result<Option<Connection>> {
        Ok(self.0.take())
    }
}
