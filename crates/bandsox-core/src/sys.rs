//! System calls std does not wrap.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_space_bytes(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to writable memory of the
    // right size; statvfs initialises it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Nice 19 for every thread of process `pid` (a nice value is per thread on Linux; threads
/// started later inherit their creator's). Best effort.
pub fn lower_priority(pid: u32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        if let Ok(tid) = t.file_name().to_string_lossy().parse::<libc::id_t>() {
            // SAFETY: setpriority takes plain integers and touches no memory of ours.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid, 19);
            }
        }
    }
}

/// Copies `src` to a new file `dst`: a reflink (shared extents) when the filesystem supports
/// it, else a sparse copy that skips holes. `dst` must not exist. Not synced: callers that
/// need durability call `sync_all` themselves.
pub fn copy_file_sparse(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open and owned here.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    if rc == 0 {
        return Ok(());
    }
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    let len = len as i64;
    while pos < len {
        // SAFETY: lseek on an open fd; no memory is passed.
        let data = unsafe { libc::lseek(from.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        from.seek(SeekFrom::Start(data as u64))?;
        to.seek(SeekFrom::Start(data as u64))?;
        let mut left = (hole - data) as usize;
        while left > 0 {
            let n = from.read(&mut buf[..left.min(1 << 20)])?;
            if n == 0 {
                break;
            }
            to.write_all(&buf[..n])?;
            left -= n;
        }
        pos = hole;
    }
    Ok(())
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        drop(f);
        let dst = d.path().join("dst");
        copy_file_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(
            std::fs::metadata(&dst).unwrap().blocks() * 512 < 4 << 20,
            "copy is not sparse"
        );
        assert!(
            copy_file_sparse(&src, &dst).is_err(),
            "existing destination must not be overwritten"
        );
    }
}
