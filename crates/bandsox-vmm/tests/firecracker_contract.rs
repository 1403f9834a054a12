//! Contract tests of the Firecracker driver against a fake Firecracker that validates every
//! request against the official API spec (`tests/firecracker-api.yaml`, v1.17.0-dev), and a
//! fake jailer that builds the real jail layout. With `BANDSOX_FIRECRACKER_BIN` set, one more
//! test drives the real binary (see `docs/firecracker.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bandsox_vmm::firecracker::{FirecrackerConfig, FirecrackerDriver};
use bandsox_vmm::{Disk, NetSpec, VmHandle, VmSpec, VmmDriver, VmmError};
use common::validator::ApiSpec;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Not a test: the body of the fake Firecracker when the launcher script runs this binary.
#[test]
fn fake_fc_server() {
    if std::env::var("BANDSOX_FAKE_FC").as_deref() == Ok("1") {
        common::fake_fc::run();
    }
}

struct Env {
    dir: tempfile::TempDir,
    fc: PathBuf,
    jailer: PathBuf,
}

impl Env {
    fn new(fail: &str, hang: &str) -> Self {
        // Short paths: socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("fct")
            .tempdir_in("/tmp")
            .unwrap();
        let (fc, jailer) = common::fake_fc::write_scripts(
            &dir.path().join("bin"),
            &dir.path().join("requests.jsonl"),
            fail,
            hang,
        );
        for f in ["vmlinux", "initramfs", "base.ext4", "data.ext4"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        Self { dir, fc, jailer }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn driver(&self, jailed: bool) -> FirecrackerDriver {
        let mut c = FirecrackerConfig::new(
            self.fc.clone(),
            jailed.then(|| self.jailer.clone()),
            self.path("jail"),
        );
        c.cgroup_base = self.path("cgroup");
        c.api_timeout = Duration::from_secs(5);
        c.start_timeout = Duration::from_secs(20);
        FirecrackerDriver::new(c)
    }

    fn spec(&self, id: &str, data: &Path) -> VmSpec {
        let run_dir = self.path(&format!("vms/{id}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        VmSpec {
            id: id.into(),
            run_dir,
            vcpu: 2,
            mem_mib: 256,
            kernel: self.path("vmlinux"),
            initramfs: self.path("initramfs"),
            kernel_args: vec!["bandsox.root=/dev/vda".into()],
            disks: vec![
                Disk {
                    path: self.path("base.ext4"),
                    read_only: true,
                },
                Disk {
                    path: data.to_path_buf(),
                    read_only: false,
                },
            ],
            network: None,
        }
    }

    /// Every request the fakes received, in order.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn assert_no_violations(&self) {
        for r in self.requests() {
            assert!(
                !r["answer"].to_string().contains("contract violation"),
                "request broke the API spec: {r}"
            );
        }
    }
}

fn calls(reqs: &[Value]) -> Vec<String> {
    reqs.iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(reqs: &'a [Value], call: &str) -> &'a Value {
    reqs.iter()
        .find(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            ) == call
        })
        .unwrap_or_else(|| panic!("no {call}"))
}

async fn echo_through_agent(h: &dyn VmHandle) {
    let mut s = h.connect_agent().await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn validator_accepts_good_and_rejects_wrong_bodies() {
    let spec = ApiSpec::load();
    assert_eq!(spec.version(), "1.17.0-dev");
    let ok = |m: &str, p: &str, b: Value| spec.validate(m, p, Some(&b));
    ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": true}),
    )
    .unwrap();
    ok("PUT", "/drives/drive0", json!({"drive_id": "drive0", "path_on_host": "drive0", "is_root_device": false, "is_read_only": true})).unwrap();
    ok("PUT", "/snapshot/load", json!({"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}, "vsock_override": {"uds_path": "v.sock"}, "resume_vm": true})).unwrap();
    spec.validate("GET", "/", None).unwrap();

    let bad = [
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": "two", "mem_size_mib": 256}),
            "expected an integer",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 64, "mem_size_mib": 256}),
            "above the maximum",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"mem_size_mib": 256}),
            "`vcpu_count` is missing",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 256, "vcpus": 1}),
            "unknown property",
        ),
        ("PATCH", "/vm", json!({"state": "Stopped"}), "is not one of"),
        (
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": "s", "mem_backend": {"backend_type": "File"}}),
            "`backend_path` is missing",
        ),
        (
            "PUT",
            "/drives/a",
            json!({"drive_id": "b", "is_root_device": false}),
            "differs from the path",
        ),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": 2, "uds_path": "v"}),
            "below the minimum",
        ),
        ("PUT", "/no-such-thing", json!({}), "not in the API spec"),
        ("DELETE", "/vm", json!({}), "not in the API spec"),
    ];
    for (m, p, b, want) in bad {
        let err = spec
            .validate(m, p, Some(&b))
            .expect_err(&format!("{m} {p} {b} must be rejected"));
        assert!(err.contains(want), "{m} {p}: `{err}` lacks `{want}`");
    }
    assert!(spec
        .validate("PUT", "/actions", None)
        .unwrap_err()
        .contains("requires a body"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_under_the_jailer() {
    let env = Env::new("", "");
    let driver = env.driver(true);
    let data = env.path("data.ext4");
    // A networked VM: the jailer enters its namespace, Firecracker gets its TAP.
    let net = NetSpec {
        netns: "bsx-vm-one".into(),
        tap: "tap0".into(),
        guest_mac: "06:00:ac:1f:00:02".into(),
    };
    let mut spec = env.spec("vm-one", &data);
    spec.network = Some(net.clone());
    let h = driver.spawn(&spec).await.unwrap();
    let jail_dir = env.path("jail/firecracker/vm-one");
    let root = jail_dir.join("root");
    assert!(root.join("api.sock").exists() && root.join("v.sock").exists());
    for f in [
        "vmlinux",
        "initrd",
        "drive0",
        "drive1",
        "fc.log",
        "fc.metrics",
    ] {
        assert!(root.join(f).is_file(), "{f} missing from the jail");
    }
    // Hard links: the writable drive is the VM's disk itself.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(root.join("drive1")).unwrap().ino(),
        std::fs::metadata(&data).unwrap().ino()
    );

    let argv = std::fs::read_to_string(env.path("bin/jailer.argv")).unwrap();
    let argv: Vec<&str> = argv.lines().collect();
    let base = env.path("jail").display().to_string();
    let fc = env.fc.display().to_string();
    for pair in [
        ["--id", "vm-one"],
        ["--exec-file", fc.as_str()],
        ["--chroot-base-dir", base.as_str()],
        ["--cgroup-version", "2"],
        ["--uid", "65534"],
        ["--gid", "65534"],
        ["--netns", "/run/netns/bsx-vm-one"],
    ] {
        assert!(
            argv.windows(2).any(|w| w == pair),
            "jailer argv {argv:?} lacks {pair:?}"
        );
    }
    assert!(argv.contains(&"cpu.max=200000 100000") && argv.contains(&"--new-pid-ns"));
    assert!(argv.ends_with(&["--", "--api-sock", "/api.sock"]));

    let reqs = env.requests();
    assert_eq!(
        calls(&reqs),
        [
            "PUT /logger",
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/drive0",
            "PUT /drives/drive1",
            "PUT /vsock",
            "PUT /entropy",
            "PUT /network-interfaces/eth0",
            "PUT /actions"
        ]
    );
    assert_eq!(
        find(&reqs, "PUT /network-interfaces/eth0")["body"],
        json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:1f:00:02"})
    );
    assert!(reqs.iter().all(|r| r["status"] == 204), "{reqs:?}");
    let m = &find(&reqs, "PUT /machine-config")["body"];
    assert_eq!(
        (
            m["vcpu_count"].as_u64(),
            m["mem_size_mib"].as_u64(),
            m["track_dirty_pages"].as_bool()
        ),
        (Some(2), Some(256), Some(true))
    );
    let boot = find(&reqs, "PUT /boot-source")["body"]["boot_args"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        boot.contains("bandsox.vsock=52") && boot.ends_with("bandsox.root=/dev/vda"),
        "{boot}"
    );
    assert_eq!(
        find(&reqs, "PUT /drives/drive0")["body"]["is_read_only"],
        true
    );
    assert_eq!(
        find(&reqs, "PUT /drives/drive1")["body"]["is_read_only"],
        false
    );
    assert_eq!(
        find(&reqs, "PUT /vsock")["body"],
        json!({"guest_cid": 3, "uds_path": "v.sock"})
    );
    assert_eq!(
        find(&reqs, "PUT /actions")["body"],
        json!({"action_type": "InstanceStart"})
    );

    echo_through_agent(h.as_ref()).await;
    h.pause().await.unwrap();
    h.resume().await.unwrap();
    h.pause().await.unwrap();
    let snap = env.path("snap");
    std::fs::create_dir_all(&snap).unwrap();
    h.save_state(&snap.join("state")).await.unwrap();
    assert!(snap.join("state").is_file());
    assert_eq!(
        std::fs::metadata(snap.join("state.mem")).unwrap().len(),
        256 << 20
    );
    // Snapshot files are not the jail user's (a VMM must not change what clones map) and
    // not world-readable (guest memory).
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    for f in ["state", "state.mem"] {
        let m = std::fs::metadata(snap.join(f)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640, "{f}");
        if root_user {
            assert_eq!((m.uid(), m.gid()), (0, 65534), "{f}");
        }
    }
    // Read-only inputs are linked without being given away; the writable disk is.
    if root_user {
        assert_eq!(std::fs::metadata(env.path("base.ext4")).unwrap().uid(), 0);
        assert_eq!(std::fs::metadata(&data).unwrap().uid(), 65534);
    }
    // Nothing of the snapshot stays in the jail.
    assert!(!std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("save-")));

    // Load into a new jail while the original still runs.
    let data2 = env.path("data2.ext4");
    std::fs::copy(&data, &data2).unwrap();
    let mut spec2 = env.spec("vm-two", &data2);
    spec2.network = Some(NetSpec {
        netns: "bsx-vm-two".into(),
        ..net
    });
    let h2 = driver.restore(&spec2, &snap.join("state")).await.unwrap();
    let reqs = env.requests();
    let load = find(&reqs, "PUT /snapshot/load");
    assert_eq!(load["status"], 204, "{load}");
    let body = &load["body"];
    assert_eq!(
        body["mem_backend"],
        json!({"backend_type": "File", "backend_path": "load.mem"})
    );
    assert_eq!(body["vsock_override"], json!({"uds_path": "v.sock"}));
    assert_eq!(
        body["network_overrides"],
        json!([{"iface_id": "eth0", "host_dev_name": "tap0"}])
    );
    assert_eq!(body["resume_vm"], true);
    assert_ne!(h2.pid(), h.pid());
    echo_through_agent(h2.as_ref()).await;

    // Re-attach (as after a server restart) checks the process is this VM's.
    let again = driver.attach(&spec2, h2.pid()).await.unwrap();
    assert_eq!(again.pid(), h2.pid());
    assert!(matches!(
        driver.attach(&spec, h2.pid()).await,
        Err(VmmError::NotOurProcess(_))
    ));
    assert!(matches!(
        driver.attach(&spec2, std::process::id()).await,
        Err(VmmError::NotOurProcess(_))
    ));

    let pids = [h.pid(), h2.pid()];
    h.kill().await.unwrap();
    h2.kill().await.unwrap();
    for pid in pids {
        assert!(!bandsox_vmm::process_alive(pid), "VMM {pid} survived kill");
    }
    assert!(!jail_dir.exists() && !env.path("jail/firecracker/vm-two").exists());
    // The VM's own files outlive the jail.
    assert!(data.is_file() && spec.run_dir.join("firecracker.log").is_file());
    env.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_firecracker_without_the_jailer() {
    let env = Env::new("", "");
    let driver = env.driver(false);
    let spec = env.spec("plain", &env.path("data.ext4"));
    let h = driver.spawn(&spec).await.unwrap();
    assert!(!env.path("bin/jailer.argv").exists());
    echo_through_agent(h.as_ref()).await;
    assert_eq!(driver.attach(&spec, h.pid()).await.unwrap().pid(), h.pid());
    h.pause().await.unwrap();
    h.save_state(&env.path("state")).await.unwrap();
    let spec2 = env.spec("plain2", &env.path("data.ext4"));
    let h2 = driver.restore(&spec2, &env.path("state")).await.unwrap();
    let pid = h.pid();
    h.kill().await.unwrap();
    // A VMM that dies on its own is reaped and its directory removed too.
    bandsox_vmm::kill_process(h2.pid());
    assert!(h2.wait_exit(Duration::from_secs(5)).await.is_some());
    assert!(!bandsox_vmm::process_alive(pid));
    assert!(!env.path("jail/firecracker/plain").exists());
    assert!(!env.path("jail/firecracker/plain2").exists());
    env.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_message_becomes_the_error_and_nothing_is_left() {
    let env = Env::new("PUT /boot-source", "");
    let driver = env.driver(true);
    let spec = env.spec("failing", &env.path("data.ext4"));
    let err = driver.spawn(&spec).await.err().expect("spawn must fail");
    let msg = err.to_string();
    assert!(matches!(err, VmmError::Control(_)), "{err:?}");
    assert!(
        msg.contains("PUT /boot-source")
            && msg.contains("400")
            && msg.contains("fake failure: Invalid kernel image"),
        "{msg}"
    );
    assert!(!env.path("jail/firecracker/failing").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_time_out_when_firecracker_does_not_answer() {
    let env = Env::new("", "PATCH /vm");
    let mut c = FirecrackerConfig::new(env.fc.clone(), Some(env.jailer.clone()), env.path("jail"));
    c.cgroup_base = env.path("cgroup");
    c.api_timeout = Duration::from_millis(300);
    let driver = FirecrackerDriver::new(c);
    let spec = env.spec("hang", &env.path("data.ext4"));
    let h = driver.spawn(&spec).await.unwrap();
    let t = std::time::Instant::now();
    let err = h.pause().await.unwrap_err();
    assert!(
        matches!(
            err,
            VmmError::Timeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    let pid = h.pid();
    h.kill().await.unwrap();
    assert!(!bandsox_vmm::process_alive(pid));
    assert!(!env.path("jail/firecracker/hang").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmm_death_is_detected_and_cleaned_up() {
    let env = Env::new("", "");
    let driver = env.driver(true);
    let spec = env.spec("dies", &env.path("data.ext4"));
    let h = driver.spawn(&spec).await.unwrap();
    assert!(h.exit_status().is_none());
    // Exit code 0 or a signal: either way the VM is gone.
    bandsox_vmm::kill_process(h.pid());
    let exit = h
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("death noticed");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(matches!(h.pause().await, Err(VmmError::Exited { .. })));
    assert!(h.connect_agent().await.is_err());
    assert!(
        !bandsox_vmm::process_alive(h.pid()),
        "the dead VMM was not reaped"
    );
    assert!(!env.path("jail/firecracker/dies").exists());
    h.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_load_refused_on_a_configured_process() {
    // Firecracker rejects a load after boot-specific configuration; the driver never does
    // that, but the fake must enforce it so the lifecycle test proves the order is right.
    let env = Env::new("", "");
    let driver = env.driver(true);
    let spec = env.spec("order", &env.path("data.ext4"));
    let h = driver.spawn(&spec).await.unwrap();
    let api = bandsox_vmm::firecracker::api::ApiClient::new(
        env.path("jail/firecracker/order/root/api.sock"),
        Duration::from_secs(5),
    );
    let err = api
        .put("/snapshot/load", &json!({"snapshot_path": "x", "mem_backend": {"backend_type": "File", "backend_path": "y"}}), "load")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not allowed after configuring"),
        "{err}"
    );
    // And a body that breaks the spec is answered 400 by the fake.
    let err = api
        .put("/machine-config", &json!({"vcpu_count": "1"}), "bad")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("contract violation"), "{err}");
    h.kill().await.unwrap();
}

/// Against the real binary: `BANDSOX_FIRECRACKER_BIN=/path/to/firecracker` (the jailer is
/// found next to it or through `BANDSOX_JAILER_BIN`; `BANDSOX_FC_JAILER=0` runs without it).
/// The guest kernel and initramfs come from `BANDSOX_FC_TEST_KERNEL` and
/// `BANDSOX_FC_TEST_INITRD`, else from an initialised storage root (`BANDSOX_STORAGE`, default
/// `/var/lib/bandsox`: `kernels/vmlinux`, `kernels/initramfs.cpio`). Only the VMM's API is
/// exercised: the guest need not boot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_firecracker_api() {
    let Some(bin) = std::env::var_os("BANDSOX_FIRECRACKER_BIN") else {
        eprintln!("skipped: BANDSOX_FIRECRACKER_BIN is not set (see docs/firecracker.md)");
        return;
    };
    let storage = PathBuf::from(
        std::env::var_os("BANDSOX_STORAGE").unwrap_or_else(|| "/var/lib/bandsox".into()),
    );
    let kernel = std::env::var_os("BANDSOX_FC_TEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| storage.join("kernels/vmlinux"));
    let initrd = std::env::var_os("BANDSOX_FC_TEST_INITRD")
        .map(PathBuf::from)
        .unwrap_or_else(|| storage.join("kernels/initramfs.cpio"));
    if !kernel.is_file() || !initrd.is_file() {
        eprintln!(
            "skipped: no guest kernel: set BANDSOX_FC_TEST_KERNEL and BANDSOX_FC_TEST_INITRD, or run `bandsox init` ({} / {} missing)",
            kernel.display(),
            initrd.display()
        );
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("fcreal")
        .tempdir_in("/tmp")
        .unwrap();
    let mut c = FirecrackerConfig::from_env(dir.path().join("jail")).unwrap();
    c.binary = PathBuf::from(bin);
    let driver = FirecrackerDriver::new(c);
    let mk = |id: &str| {
        let run_dir = dir.path().join(id);
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
            mem_mib: 256,
            kernel: PathBuf::from(&kernel),
            initramfs: PathBuf::from(&initrd),
            kernel_args: vec![],
            disks: vec![Disk {
                path: disk,
                read_only: false,
            }],
            network: None,
        }
    };
    let spec = mk("real-one");
    let h = driver.spawn(&spec).await.unwrap();
    h.pause().await.unwrap();
    h.resume().await.unwrap();
    h.pause().await.unwrap();
    let state = dir.path().join("state");
    h.save_state(&state).await.unwrap();
    let h2 = driver.restore(&mk("real-two"), &state).await.unwrap();
    h2.pause().await.unwrap();
    h2.resume().await.unwrap();
    let pids = [h.pid(), h2.pid()];
    h.kill().await.unwrap();
    h2.kill().await.unwrap();
    for pid in pids {
        assert!(!bandsox_vmm::process_alive(pid));
    }
    let exec = driver.config().binary.file_name().unwrap().to_owned();
    assert!(!dir
        .path()
        .join("jail")
        .join(&exec)
        .join("real-one")
        .exists());
    assert!(!dir
        .path()
        .join("jail")
        .join(&exec)
        .join("real-two")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsock_connect_without_ok_fails_in_bounded_time() {
    // The guest's vsock driver is not active: Firecracker neither answers nor closes.
    let env = Env::new("", "CONNECT");
    let mut c = FirecrackerConfig::new(env.fc.clone(), Some(env.jailer.clone()), env.path("jail"));
    c.cgroup_base = env.path("cgroup");
    c.vsock_connect_timeout = Duration::from_millis(300);
    let driver = FirecrackerDriver::new(c);
    let h = driver
        .spawn(&env.spec("silent", &env.path("data.ext4")))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let err = h.connect_agent().await.unwrap_err();
    assert!(matches!(err, VmmError::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    h.kill().await.unwrap();

    // No listener in the guest: the stream closes without `OK`.
    let env = Env::new("CONNECT", "");
    let driver = env.driver(true);
    let h = driver
        .spawn(&env.spec("nolisten", &env.path("data.ext4")))
        .await
        .unwrap();
    let err = h.connect_agent().await.unwrap_err();
    assert!(err.to_string().contains("closed without OK"), "{err}");
    h.kill().await.unwrap();
}
