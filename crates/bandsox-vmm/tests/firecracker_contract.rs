//! Contract tests of the Firecracker driver against a fake Firecracker and jailer that parse
//! their command lines with the real v1.16.1 grammar, validate every API request against the
//! official spec (`tests/firecracker-api.yaml`, v1.17.0-dev; what v1.16.1 refuses beyond it
//! is refused too), and jail over a fake cgroup host (v2, v1 or hybrid). With
//! `BANDSOX_FIRECRACKER_BIN` (and `BANDSOX_JAILER_BIN`) set, the `real_*` tests drive the real
//! binaries (see `docs/firecracker.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bandsox_vmm::firecracker::cgroup::CgroupLimits;
use bandsox_vmm::firecracker::{FirecrackerConfig, FirecrackerDriver};
use bandsox_vmm::{Disk, NetSpec, VmHandle, VmSpec, VmmDriver, VmmError};
use common::fake_fc::{run_binary, FakeOptions, Fakes};
use common::fake_jailer::{cgroup_writes, HostKind};
use common::validator::ApiSpec;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    dir: tempfile::TempDir,
    fakes: Fakes,
}

impl Env {
    fn new(fail: &str, hang: &str) -> Self {
        Self::with(FakeOptions {
            fail,
            hang,
            ..FakeOptions::default()
        })
    }

    fn on(host: HostKind) -> Self {
        Self::with(FakeOptions {
            host,
            ..FakeOptions::default()
        })
    }

