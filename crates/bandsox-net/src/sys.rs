//! The one system call std does not wrap here: `flock(2)`.

use std::os::fd::AsRawFd;

/// Takes (blocking) or releases an exclusive advisory lock on `f`.
pub fn flock(f: &std::fs::File, lock: bool) -> std::io::Result<()> {
    let op = if lock { libc::LOCK_EX } else { libc::LOCK_UN };
    // SAFETY: flock takes an fd that `f` keeps open for the call, and an integer flag.
    let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
