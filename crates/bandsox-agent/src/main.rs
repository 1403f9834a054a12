//! `bandsox-agent`: the guest side of BandSox, a static binary that runs as PID 1 of every VM.
//!
//! It owns the guest's boot (modules, root overlay, switch root, pseudo filesystems, loopback,
//! hostname: [`boot`]), reaping every zombie in the guest ([`reaper`]), and serving the
//! `bandsox-protocol` wire protocol on the host channel ([`server`], [`exec`], [`transport`]):
//! a virtio-serial port under QEMU. Outside a VM (not PID 1) it mounts nothing and can serve on a
//! Unix socket for tests and host development. All `unsafe` code is in [`sys`].

mod boot;
mod cmds;
mod exec;
mod files;
mod log;
mod reaper;
mod server;
mod sys;
#[cfg(test)]
mod tests;
mod transport;
mod users;
mod util;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::log;
use crate::server::{Agent, AgentConfig, ShutdownAction};
use crate::transport::{Connector, SerialConnector, UnixConnector, VsockConnector};
use crate::util::panic_message;

const USAGE: &str = "\
usage: bandsox-agent                      (as PID 1 of a VM: boot and serve)
       bandsox-agent --listen-unix PATH   serve on a Unix socket (outside a VM)
       bandsox-agent --serial PATH        serve on a virtio-serial port device
       bandsox-agent --version";

fn main() {
    let started = Instant::now();
    if std::process::id() == 1 {
        run_pid1(started);
    }
    std::process::exit(run_cli());
}

/// Performs the `Shutdown` request's action after its reply went out.
pub(crate) fn shutdown(action: ShutdownAction) {
    match action {
        ShutdownAction::PowerOff => boot::power_off(),
        ShutdownAction::Exit => std::process::exit(0),
        ShutdownAction::Ignore => {}
    }
}

fn run_pid1(started: Instant) -> ! {
    let (params, timings) = match catch_unwind(boot::boot) {
        Ok(Ok(booted)) => booted,
        Ok(Err(e)) => fatal(&e),
        Err(payload) => fatal(&format!("panic: {}", panic_message(payload.as_ref()))),
    };
    reaper::start();
    let agent = Agent::new(AgentConfig {
        base_env: boot::base_env(),
        shutdown: ShutdownAction::PowerOff,
    });
    let mut announced = false;
    let port_wait = Instant::now();
    if let Some(port) = params.vsock {
        // Only Firecracker gives the guest a vsock port; it has no power-off device.
        boot::power_off_by_reset();
        loop {
            let mut connector = match VsockConnector::bind(port) {
                Ok(c) => c,
                Err(e) => {
                    log!("vsock port {port}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if !announced {
                announced = true;
                log!(
                    "ready in {} ms (kernel uptime {} ms; {} port={}), serving on vsock port {port}",
                    started.elapsed().as_millis(),
                    boot::uptime_ms().unwrap_or(0),
                    timings.summary(),
                    port_wait.elapsed().as_millis(),
                );
            }
            serve_guarded(&agent, &mut connector);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    loop {
        let Some(path) = transport::wait_virtio_port(&params.port, Duration::from_secs(10)) else {
            log!(
                "virtio-serial port {:?} not found; still looking",
                params.port
            );
            continue;
        };
        let mut connector = match SerialConnector::open(&path) {
            Ok(c) => c,
            Err(e) => {
                log!("open {}: {e}", path.display());
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if !announced {
            announced = true;
            log!(
                "ready in {} ms (kernel uptime {} ms; {} port={}), serving on {}",
                started.elapsed().as_millis(),
                boot::uptime_ms().unwrap_or(0),
                timings.summary(),
                port_wait.elapsed().as_millis(),
                path.display()
            );
        }
        serve_guarded(&agent, &mut connector);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serves until the connector ends; a panic is logged instead of ending PID 1.
fn serve_guarded(agent: &Arc<Agent>, connector: &mut dyn Connector) {
    match catch_unwind(AssertUnwindSafe(|| agent.serve(connector))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log!("serving failed: {e}"),
        Err(payload) => log!("server panicked: {}", panic_message(payload.as_ref())),
    }
}

/// Boot failed: say why on the console and power off so the host sees the VM end.
fn fatal(msg: &str) -> ! {
    log!("boot failed: {msg}");
    sys::sync();
    let e = sys::power_off();
    log!("power off failed: {e}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn run_cli() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(PathBuf::from);
    let mut connector: Box<dyn Connector> = match args.first().map(String::as_str) {
        Some("--version") => {
            println!("bandsox-agent {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Some("--listen-unix") if args.len() == 2 => {
            let Some(path) = arg(1) else { return 2 };
            match UnixConnector::bind(&path) {
                Ok(c) => Box::new(c),
                Err(e) => {
                    log!("bind {}: {e}", path.display());
                    return 1;
                }
            }
        }
        Some("--serial") if args.len() == 2 => {
            let Some(path) = arg(1) else { return 2 };
            match SerialConnector::open(&path) {
                Ok(c) => Box::new(c),
                Err(e) => {
                    log!("open {}: {e}", path.display());
                    return 1;
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            return 2;
        }
    };
    // Adopt orphaned grandchildren as PID 1 would, so the reaper sees them.
    if let Err(e) = sys::set_child_subreaper() {
        log!("PR_SET_CHILD_SUBREAPER: {e}");
    }
    reaper::start();
    let agent = Agent::new(AgentConfig {
        base_env: boot::base_env(),
        shutdown: ShutdownAction::Exit,
    });
    loop {
        serve_guarded(&agent, connector.as_mut());
        std::thread::sleep(Duration::from_millis(100));
    }
}