    fn with(opts: FakeOptions) -> Self {
        // Short paths: socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("fct")
            .tempdir_in("/tmp")
            .unwrap();
        let fakes = common::fake_fc::install(dir.path(), &opts);
        for f in ["vmlinux", "initramfs", "base.ext4", "data.ext4"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        Self { dir, fakes }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn config(&self, jailed: bool) -> FirecrackerConfig {
        let mut c = FirecrackerConfig::new(
            self.fakes.firecracker.clone(),
            jailed.then(|| self.fakes.jailer.clone()),
            self.path("jail"),
        );
        c.cgroup_mounts = self.fakes.mounts.clone();
        c.api_timeout = Duration::from_secs(5);
        c.start_timeout = Duration::from_secs(20);
        c
    }

    fn driver(&self, jailed: bool) -> FirecrackerDriver {
        FirecrackerDriver::new(self.config(jailed))
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
        std::fs::read_to_string(&self.fakes.requests)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn jailer_argv(&self) -> Vec<String> {
        std::fs::read_to_string(&self.fakes.jailer_argv)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The fake host's hierarchy directories (`<host>/cg/...`).
    fn cg(&self, p: &str) -> PathBuf {
        self.path("host/cg").join(p)
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

impl Drop for Env {
    fn drop(&mut self) {
        // Nothing of a failed test keeps running.
        common::fake_fc::kill_fakes_under(self.dir.path());
    }
}

/// A named network namespace for the test's lifetime (`ip netns add`, root only), so the
/// jailer can open `/run/netns/<name>` like the real one does.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Option<Self> {
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(name.into()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// The command line of process `pid`, word by word.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
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
    // A networked VM: the jailer enters its namespace (which must exist, as for the real
    // jailer: root only), Firecracker gets its TAP.
    let tag = std::process::id();
    let ns = (
        Netns::new(&format!("bsx-fct-{tag}-1")),
        Netns::new(&format!("bsx-fct-{tag}-2")),
    );
    if ns.0.is_none() {
        eprintln!("not root (ip netns add failed): the lifecycle runs without a NIC");
    }
    let net = ns.0.as_ref().map(|n| NetSpec {
        netns: n.0.clone(),
        tap: "tap0".into(),
        guest_mac: "06:00:ac:1f:00:02".into(),
    });
    let mut spec = env.spec("vm-one", &data);
    spec.network = net.clone();
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

    let argv = env.jailer_argv();
    let base = env.path("jail").display().to_string();
    let fc = env.fakes.firecracker.display().to_string();
    let netns = net
        .as_ref()
        .map(|n| format!("/run/netns/{}", n.netns))
        .unwrap_or_default();
    for pair in [
        ["--id", "vm-one"],
        ["--exec-file", fc.as_str()],
        ["--chroot-base-dir", base.as_str()],
        ["--cgroup-version", "2"],
        ["--cgroup", "cpu.max=200000 100000"],
        ["--cgroup", "memory.max=536870912"],
        ["--uid", "65534"],
        ["--gid", "65534"],
    ]
    .into_iter()
    .chain(net.as_ref().map(|_| ["--netns", netns.as_str()]))
    {
        assert!(
            argv.windows(2).any(|w| w == pair),
            "jailer argv {argv:?} lacks {pair:?}"
        );
    }
    assert!(argv.contains(&"--new-pid-ns".to_string()));
    assert!(argv.ends_with(&["--".into(), "--api-sock".into(), "/api.sock".into()]));
    // The VMM runs as the jailer's copy with `--id <id>` as two words.
    let words = cmdline(h.pid());
    assert_eq!(words[..3], ["/firecracker", "--id", "vm-one"], "{words:?}");
    assert!(
        words.ends_with(&["--api-sock".into(), "/api.sock".into()]),
        "{words:?}"
    );
    // The limits landed in the VM's v2 cgroup, with the controllers enabled above it.
    let vm_cg = env.cg("firecracker/vm-one");
    assert!(vm_cg.is_dir());
    let writes = cgroup_writes(&env.fakes.cgroup_log);
    for (file, value) in [
        (env.cg("cgroup.subtree_control"), "+cpu"),
        (env.cg("firecracker/cgroup.subtree_control"), "+cpu"),
        (env.cg("firecracker/cgroup.subtree_control"), "+memory"),
        (vm_cg.join("cpu.max"), "200000 100000"),
        (vm_cg.join("memory.max"), "536870912"),
    ] {
        assert!(
            writes.contains(&(file.clone(), value.to_string())),
            "{file:?}={value} not written: {writes:?}"
        );
    }
    assert!(writes.iter().any(|(f, _)| *f == vm_cg.join("cgroup.procs")));

    let reqs = env.requests();
    let mut want = vec![
        "PUT /logger",
        "PUT /metrics",
        "PUT /machine-config",
        "PUT /boot-source",
        "PUT /drives/drive0",
        "PUT /drives/drive1",
        "PUT /vsock",
        "PUT /entropy",
    ];
    if net.is_some() {
        want.push("PUT /network-interfaces/eth0");
        assert_eq!(
            find(&reqs, "PUT /network-interfaces/eth0")["body"],
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:1f:00:02"})
        );
    }
    want.push("PUT /actions");
    assert_eq!(calls(&reqs), want);
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
    spec2.network = net.zip(ns.1.as_ref()).map(|(net, ns)| NetSpec {
        netns: ns.0.clone(),
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
    if spec2.network.is_some() {
        assert_eq!(
            body["network_overrides"],
            json!([{"iface_id": "eth0", "host_dev_name": "tap0"}])
        );
    }
    assert_eq!(body["resume_vm"], true);
    assert_ne!(h2.pid(), h.pid());
    echo_through_agent(h2.as_ref()).await;

    // Re-attach (as after a server restart: a new driver) checks the process is this VM's.
    let again = env.driver(true).attach(&spec2, h2.pid()).await.unwrap();
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
    assert!(!vm_cg.exists() && !env.cg("firecracker/vm-two").exists());
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
    assert!(!env.fakes.jailer_argv.exists());
    let api_sock = env.path("jail/firecracker/plain/root/api.sock");
    assert_eq!(
        cmdline(h.pid()),
        [
            env.fakes.firecracker.display().to_string(),
            "--id".into(),
            "plain".into(),
            "--api-sock".into(),
            api_sock.display().to_string(),
        ]
    );
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
    let mut c = env.config(true);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsock_connect_without_ok_fails_in_bounded_time() {
    // The guest's vsock driver is not active: Firecracker neither answers nor closes.
    let env = Env::new("", "CONNECT");
    let mut c = env.config(true);
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

#[test]
fn fakes_refuse_the_argument_forms_the_real_binaries_refuse() {
    let env = Env::on(HostKind::Hybrid);
    let fc = &env.fakes.firecracker;
    let sock = env.path("x.sock").display().to_string();
    // `--id=<id>` is one unknown word: exit 153, the logger line on stdout, Debug on stderr.
    let (code, out, err) = run_binary(fc, &["--id=x", "--api-sock", &sock]);
    assert_eq!(code, Some(153), "{out}{err}");
    assert!(
        out.contains(
            "Arguments parsing error: Found argument 'id=x' which wasn't expected, or isn't valid in this context."
        ),
        "{out}"
    );
    assert!(
        out.contains("Firecracker exiting with error. exit_code=153"),
        "{out}"
    );
    assert_eq!(
        err.trim(),
        r#"Error: ParseArguments(UnexpectedArgument("id=x"))"#
    );
    for (args, debug) in [
        (&["--bogus"][..], r#"UnexpectedArgument("bogus")"#),
        (&["x"][..], r#"UnexpectedArgument("x")"#),
        (&["--id"][..], r#"MissingValue("id")"#),
        (&["--id", "--api-sock", "/s"][..], r#"MissingValue("id")"#),
        (
            &["--id", "a", "--id", "b"][..],
            r#"DuplicateArgument("id")"#,
        ),
        (
            &["--api-sock=/s"][..],
            r#"UnexpectedArgument("api-sock=/s")"#,
        ),
    ] {
        let (code, _, err) = run_binary(fc, args);
        assert_eq!(code, Some(153), "{args:?}");
        assert_eq!(
            err.trim(),
            format!("Error: ParseArguments({debug})"),
            "{args:?}"
        );
    }
    // An id the validator refuses aborts (the real one panics with panic = "abort").
    let (code, out, _) = run_binary(fc, &["--id", "bad_id", "--api-sock", &sock]);
    assert_eq!(code, None, "{out}");
    assert!(
        out.contains("Invalid instance ID: Invalid char (_) at position 3"),
        "{out}"
    );
    let (code, out, _) = run_binary(fc, &["--version"]);
    assert_eq!((code, out.trim()), (Some(0), "Firecracker v1.16.1"));

    // The jailer: exit code 1, the message then the Debug form on stderr.
    let jailer = &env.fakes.jailer;
    let exec = fc.display().to_string();
    let base = env.path("jail");
    std::fs::create_dir_all(&base).unwrap();
    let base = base.display().to_string();
    let common = [
        "--exec-file",
        &exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--chroot-base-dir",
        &base,
    ];
    let jail = |extra: &[&str]| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend_from_slice(extra);
        run_binary(jailer, &a)
    };
    let (code, _, err) = jail(&["--id=x"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "Failed to parse arguments: Found argument 'id=x' which wasn't expected, or isn't valid in this context.\n\
         Error: ArgumentParsing(UnexpectedArgument(\"id=x\"))"
    );
    let (code, _, err) = jail(&["--id", "x", "--cgroup-version=2"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(r#"UnexpectedArgument("cgroup-version=2")"#),
        "{err}"
    );
    let (code, _, err) = run_binary(jailer, &["--id", "x"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("Argument 'exec-file' required, but not found."),
        "{err}"
    );

    // This host has v1 controllers and an empty v2 hierarchy: a v2 request fails as on the
    // real hybrid host, before anything is made.
    let (code, _, err) = jail(&[
        "--id",
        "x",
        "--cgroup-version",
        "2",
        "--cgroup",
        "cpu.max=100000 100000",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "Controller cpu is unavailable\nError: CgroupControllerUnavailable(\"cpu\")"
    );
    assert!(!env.path("jail/firecracker/x").exists());
    // v2 keys with v1: the parent's file does not exist.
    let (code, _, err) = jail(&[
        "--id",
        "x",
        "--cgroup-version",
        "1",
        "--cgroup",
        "cpu.max=100000",
    ]);
    assert_eq!(code, Some(1));
    let parent_file = env.cg("cpu,cpuacct/firecracker/cpu.max");
    assert!(
        err.starts_with(&format!(
            "Failed to read file {} into a string: No such file or directory (os error 2)",
            parent_file.display()
        )),
        "{err}"
    );
    // A value the kernel refuses.
    let (code, _, err) = jail(&[
        "--id",
        "y",
        "--cgroup-version",
        "1",
        "--cgroup",
        "cpu.cfs_quota_us=abc",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Invalid argument (os error 22)"), "{err}");
    for (args, want) in [
        (
            &["--cgroup", "cpu.cfs_quota_us"][..],
            "Invalid format for cgroups: cpu.cfs_quota_us",
        ),
        (
            &["--cgroup", "bogus.x=1"][..],
            "Controller bogus is unavailable",
        ),
        (
            &["--cgroup-version", "x"][..],
            "x is an invalid cgroup version specifier",
        ),
        (
            &["--cgroup-version", "3", "--cgroup", "cpu.shares=2"][..],
            "Hierarchy not found: No hierarchy found for this cgroup version.",
        ),
        (
            &["--netns", "/nonexistent/netns"][..],
            "Failed to open file /nonexistent/netns",
        ),
    ] {
        let mut a = vec!["--id", "z"];
        a.extend_from_slice(args);
        let (code, _, err) = jail(&a);
        assert_eq!(code, Some(1), "{args:?}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jailed_on_v1_and_hybrid_hosts_with_v1_limits() {
    for host in [HostKind::Hybrid, HostKind::V1] {
        let env = Env::on(host);
        let driver = env.driver(true);
        let spec = env.spec("vm1", &env.path("data.ext4"));
        let h = driver.spawn(&spec).await.unwrap();
        let argv = env.jailer_argv();
        let s = argv.join(" ");
        assert!(
            s.contains(
                "--cgroup-version 1 --cgroup cpu.cfs_period_us=100000 --cgroup cpu.cfs_quota_us=200000 \
                 --cgroup memory.limit_in_bytes=536870912"
            ),
            "{host:?}: {s}"
        );
        let (cpu, mem) = (
            env.cg("cpu,cpuacct/firecracker/vm1"),
            env.cg("memory/firecracker/vm1"),
        );
        let writes = cgroup_writes(&env.fakes.cgroup_log);
        for (file, value) in [
            (cpu.join("cpu.cfs_period_us"), "100000"),
            (cpu.join("cpu.cfs_quota_us"), "200000"),
            (mem.join("memory.limit_in_bytes"), "536870912"),
        ] {
            assert!(
                writes.contains(&(file.clone(), value.into())),
                "{file:?}: {writes:?}"
            );
        }
        assert!(writes.iter().any(|(f, _)| *f == cpu.join("tasks")));
        assert!(writes.iter().any(|(f, _)| *f == mem.join("tasks")));
        assert!(cpu.is_dir() && mem.is_dir());
        h.pause().await.unwrap();
        h.save_state(&env.path("state")).await.unwrap();
        let h2 = driver
            .restore(&env.spec("vm2", &env.path("data.ext4")), &env.path("state"))
            .await
            .unwrap();
        h.kill().await.unwrap();
        // Died on its own: reaped and cleaned up as well.
        bandsox_vmm::kill_process(h2.pid());
        assert!(h2.wait_exit(Duration::from_secs(5)).await.is_some());
        for id in ["vm1", "vm2"] {
            for d in ["cpu,cpuacct", "memory", "unified"] {
                let p = env.cg(&format!("{d}/firecracker/{id}"));
                assert!(!p.exists(), "{host:?}: {p:?} left behind");
            }
            assert!(!env.path(&format!("jail/firecracker/{id}")).exists());
        }
        env.assert_no_violations();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cgroup_version_for_the_host_fails_the_spawn_cleanly() {
    // The driver believes in a v2 host (its mount table), the jailer sees the hybrid one:
    // the jailer refuses `--cgroup-version 2` as the real one does on such a host.
    let env = Env::on(HostKind::Hybrid);
    let mut c = env.config(true);
    let wrong = env.path("v2host");
    c.cgroup_mounts = common::fake_jailer::make_host(&wrong, HostKind::V2);
    let driver = FirecrackerDriver::new(c);
    let err = driver
        .spawn(&env.spec("wrong", &env.path("data.ext4")))
        .await
        .err()
        .expect("the jailer must refuse v2 limits on a hybrid host");
    let msg = err.to_string();
    assert!(
        matches!(err, VmmError::Exited { .. }) && msg.contains("Controller cpu is unavailable"),
        "{msg}"
    );
    assert!(!env.path("jail/firecracker/wrong").exists());
    assert!(!env.cg("unified/firecracker/wrong").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cgroups_refuses_unless_the_operator_allows_it() {
    let env = Env::on(HostKind::None);
    let spec = env.spec("bare", &env.path("data.ext4"));
    let err = env
        .driver(true)
        .spawn(&spec)
        .await
        .err()
        .expect("must refuse");
    assert!(matches!(err, VmmError::CgroupLimits(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("`cpu` and `memory` unavailable")
            && msg.contains("BANDSOX_FC_CGROUP_LIMITS=optional"),
        "{msg}"
    );
    // Refused before anything was made or run.
    assert!(!env.path("jail/firecracker/bare").exists());
    assert!(!env.fakes.jailer_argv.exists());

    let mut c = env.config(true);
    c.cgroup_limits = CgroupLimits::Optional;
    let h = FirecrackerDriver::new(c).spawn(&spec).await.unwrap();
    let argv = env.jailer_argv();
    assert!(!argv.iter().any(|a| a.starts_with("--cgroup")), "{argv:?}");
    h.kill().await.unwrap();
    assert!(!env.path("jail/firecracker/bare").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinked_binary_is_jailed_under_its_canonical_name() {
    // Release tarballs name the binary `firecracker-v1.16.1-x86_64`; operators symlink it.
    // The jailer names the jail, pid file and cgroup after the canonical file.
    let env = Env::new("", "");
    let real = env.path("bin/firecracker-v1.16.1-x86_64");
    std::fs::hard_link(&env.fakes.firecracker, &real).unwrap();
    let link = env.path("bin/fc");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut c = env.config(true);
    c.binary = link;
    let driver = FirecrackerDriver::new(c);
    let spec = env.spec("linked", &env.path("data.ext4"));
    let h = driver.spawn(&spec).await.unwrap();
    let jail = env.path("jail/firecracker-v1.16.1-x86_64/linked");
    assert!(jail.join("root/api.sock").exists());
    assert!(env.cg("firecracker-v1.16.1-x86_64/linked").is_dir());
    assert_eq!(cmdline(h.pid())[0], "/firecracker-v1.16.1-x86_64");
    let again = env.driver(true);
    // A driver configured with the plain path does not claim it (other exec name).
    assert!(matches!(
        again.attach(&spec, h.pid()).await,
        Err(VmmError::NotOurProcess(_))
    ));
    assert_eq!(driver.attach(&spec, h.pid()).await.unwrap().pid(), h.pid());
    h.kill().await.unwrap();
    assert!(!jail.exists() && !env.cg("firecracker-v1.16.1-x86_64/linked").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_refuses_bodies_v1_16_refuses() {
    let env = Env::new("", "");
    let driver = env.driver(true);
    let spec = env.spec("bodies", &env.path("data.ext4"));
    let h = driver.spawn(&spec).await.unwrap();
    let api = bandsox_vmm::firecracker::api::ApiClient::new(
        env.path("jail/firecracker/bodies/root/api.sock"),
        Duration::from_secs(5),
    );
    // Metrics can be configured once per process.
    let err = api
        .put(
            "/metrics",
            &json!({"metrics_path": "fc.metrics"}),
            "metrics",
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Reinitialization of metrics not allowed"),
        "{err}"
    );
    // The spec copy (v1.17.0-dev) has fields v1.16.1 does not know.
    let err = api
        .put("/snapshot/load", &json!({"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}, "huge_pages": "None"}), "load")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown field `huge_pages`"),
        "{err}"
    );
    h.kill().await.unwrap();
}
