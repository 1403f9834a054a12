//! Zombie reaping for the whole guest.
//!
//! One thread waits for any child to terminate. Children the agent spawned through
//! [`spawn_registered`] have a waiter that receives their wait status; everything else (orphans
//! reparented to PID 1, or to the agent as subreaper) is reaped and forgotten.
//!
//! The race "the child exits before its waiter is registered" is closed by a lock: spawning and
//! registering happen under a shared lock, and the reaper first *peeks* at a terminated child
//! (`waitid(WNOWAIT)`), then takes the lock exclusively before reaping it. So a child is never
//! reaped between `spawn()` returning and its registration.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::log::log;
use crate::sys;
use crate::util::lock;

/// Receives the raw wait status of a registered child.
pub type Waiter = Box<dyn FnOnce(i32) + Send>;

struct Reaper {
    spawn_lock: RwLock<()>,
    waiters: Mutex<HashMap<i32, Waiter>>,
    /// Bumped on every spawn; the reaper sleeps on it while there are no children.
    spawns: Mutex<u64>,
    spawned: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| {
        let r = Reaper {
            spawn_lock: RwLock::new(()),
            waiters: Mutex::new(HashMap::new()),
            spawns: Mutex::new(0),
            spawned: Condvar::new(),
        };
        if let Err(e) = std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(128 << 10)
            .spawn(run_forever)
        {
            log!("cannot start the reaper thread: {e}");
        }
        r
    })
}

/// Starts the reaper thread (idempotent).
pub fn start() {
    reaper();
}

/// Spawns `cmd` and registers `waiter` for its exit status, atomically with respect to reaping.
pub fn spawn_registered(cmd: &mut Command, waiter: Waiter) -> std::io::Result<Child> {
    let r = reaper();
    let child = {
        let _shared = r.spawn_lock.read().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        lock(&r.waiters).insert(child.id() as i32, waiter);
        child
    };
    *lock(&r.spawns) += 1;
    r.spawned.notify_all();
    Ok(child)
}

/// The reaper must outlive any bug: a panic restarts the loop.
fn run_forever() {
    loop {
        if let Err(payload) = std::panic::catch_unwind(run) {
            log!(
                "reaper panicked: {}",
                crate::util::panic_message(payload.as_ref())
            );
        }
    }
}

fn run() {
    let r = loop {
        // `reaper()` is still initialising on the thread that spawned us; wait for it.
        if let Some(r) = REAPER.get() {
            break r;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    loop {
        let seen = *lock(&r.spawns);
        match sys::wait_any_exited() {
            Ok(pid) => {
                let _exclusive = r.spawn_lock.write().unwrap_or_else(|e| e.into_inner());
                // Nothing to do when it was reaped by someone else (std reaps a child whose
                // exec failed) or has not terminated after all.
                if let Ok(Some(status)) = sys::reap(pid) {
                    let waiter = lock(&r.waiters).remove(&pid);
                    if let Some(waiter) = waiter {
                        waiter(status);
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                // No children: sleep until the next spawn (the timeout is only a safety net).
                let guard = lock(&r.spawns);
                if *guard == seen {
                    let _ = r.spawned.wait_timeout(guard, Duration::from_secs(1));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                log!("waitid failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `(exit_code, signal)` of a raw wait status.
pub fn decode_status(status: i32) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}
