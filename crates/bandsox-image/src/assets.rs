//! `bandsox init`: the kernel, initramfs and manifest under `<storage>/kernels/`.
//!
//! The initramfs holds the static guest agent as `/init`, the kernel modules it loads (in the
//! order listed by `/lib/modules/load-order`) and the empty mount points it uses. It is an
//! uncompressed newc archive: under TCG the guest kernel's gunzip costs more boot time than
//! QEMU loading the larger file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cpio::CpioWriter;
use crate::kernel::{banner_version, extract_vmlinux, is_bzimage, is_elf};
use crate::modules::{module_name, resolve_load_order, GUEST_MODULES};
use crate::util::{run_tool, sha256_bytes, sha256_file, write_atomic};
use crate::ImageError;

/// Directory under the storage root that holds the boot assets.
pub const KERNELS_DIR: &str = "kernels";
/// File name of the ELF kernel.
pub const VMLINUX_FILE: &str = "vmlinux";
/// File name of the initramfs (uncompressed cpio newc).
pub const INITRAMFS_FILE: &str = "initramfs.cpio";
/// File name of the manifest describing the installed assets.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Path of the module load-order list inside the initramfs.
pub const LOAD_ORDER_PATH: &str = "lib/modules/load-order";

/// Version of the asset layout; bumping it makes `install_kernel_assets` rebuild.
const LAYOUT_VERSION: u32 = 1;

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A Debian `linux-image-*` package: vmlinux and modules are taken from it.
    Deb(PathBuf),
    /// A user-provided Firecracker-compatible ELF vmlinux (a bzImage is accepted too). No modules
    /// are available then: the initramfs carries none and the kernel must have the drivers
    /// built in.
    Vmlinux(PathBuf),
}

/// Inputs of [`install_kernel_assets`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Storage root (`/var/lib/bandsox`); assets go to `<storage>/kernels/`.
    pub storage: PathBuf,
    pub kernel: KernelSource,
    /// The static `bandsox-agent` binary, installed as `/init`.
    pub agent_bin: PathBuf,
    /// Rebuild even when the manifest says the assets are current.
    pub force: bool,
}

/// What [`install_kernel_assets`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub kernel_version: String,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// Module names in load order.
    pub modules: Vec<String>,
    /// False when the assets were already current and nothing was written.
    pub changed: bool,
}

/// Contents of `<storage>/kernels/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelManifest {
    pub layout_version: u32,
    pub kernel_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deb_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinux_sha256: Option<String>,
    pub agent_sha256: String,
    /// Module names in load order.
    pub modules: Vec<String>,
    /// `none` (uncompressed newc).
    pub initramfs_compression: String,
    /// True when debug info was stripped from the agent copy inside the initramfs.
    #[serde(default)]
    pub agent_stripped: bool,
}

