//! The few system calls the VMM layer needs that std does not wrap.

/// True when a process with this pid exists (it may be a zombie).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission; no memory is
    // touched.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends SIGKILL to `pid`. Errors (the process is already gone) are ignored.
pub fn kill_process(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: sending a signal touches no memory of ours.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// True when the process is a zombie (exited, not yet reaped by its parent).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Makes the child of `cmd` join the network namespace open as `ns` right before `exec`.
pub fn join_netns_before_exec(cmd: &mut tokio::process::Command, ns: std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2), which
    // is async-signal-safe; `ns` is moved into the closure, so its fd stays open until then.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
