//! The Firecracker driver against the real binaries, when `BANDSOX_FIRECRACKER_BIN` (and for
//! the jailed run `BANDSOX_JAILER_BIN`, or a `jailer` next to Firecracker) are set; skipped
//! with a message otherwise (CI has no Firecracker). Once set, any failure fails the test.
//!
//! Each mode (plain and jailed) runs the API-level lifecycle that works on any host with
//! `/dev/kvm`, even where KVM cannot run a guest (a PVM nested hypervisor): spawn, configure
//! and start, pause, resume, Full snapshot, load into a fresh VM, attach from a new driver (a
//! simulated server restart), kill, and nothing left behind (jail directories, cgroup
//! directories, sockets, processes). The guest kernel is a minimal ELF that halts
//! (`BANDSOX_FC_TEST_KERNEL`/`BANDSOX_FC_TEST_INITRD` use real ones). A third test checks the
//! fakes' argument tables and error output against the real `--help` and refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bandsox_vmm::firecracker::cgroup::{CgroupHost, MOUNTS};
use bandsox_vmm::firecracker::{FirecrackerConfig, FirecrackerDriver, FirecrackerHandle};
use bandsox_vmm::{Disk, VmHandle, VmSpec, VmmDriver, VmmError};
use common::fake_args;
use common::fake_fc::{run_binary, FakeOptions};
use common::fake_jailer::HostKind;

/// The real Firecracker, or `None` (skip, with the reason printed).
fn firecracker_bin() -> Option<PathBuf> {
    let Some(fc) = std::env::var_os("BANDSOX_FIRECRACKER_BIN").map(PathBuf::from) else {
        eprintln!("skipped: BANDSOX_FIRECRACKER_BIN is not set (see docs/firecracker.md)");
        return None;
    };
    assert!(
        fc.is_file(),
        "BANDSOX_FIRECRACKER_BIN={} is not a file",
        fc.display()
    );
    Some(fc)
}

/// The real jailer: `BANDSOX_JAILER_BIN` (which must exist), else next to Firecracker.
fn jailer_bin(fc: &Path) -> Option<PathBuf> {
    match std::env::var_os("BANDSOX_JAILER_BIN").map(PathBuf::from) {
        Some(j) => {
            assert!(
                j.is_file(),
                "BANDSOX_JAILER_BIN={} is not a file",
                j.display()
            );
            Some(j)
        }
        None => bandsox_vmm::firecracker::find_jailer(fc),
    }
}

/// A minimal x86-64 ELF "kernel": one segment at 1 MiB (where Firecracker loads kernels)
/// that halts forever (`hlt; jmp .-1`).
fn tiny_kernel() -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const CODE_AT: u64 = 0x1000;
    let code = [0xf4u8, 0xeb, 0xfd];
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [
        CODE_AT,
        LOAD,
        LOAD,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        // offset, vaddr, paddr, filesz, memsz, align
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.resize(CODE_AT as usize, 0);
    elf.extend_from_slice(&code);
    elf
}

/// One test's files and VM ids. The ids carry this process's pid, so concurrent runs never
/// share a cgroup (`<hierarchy>/firecracker/<id>`). Dropping it (also when the test fails)
/// kills what is left of its VMMs and removes their cgroups and the parent cgroups it created.
struct Lab {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
    ids: [String; 2],
    cgroups: Vec<PathBuf>,
    new_parents: Vec<PathBuf>,
}

