//! Cleanup after a VM test, shared by the core and CLI test harnesses (the CLI's includes this
//! file by path): VMMs outlive their manager by design, so a test that fails half-way would
//! leave processes and network namespaces behind.

use std::path::Path;

/// Pids whose command line contains `needle` (this process excluded).
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if cmd.windows(needle.len()).any(|w| w == needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// SIGKILLs every process whose command line contains `needle`.
pub fn kill_processes_mentioning(needle: &Path) {
    for pid in processes_mentioning(needle) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

/// Deletes the network namespaces (`bsx-<id>`) of this root's VMs and template builds
/// (`templates/.build-<id>`) that a failed test, or a server killed mid-build, left.
pub fn remove_vm_namespaces(root: &Path) {
    let vms = std::fs::read_dir(root.join("vms")).into_iter().flatten();
    let builds = std::fs::read_dir(root.join("templates"))
        .into_iter()
        .flatten();
    for e in vms.chain(builds).flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let id = name.strip_prefix(".build-").unwrap_or(&name);
        let ns = format!("bsx-{id}");
        if Path::new("/run/netns").join(&ns).exists() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &ns])
                .status();
        }
    }
}

/// Kills what still names `root` and removes its VMs' namespaces.
pub fn clean_root(root: &Path) {
    kill_processes_mentioning(root);
    remove_vm_namespaces(root);
}