/// Creates `<storage>/kernels/` and writes `vmlinux`, `initramfs.cpio` (uncompressed newc) and
/// `manifest.json` (`kernel_version`, `deb_sha256` or `vmlinux_sha256`, `agent_sha256`,
/// `modules`). For a `.deb`: unpacks it with `dpkg-deb -x` into a temporary directory, runs
/// `depmod -b <tmp> <version>`, extracts vmlinux from `boot/vmlinuz-<version>` and resolves
/// [`GUEST_MODULES`]. Idempotent: when the manifest matches (same kernel source hash, same agent
/// hash) and the files exist nothing is written and `changed` is false, unless `force`. Every
/// file is written atomically and the temporary directory is always removed.
pub fn install_kernel_assets(opts: &InitOptions) -> Result<InitReport, ImageError> {
    let dir = opts.storage.join(KERNELS_DIR);
    fs::create_dir_all(&dir).map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
    let vmlinux_path = dir.join(VMLINUX_FILE);
    let initramfs_path = dir.join(INITRAMFS_FILE);
    let manifest_path = dir.join(MANIFEST_FILE);

    let agent = fs::read(&opts.agent_bin)
        .map_err(|e| ImageError::io(format!("read agent {}", opts.agent_bin.display()), e))?;
    check_static_elf(&agent, &opts.agent_bin)?;
    let agent_sha256 = sha256_bytes(&agent);
    let (deb_sha256, vmlinux_sha256) = match &opts.kernel {
        KernelSource::Deb(p) => (Some(sha256_file(p)?), None),
        KernelSource::Vmlinux(p) => (None, Some(sha256_file(p)?)),
    };

    if !opts.force {
        if let Some(old) = read_manifest(&opts.storage)? {
            let current = old.layout_version == LAYOUT_VERSION
                && old.agent_sha256 == agent_sha256
                && old.deb_sha256 == deb_sha256
                && old.vmlinux_sha256 == vmlinux_sha256
                && vmlinux_path.is_file()
                && initramfs_path.is_file();
            if current {
                return Ok(InitReport {
                    kernel_version: old.kernel_version,
                    vmlinux: vmlinux_path,
                    initramfs: initramfs_path,
                    modules: old.modules,
                    changed: false,
                });
            }
        }
    }

    // From here on the old assets are stale: drop the manifest first so a crash midway can never
    // leave a manifest that vouches for a mix of old and new files.
    match fs::remove_file(&manifest_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ImageError::io(
                format!("remove {}", manifest_path.display()),
                e,
            ))
        }
    }

    let tmp = tempfile::Builder::new()
        .prefix(".init-")
        .tempdir_in(&dir)
        .map_err(|e| ImageError::io(format!("create temporary dir in {}", dir.display()), e))?;

    let (kernel_version, vmlinux, modules) = match &opts.kernel {
        KernelSource::Deb(deb) => kernel_from_deb(deb, tmp.path())?,
        KernelSource::Vmlinux(p) => {
            let bytes =
                fs::read(p).map_err(|e| ImageError::io(format!("read {}", p.display()), e))?;
            let vmlinux = if is_elf(&bytes) {
                bytes
            } else if is_bzimage(&bytes) {
                extract_vmlinux(&bytes)?
            } else {
                return Err(ImageError::NotElf(p.display().to_string()));
            };
            let version = banner_version(&vmlinux).unwrap_or_else(|| "unknown".to_owned());
            (version, vmlinux, Vec::new())
        }
    };

    let mut module_files = Vec::with_capacity(modules.len());
    for path in &modules {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !file_name.ends_with(".ko") {
            return Err(ImageError::BadKernelPackage(format!(
                "module {} is compressed; the agent loads only uncompressed .ko files",
                path.display()
            )));
        }
        let data =
            fs::read(path).map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
        module_files.push((file_name, data));
    }
    let (init_bin, agent_stripped) = strip_debug_info(&agent, &opts.agent_bin, tmp.path())?;
    let initramfs = build_initramfs(&init_bin, &module_files)?;
    let module_names: Vec<String> = module_files.iter().map(|(f, _)| module_name(f)).collect();

    write_atomic(&vmlinux_path, 0o644, |f| f.write_all(&vmlinux))?;
    write_atomic(&initramfs_path, 0o644, |f| f.write_all(&initramfs))?;
    let manifest = KernelManifest {
        layout_version: LAYOUT_VERSION,
        kernel_version: kernel_version.clone(),
        deb_sha256,
        vmlinux_sha256,
        agent_sha256,
        modules: module_names.clone(),
        initramfs_compression: "none".to_owned(),
        agent_stripped,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
        path: manifest_path.clone(),
        source,
    })?;
    write_atomic(&manifest_path, 0o644, |f| {
        f.write_all(&json)?;
        f.write_all(b"\n")
    })?;
    drop(tmp);

    Ok(InitReport {
        kernel_version,
        vmlinux: vmlinux_path,
        initramfs: initramfs_path,
        modules: module_names,
        changed: true,
    })
}

/// Reads `<storage>/kernels/manifest.json`; `None` when it does not exist.
pub fn read_manifest(storage: &Path) -> Result<Option<KernelManifest>, ImageError> {
    let path = storage.join(KERNELS_DIR).join(MANIFEST_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(format!("read {}", path.display()), e)),
    };
    // An unreadable manifest (older layout, truncated by hand) just means "rebuild".
    Ok(serde_json::from_slice(&bytes).ok())
}