impl Lab {
    fn new(mode: &str) -> Self {
        // Short: socket paths must fit in 107 bytes. World-traversable: the jail user
        // (65534) needs no access, but the jailer canonicalises the base as root.
        let dir = tempfile::Builder::new()
            .prefix("fcreal")
            .tempdir_in("/tmp")
            .unwrap();
        let (kernel, initrd) = match (
            std::env::var_os("BANDSOX_FC_TEST_KERNEL"),
            std::env::var_os("BANDSOX_FC_TEST_INITRD"),
        ) {
            (Some(k), Some(i)) => (PathBuf::from(k), PathBuf::from(i)),
            _ => {
                let k = dir.path().join("vmlinux");
                std::fs::write(&k, tiny_kernel()).unwrap();
                let i = dir.path().join("initrd");
                std::fs::write(&i, [0u8; 4096]).unwrap();
                (k, i)
            }
        };
        let ids = ["one", "two"].map(|n| format!("real-{mode}-{n}-{}", std::process::id()));
        let host = CgroupHost::detect(Path::new(MOUNTS));
        let cgroups: Vec<PathBuf> = ids
            .iter()
            .flat_map(|id| host.vm_dirs("firecracker", id))
            .collect();
        let new_parents = cgroups
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf))
            .filter(|p| !p.exists())
            .collect();
        Self {
            dir,
            kernel,
            initrd,
            ids,
            cgroups,
            new_parents,
        }
    }

    fn spec(&self, id: &str) -> VmSpec {
        let run_dir = self.dir.path().join("vms").join(id);
        std::fs::create_dir_all(&run_dir).unwrap();
        let disk = run_dir.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        VmSpec {
            id: id.into(),
            run_dir,
            vcpu: 1,
            mem_mib: 128,
            kernel: self.kernel.clone(),
            initramfs: self.initrd.clone(),
            kernel_args: vec![],
            disks: vec![Disk {
                path: disk,
                read_only: false,
            }],
            network: None,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|pid| {
                let w = words(*pid);
                self.ids
                    .iter()
                    .any(|id| w.windows(2).any(|p| p[0] == "--id" && p[1] == *id))
            })
            .collect();
        for pid in &pids {
            eprintln!("cleanup: killing leftover VMM {pid}");
            bandsox_vmm::kill_process(*pid);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for d in &self.cgroups {
            while d.exists()
                && std::fs::remove_dir(d).is_err()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Shared with any other run's VMs: only if empty now.
        for d in &self.new_parents {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn words(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// `NSpid:` of `/proc/<pid>/status`: the pid in each namespace from ours inwards.
fn ns_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn state(h: &FirecrackerHandle) -> String {
    let info = h.api().call("GET", "/", None, "describe").await.unwrap();
    info.body.unwrap()["state"].as_str().unwrap().to_string()
}

/// Reads a cgroup file of the VM (trimmed).
fn cg_read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

/// Checks that the VM's limits are what the plan asked for, read back from the kernel.
fn assert_limits(h: &FirecrackerHandle, spec: &VmSpec) {
    let host = CgroupHost::detect(Path::new(MOUNTS));
    let plan = host.plan(spec.vcpu, spec.mem_mib);
    assert!(
        plan.missing.is_empty(),
        "this host lacks {:?}",
        plan.missing
    );
    let existing: Vec<&PathBuf> = h.jail().cgroups.iter().filter(|d| d.is_dir()).collect();
    assert!(
        !existing.is_empty(),
        "no VM cgroup in {:?}",
        h.jail().cgroups
    );
    let mem = (u64::from(spec.mem_mib) + 256) << 20;
    let quota = u64::from(spec.vcpu) * 100_000;
    let pid = h.pid().to_string();
    let mut checked = 0;
    for d in existing {
        let procs = if plan.version == Some(1) {
            "tasks"
        } else {
            "cgroup.procs"
        };
        assert!(
            cg_read(d, procs).lines().any(|p| p == pid),
            "{pid} not in {}",
            d.display()
        );
        for (file, want) in [
            ("cpu.max", format!("{quota} 100000")),
            ("memory.max", mem.to_string()),
            ("cpu.cfs_quota_us", quota.to_string()),
            ("cpu.cfs_period_us", "100000".into()),
            ("memory.limit_in_bytes", mem.to_string()),
        ] {
            if d.join(file).exists() {
                assert_eq!(cg_read(d, file), want, "{}/{file}", d.display());
                checked += 1;
            }
        }
    }
    let want = if plan.version == Some(1) { 3 } else { 2 };
    assert_eq!(
        checked,
        want,
        "limits read back from {:?}",
        h.jail().cgroups
    );
}

async fn lifecycle(jailed: bool) {
    let Some(fc) = firecracker_bin() else {
        return;
    };
    let jailer = match (jailed, jailer_bin(&fc)) {
        (false, _) => None,
        (true, Some(j)) => Some(j),
        (true, None) => {
            eprintln!(
                "skipped: no jailer (set BANDSOX_JAILER_BIN or put `jailer` next to firecracker)"
            );
            return;
        }
    };
    let lab = Lab::new(if jailed { "j" } else { "p" });
    let config = || {
        let mut c = FirecrackerConfig::new(fc.clone(), jailer.clone(), lab.dir.path().join("jail"));
        c.start_timeout = Duration::from_secs(20);
        c
    };
    let driver = FirecrackerDriver::new(config());
    let [id1, id2] = lab.ids.clone();

    let spec = lab.spec(&id1);
    let h = driver.spawn_handle(&spec).await.unwrap();
    let argv = words(h.pid());
    if jailed {
        // The jailer's copy, `--id <id>` as two words, in a new PID namespace where it is
        // PID 1; the pid recorded (from `<root>/firecracker.pid`) is that process from here.
        assert_eq!(
            argv[..3],
            ["/firecracker", "--id", id1.as_str()],
            "{argv:?}"
        );
        assert_eq!(ns_pids(h.pid()), [h.pid(), 1]);
        assert_limits(&h, &spec);
    } else {
        assert_eq!(
            argv,
            [
                fc.display().to_string(),
                "--id".into(),
                id1.clone(),
                "--api-sock".into(),
                h.jail().path("api.sock").display().to_string(),
            ]
        );
        assert!(h.jail().cgroups.is_empty());
    }
    assert_eq!(state(&h).await, "Running");
    h.pause().await.unwrap();
    assert_eq!(state(&h).await, "Paused");
    h.resume().await.unwrap();
    h.pause().await.unwrap();
    let snap = lab.dir.path().join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    let state_file = snap.join("state");
    h.save_state(&state_file).await.unwrap();
    assert!(state_file.is_file());
    assert_eq!(
        std::fs::metadata(snap.join("state.mem")).unwrap().len(),
        u64::from(spec.mem_mib) << 20
    );

    let spec2 = lab.spec(&id2);
    let h2 = driver.restore_handle(&spec2, &state_file).await.unwrap();
    assert_eq!(state(&h2).await, "Running");
    if jailed {
        assert_limits(&h2, &spec2);
    }

    // A server restart: a new driver attaches by pid, and drives the VM.
    let restarted = FirecrackerDriver::new(config());
    let again = restarted.attach(&spec2, h2.pid()).await.unwrap();
    again.pause().await.unwrap();
    again.resume().await.unwrap();
    for (s, pid) in [
        (&spec, h2.pid()),
        (&spec2, h.pid()),
        (&spec2, std::process::id()),
    ] {
        assert!(
            matches!(
                restarted.attach(s, pid).await,
                Err(VmmError::NotOurProcess(_))
            ),
            "{} claimed pid {pid}",
            s.id
        );
    }

    let pids = [h.pid(), h2.pid()];
    let dirs: Vec<PathBuf> = [h.jail(), h2.jail()]
        .iter()
        .flat_map(|j| std::iter::once(j.dir.clone()).chain(j.cgroups.iter().cloned()))
        .collect();
    h.kill().await.unwrap();
    again.kill().await.unwrap();
    assert!(h2.wait_exit(Duration::from_secs(5)).await.is_some());
    for pid in pids {
        assert!(!bandsox_vmm::process_alive(pid), "VMM {pid} survived");
    }
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    let jail_base = lab.dir.path().join("jail/firecracker");
    let left: Vec<_> = std::fs::read_dir(&jail_base)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the jail base: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_firecracker_plain() {
    lifecycle(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_firecracker_jailed() {
    lifecycle(true).await;
}

/// Drops the timestamp Firecracker's log lines start with.
fn untimed(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string())
        .collect()
}

#[test]
fn real_binaries_match_the_fakes() {
    let Some(fc) = firecracker_bin() else {
        return;
    };
    let jailer = jailer_bin(&fc);
    let dir = tempfile::Builder::new()
        .prefix("fch")
        .tempdir_in("/tmp")
        .unwrap();
    let fakes = common::fake_fc::install(
        dir.path(),
        &FakeOptions {
            host: HostKind::Hybrid,
            ..FakeOptions::default()
        },
    );
    let mut pairs = vec![(
        fc.clone(),
        fakes.firecracker.clone(),
        fake_args::FIRECRACKER,
        "Firecracker",
    )];
    if let Some(j) = &jailer {
        pairs.push((j.clone(), fakes.jailer.clone(), fake_args::JAILER, "Jailer"));
    }
    for (real, _, table, name) in &pairs {
        let (code, help, _) = run_binary(real, &["--help"]);
        assert_eq!(code, Some(0));
        assert!(
            help.starts_with(&format!("{name} v{}\n", fake_args::VERSION)),
            "the fakes model v{}; update fake_args.rs for: {}",
            fake_args::VERSION,
            help.lines().next().unwrap_or_default()
        );
        let mut listed = fake_args::options_in_help(&help);
        listed.retain(|(n, _, _)| n != "help");
        listed.sort();
        let mut modelled: Vec<_> = table
            .iter()
            .map(|o| {
                (
                    o.name.to_string(),
                    o.takes_value,
                    o.default.map(str::to_owned),
                )
            })
            .collect();
        modelled.sort();
        assert_eq!(
            listed, modelled,
            "{name}: the fake's table differs from --help"
        );
    }

    // The same refusals, the same exit codes and messages.
    let sock = dir.path().join("x.sock").display().to_string();
    for args in [
        vec!["--id=x", "--api-sock", sock.as_str()],
        vec!["--bogus"],
        vec!["--id"],
        vec!["--id", "a", "--id", "b"],
        vec!["--api-sock=/s"],
    ] {
        let real = run_binary(&fc, &args);
        let fake = run_binary(&fakes.firecracker, &args);
        assert_eq!(real.0, fake.0, "{args:?}");
        assert_eq!(untimed(&real.1), untimed(&fake.1), "{args:?} stdout");
        assert_eq!(real.2, fake.2, "{args:?} stderr");
    }
    let Some(jailer) = jailer else {
        return;
    };
    let exec = fc.display().to_string();
    let base = dir.path().display().to_string();
    let required = ["--exec-file", exec.as_str(), "--uid", "0", "--gid", "0"];
    let mut cases: Vec<Vec<&str>> = [
        &["--id=x"][..],
        &["--id", "x", "--bogus"],
        &[],
        &["--id", "x", "--cgroup-version=2"],
        &["--id", "bad_id"],
    ]
    .iter()
    .map(|extra| [*extra, &required[..]].concat())
    .collect();
    // On a hybrid host (like the lab's), v2 limits fail before anything is made.
    let host = CgroupHost::detect(Path::new(MOUNTS));
    let hybrid = host.plan(1, 1).version == Some(1)
        && std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| m.contains(" cgroup2 "));
    if hybrid {
        let v2 = [
            "--id",
            "x",
            "--chroot-base-dir",
            base.as_str(),
            "--cgroup-version",
            "2",
        ];
        cases.push([&v2[..], &required, &["--cgroup", "cpu.max=100000 100000"]].concat());
    }
    for args in cases {
        let real = run_binary(&jailer, &args);
        let fake = run_binary(&fakes.jailer, &args);
        assert_eq!(real.0, fake.0, "{args:?}: {} / {}", real.2, fake.2);
        assert_eq!(real.2, fake.2, "{args:?} stderr");
    }
    assert!(!dir.path().join("firecracker/x").exists());
}
