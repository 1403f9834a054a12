//! The few system calls the image code needs that `std` does not offer.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Kind of special file for [`mknod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// Creates a device node or FIFO at `path` (which must not exist) with permission bits
/// `mode`. Never follows a symlink at `path`: `mknod` fails with `EEXIST` on any existing entry.
pub fn mknod(path: &Path, kind: NodeKind, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let type_bits = match kind {
        NodeKind::Char => libc::S_IFCHR,
        NodeKind::Block => libc::S_IFBLK,
        NodeKind::Fifo => libc::S_IFIFO,
    };
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated string that lives across the call; mknod reads it
    // and touches no memory of ours.
    let rc = unsafe { libc::mknod(c.as_ptr(), type_bits | (mode & 0o7777), dev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