/// Paths a VM boots from: `(vmlinux, initramfs)`. Fails with [`ImageError::NotInitialised`]
/// (whose message says to run `bandsox init`) when either is missing.
pub fn kernel_paths(storage: &Path) -> Result<(PathBuf, PathBuf), ImageError> {
    let dir = storage.join(KERNELS_DIR);
    let vmlinux = dir.join(VMLINUX_FILE);
    let initramfs = dir.join(INITRAMFS_FILE);
    for p in [&vmlinux, &initramfs] {
        if !p.is_file() {
            return Err(ImageError::NotInitialised {
                detail: format!("{} is missing", p.display()),
            });
        }
    }
    Ok((vmlinux, initramfs))
}

/// Builds the initramfs: `/init` (the agent), `/lib/modules/<file>.ko` + `load-order`, and the
/// directories the agent mounts on. `modules` are `(file name, contents)` in load order.
pub fn build_initramfs(agent: &[u8], modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>, ImageError> {
    let ctx = |e| ImageError::io("build initramfs", e);
    let mut w = CpioWriter::new(Vec::with_capacity(
        agent.len() + modules.iter().map(|(_, d)| d.len() + 512).sum::<usize>() + 4096,
    ));
    for dir in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "newroot",
        "lower",
        "rw",
        "lib",
        "lib/modules",
    ] {
        w.dir(dir, 0o755).map_err(ctx)?;
    }
    w.char_device("dev/console", 0o600, 5, 1).map_err(ctx)?;
    w.file("init", 0o755, agent).map_err(ctx)?;
    let mut order = String::new();
    for (name, data) in modules {
        if name.contains('/') || order.lines().any(|l| l == name) {
            return Err(ImageError::InvalidInput(format!(
                "bad or duplicate module file {name}"
            )));
        }
        w.file(&format!("lib/modules/{name}"), 0o644, data)
            .map_err(ctx)?;
        order.push_str(name);
        order.push('\n');
    }
    w.file(LOAD_ORDER_PATH, 0o644, order.as_bytes())
        .map_err(ctx)?;
    w.finish().map_err(ctx)
}

/// The agent as it goes into the initramfs: without debug info when the binary has some and
/// binutils' `strip` is installed. A deleted `/init` stays resident in guest RAM for the VM's
/// whole life (and in every snapshot), so the ~6 MB of line tables a release build carries are
/// worth dropping. Returns the bytes and whether they were stripped.
fn strip_debug_info(agent: &[u8], path: &Path, tmp: &Path) -> Result<(Vec<u8>, bool), ImageError> {
    let has_debug = agent.windows(7).any(|w| w == b".debug_");
    if !has_debug {
        return Ok((agent.to_vec(), false));
    }
    let out = tmp.join("init");
    match run_tool(
        "strip",
        "install binutils",
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(path),
    ) {
        Ok(_) => {}
        Err(ImageError::ToolMissing { .. }) => {
            tracing::warn!("`strip` not found: the agent keeps its debug info in the initramfs");
            return Ok((agent.to_vec(), false));
        }
        Err(e) => return Err(e),
    }
    let stripped =
        fs::read(&out).map_err(|e| ImageError::io(format!("read {}", out.display()), e))?;
    check_static_elf(&stripped, &out)?;
    Ok((stripped, true))
}

