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

/// True when the command line of process `pid` contains `needle` (how a driver recognises a
/// VMM it started before a restart: its own socket path or VM id is in the arguments).
pub fn cmdline_contains(pid: u32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
}

/// True when the process is a zombie (exited, not yet reaped by its parent).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`), so a
/// VMM whose launcher exits (the jailer under `--new-pid-ns`) stays reapable by us.
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Result of a non-blocking reap attempt.
pub enum Reap {
    /// Exited with this code or signal, and is reaped.
    Exited(Option<i32>, Option<i32>),
    Running,
    /// Not our child (someone else reaps it).
    NotOurs,
}

/// `waitpid(pid, WNOHANG)`.
pub fn try_reap(pid: u32) -> Reap {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Reap::NotOurs;
    };
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes only to `status`, a valid local.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match rc {
        0 => Reap::Running,
        r if r == pid => {
            if libc::WIFEXITED(status) {
                Reap::Exited(Some(libc::WEXITSTATUS(status)), None)
            } else if libc::WIFSIGNALED(status) {
                Reap::Exited(None, Some(libc::WTERMSIG(status)))
            } else {
                Reap::Running
            }
        }
        _ => Reap::NotOurs,
    }
}

/// True when the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
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