/// Unpacks a kernel `.deb`, runs depmod, extracts vmlinux and resolves the guest modules.
fn kernel_from_deb(deb: &Path, tmp: &Path) -> Result<(String, Vec<u8>, Vec<PathBuf>), ImageError> {
    let root = tmp.join("pkg");
    run_tool(
        "dpkg-deb",
        "install dpkg",
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
    )?;
    let modules_base = root.join("lib/modules");
    let mut versions: Vec<String> = fs::read_dir(&modules_base)
        .map_err(|e| {
            ImageError::BadKernelPackage(format!(
                "{} has no lib/modules ({e}); is it a linux-image package?",
                deb.display()
            ))
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    let version = match versions.as_slice() {
        [v] => v.clone(),
        other => {
            return Err(ImageError::BadKernelPackage(format!(
                "expected one kernel version under lib/modules, found {other:?}"
            )))
        }
    };
    run_tool(
        "depmod",
        "install kmod",
        Command::new("depmod").arg("-b").arg(&root).arg(&version),
    )?;
    let bz_path = root.join("boot").join(format!("vmlinuz-{version}"));
    let bz = fs::read(&bz_path).map_err(|e| {
        ImageError::BadKernelPackage(format!("cannot read {}: {e}", bz_path.display()))
    })?;
    let vmlinux = extract_vmlinux(&bz)?;
    let modules = resolve_load_order(&modules_base.join(&version), GUEST_MODULES)?;
    Ok((version, vmlinux, modules))
}

/// Refuses an agent that is not a static ELF executable: as `/init` a dynamic one fails with a
/// kernel panic that names nothing useful.
fn check_static_elf(bytes: &[u8], path: &Path) -> Result<(), ImageError> {
    if !is_elf(bytes) || bytes.len() < 64 || bytes[4] != 2 {
        return Err(ImageError::InvalidInput(format!(
            "agent {} is not a 64-bit ELF executable",
            path.display()
        )));
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(ty) = bytes.get(at..at + 4) else {
            break;
        };
        if u32::from_le_bytes([ty[0], ty[1], ty[2], ty[3]]) == PT_INTERP {
            return Err(ImageError::InvalidInput(format!(
                "agent {} is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" \
                 --target x86_64-unknown-linux-gnu",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::parse_newc;

    /// A minimal static-looking ELF: header only, no program headers.
    fn fake_agent() -> Vec<u8> {
        let mut v = vec![0u8; 128];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2;
        v
    }

    fn fake_vmlinux() -> Vec<u8> {
        let mut v = fake_agent();
        v.extend_from_slice(b"Linux version 6.1.0-test (x@y) #1\0");
        v
    }

    #[test]
    fn initramfs_layout() {
        let mods = vec![
            ("virtio_ring.ko".to_owned(), vec![1u8; 10]),
            ("virtio.ko".to_owned(), vec![2u8; 20]),
        ];
        let entries = parse_newc(&build_initramfs(b"AGENT", &mods).unwrap()).unwrap();
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("init").data, b"AGENT");
        assert_eq!(get("init").mode & 0o777, 0o755);
        assert_eq!(get("lib/modules/virtio.ko").data, vec![2u8; 20]);
        assert_eq!(get(LOAD_ORDER_PATH).data, b"virtio_ring.ko\nvirtio.ko\n");
        for d in ["dev", "proc", "sys", "newroot", "dev/console"] {
            get(d);
        }
        assert!(
            build_initramfs(b"A", &[("x.ko".into(), vec![]), ("x.ko".into(), vec![])]).is_err()
        );
    }

    #[test]
    fn vmlinux_source_install_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        let kernel = dir.path().join("vmlinux-src");
        fs::write(&agent, fake_agent()).unwrap();
        fs::write(&kernel, fake_vmlinux()).unwrap();
        let storage = dir.path().join("storage");
        assert!(matches!(
            kernel_paths(&storage),
            Err(ImageError::NotInitialised { .. })
        ));
        assert!(kernel_paths(&storage)
            .unwrap_err()
            .to_string()
            .contains("run `bandsox init`"));

        let mut opts = InitOptions {
            storage: storage.clone(),
            kernel: KernelSource::Vmlinux(kernel.clone()),
            agent_bin: agent.clone(),
            force: false,
        };
        let first = install_kernel_assets(&opts).unwrap();
        assert!(first.changed);
        assert_eq!(first.kernel_version, "6.1.0-test");
        assert!(first.modules.is_empty());
        let (v, i) = kernel_paths(&storage).unwrap();
        assert_eq!(fs::read(&v).unwrap(), fake_vmlinux());
        let entries = parse_newc(&fs::read(&i).unwrap()).unwrap();
        assert!(entries
            .iter()
            .any(|e| e.name == LOAD_ORDER_PATH && e.data.is_empty()));
        let manifest = read_manifest(&storage).unwrap().unwrap();
        assert!(manifest.vmlinux_sha256.is_some() && manifest.deb_sha256.is_none());

        let second = install_kernel_assets(&opts).unwrap();
        assert!(!second.changed);
        opts.force = true;
        assert!(install_kernel_assets(&opts).unwrap().changed);
        opts.force = false;
        let mut a = fake_agent();
        a.push(9);
        fs::write(&agent, a).unwrap();
        assert!(
            install_kernel_assets(&opts).unwrap().changed,
            "agent change rebuilds"
        );

        // Nothing but the three assets is left in kernels/.
        let mut names: Vec<_> = fs::read_dir(storage.join(KERNELS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [INITRAMFS_FILE, MANIFEST_FILE, VMLINUX_FILE]);
    }

    #[test]
    fn dynamic_or_non_elf_agent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_static_elf(b"#!/bin/sh\n", dir.path()).is_err());
        // /bin/ls on any Debian host is dynamically linked.
        if let Ok(ls) = fs::read("/bin/ls") {
            let err = check_static_elf(&ls, Path::new("/bin/ls")).unwrap_err();
            assert!(err.to_string().contains("crt-static"), "{err}");
        }
        if let Ok(bb) = fs::read("/bin/busybox") {
            check_static_elf(&bb, Path::new("/bin/busybox")).unwrap();
        }
    }

    #[test]
    fn debug_info_is_stripped_when_present() {
        let dir = tempfile::tempdir().unwrap();
        // No debug sections: passed through untouched, `strip` never runs.
        let (same, stripped) =
            strip_debug_info(&fake_agent(), Path::new("/nonexistent"), dir.path()).unwrap();
        assert_eq!((same, stripped), (fake_agent(), false));
        // A real static binary with line tables, when a release agent has been built here.
        let agent = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/x86_64-unknown-linux-gnu/release/bandsox-agent");
        let Ok(bytes) = fs::read(&agent) else { return };
        if !bytes.windows(7).any(|w| w == b".debug_") {
            return;
        }
        match strip_debug_info(&bytes, &agent, dir.path()) {
            Ok((out, true)) => {
                assert!(out.len() < bytes.len());
                check_static_elf(&out, &agent).unwrap();
            }
            Ok((_, false)) => eprintln!("skipping: strip not installed"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Full path with the real Debian kernel package, when it is cached on this machine.
    #[test]
    fn real_deb_install() {
        let deb =
            Path::new("/var/cache/bandsox/linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb");
        let Ok(busybox) = fs::read("/bin/busybox") else {
            return;
        };
        if !deb.exists() {
            eprintln!("skipping: kernel package not cached");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, busybox).unwrap();
        let opts = InitOptions {
            storage: dir.path().join("s"),
            kernel: KernelSource::Deb(deb.to_path_buf()),
            agent_bin: agent,
            force: false,
        };
        let report = match install_kernel_assets(&opts) {
            Err(ImageError::ToolMissing { tool, .. }) => {
                eprintln!("skipping: {tool} missing");
                return;
            }
            r => r.unwrap(),
        };
        assert_eq!(report.kernel_version, "6.1.0-56-cloud-amd64");
        assert_eq!(
            report.modules,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_blk",
                "virtio_console",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "virtio_rng",
                "overlay",
            ]
        );
        let entries = parse_newc(&fs::read(&report.initramfs).unwrap()).unwrap();
        let order = entries.iter().find(|e| e.name == LOAD_ORDER_PATH).unwrap();
        assert!(String::from_utf8_lossy(&order.data).contains("virtio-rng.ko\n"));
        assert!(!install_kernel_assets(&opts).unwrap().changed);
        let leftovers = fs::read_dir(dir.path().join("s").join(KERNELS_DIR))
            .unwrap()
            .count();
        assert_eq!(leftovers, 3, "temp dir removed");
    }
}
