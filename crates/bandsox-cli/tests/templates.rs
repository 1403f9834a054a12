//! Background template builds as `bandsox serve` runs them by default: a cold create builds the
//! template of its image and shape behind it and the next create restores it; switched off
//! (`BANDSOX_AUTO_TEMPLATE=0`) nothing is built; a server stopped in the middle of a build
//! leaves no build VMM behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{answer, free_port, init, text, TestRoot, BIN};
use serde_json::{json, Value};

fn create(url: &str, name: &str) -> Value {
    let (status, vm) = answer(
        ureq::post(&format!("{url}/api/vms"))
            .send_json(json!({"image": "bandsox/busybox", "name": name})),
    );
    assert_eq!(status, 200, "{vm}");
    let (status, vm) =
        answer(ureq::get(&format!("{url}/api/vms/{}", vm["id"].as_str().unwrap())).call());
    assert_eq!(status, 200, "{vm}");
    vm
}

fn exec(url: &str, id: &str, cmd: &str) -> String {
    let (status, r) =
        answer(ureq::post(&format!("{url}/api/vms/{id}/exec")).send_json(json!({"command": cmd})));
    assert_eq!((status, &r["exit_code"]), (200, &json!(0)), "{r}");
    r["stdout"].as_str().unwrap().trim().to_owned()
}

fn templates(url: &str) -> Vec<Value> {
    let (status, t) = answer(ureq::get(&format!("{url}/api/templates")).call());
    assert_eq!(status, 200, "{t}");
    t.as_array().unwrap().clone()
}

/// Entries of `<root>/templates` (complete templates and `.build-*` directories).
fn template_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("templates"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Pids whose command line names `path`.
fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            cmd.windows(needle.len())
                .any(|w| w == needle)
                .then_some(pid)
        })
        .collect()
}

/// A server started with the default background-build setting (scripts/test turns builds off for
/// every other suite) plus extra environment variables.
fn serve_with_env(root: &Path, port: u16, env: &[(&str, &str)]) -> common::Server {
    let child = Command::new(BIN)
        .args(["serve", "--proxy-port", "0", "--port", &port.to_string()])
        .arg("--storage")
        .arg(root)
        .env_remove("BANDSOX_AUTO_TEMPLATE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = common::Server { child };
    let url = format!("http://127.0.0.1:{port}/api/version");
    let deadline = Instant::now() + Duration::from_secs(20);
    while matches!(ureq::get(&url).call(), Err(ureq::Error::Transport(_))) {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[test]
fn serve_builds_the_template_after_a_cold_create_and_the_next_create_uses_it() {
    let root = TestRoot::new("bsxtpl");
    assert!(init(root.path()).status.success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = serve_with_env(root.path(), port, &[]);

    let t0 = Instant::now();
    let first = create(&url, "first");
    exec(&url, first["id"].as_str().unwrap(), "true");
    let cold_s = t0.elapsed().as_secs_f64();
    assert_eq!(first["restored_from"], Value::Null, "{first}");

    let deadline = Instant::now() + Duration::from_secs(180);
    let t = loop {
        if let Some(t) = templates(&url).into_iter().next() {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no template was built: {:?}",
            template_dirs(root.path())
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(t["image"], "bandsox/busybox");
    assert_eq!(t["enable_networking"], true);

    let t0 = Instant::now();
    let second = create(&url, "second");
    let id = second["id"].as_str().unwrap();
    assert_eq!(
        second["restored_from"],
        json!(format!("template:{}", t["id"].as_str().unwrap())),
        "{second}"
    );
    assert_eq!(exec(&url, id, "hostname"), "second");
    eprintln!(
        "first create -> first exec {cold_s:.3} s; second (template) {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    for vm in [&first, &second] {
        let (status, body) =
            answer(ureq::delete(&format!("{url}/api/vms/{}", vm["id"].as_str().unwrap())).call());
        assert_eq!(status, 200, "{body}");
    }
    // One template, nothing half-built left.
    assert_eq!(template_dirs(root.path()).len(), 1);
}

#[test]
fn switched_off_nothing_is_built_and_a_stopped_server_leaves_no_build_vmm() {
    // A bad value is refused before anything starts.
    let root = TestRoot::new("bsxtploff");
    assert!(init(root.path()).status.success());
    let out = Command::new(BIN)
        .args(["serve", "--port", &free_port().to_string(), "--storage"])
        .arg(root.path())
        .env("BANDSOX_AUTO_TEMPLATE", "maybe")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("BANDSOX_AUTO_TEMPLATE") && err.contains("hint:"),
        "{err}"
    );

    // Off: a cold create builds nothing (the build would start 2 s after the create).
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = serve_with_env(root.path(), port, &[("BANDSOX_AUTO_TEMPLATE", "0")]);
    let vm = create(&url, "off");
    exec(&url, vm["id"].as_str().unwrap(), "true");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(template_dirs(root.path()), Vec::<String>::new());
    drop(server);

    // On (the default), SIGTERM while the build boots: its VMM goes with the server (the
    // user VM keeps running, as every VM does).
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = serve_with_env(root.path(), port, &[]);
    exec(&url, vm["id"].as_str().unwrap(), "true");
    let vm2 = create(&url, "on");
    exec(&url, vm2["id"].as_str().unwrap(), "true");
    let build = root.path().join("templates/.build-");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !template_dirs(root.path())
        .iter()
        .any(|d| d.starts_with(".build-"))
    {
        assert!(Instant::now() < deadline, "no build started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The build VMM has started once its pid file is there.
    while processes_mentioning(&build).is_empty() {
        assert!(Instant::now() < deadline, "no build VMM started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&build);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "build VMM left after the server stopped: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The next start removes the half-made build directory; both VMs are still there.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = serve_with_env(root.path(), port, &[("BANDSOX_AUTO_TEMPLATE", "0")]);
    assert!(!template_dirs(root.path())
        .iter()
        .any(|d| d.starts_with(".build-")));
    for v in [&vm, &vm2] {
        exec(&url, v["id"].as_str().unwrap(), "true");
    }
}

/// Network namespaces named after a VM of `root`'s `vms/` directory entries in `ids`.
fn namespaces(ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| format!("bsx-{id}"))
        .filter(|ns| Path::new("/run/netns").join(ns).exists())
        .collect()
}

fn vm_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_full_warm_pool_leaves_nothing_after_kill_9_and_drains_on_sigterm() {
    let root = TestRoot::new("bsxpool");
    assert!(init(root.path()).status.success());
    // A bad pool is refused at start with a hint.
    let out = Command::new(BIN)
        .args(["serve", "--port", &free_port().to_string(), "--storage"])
        .arg(root.path())
        .args(["--warm-pool", "bandsox/busybox"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("hint:"), "{}", text(&out.stderr));

    let vms_dir = root.path().join("vms");
    for round in ["kill -9", "SIGTERM"] {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut server =
            common::start_server_with(root.path(), port, &["--warm-pool", "bandsox/busybox=1"]);
        // Full: one pool VM paused (template built first), not listed as a VM.
        let deadline = Instant::now() + Duration::from_secs(240);
        let ids = loop {
            let ids = vm_dirs(root.path());
            if ids.len() == 1 && processes_mentioning(&vms_dir).len() == 1 {
                // Give the restore time to finish and pause.
                std::thread::sleep(Duration::from_secs(3));
                break ids;
            }
            assert!(Instant::now() < deadline, "{round}: the pool never filled");
            std::thread::sleep(Duration::from_millis(200));
        };
        let (_, listed) = answer(ureq::get(&format!("{url}/api/vms")).call());
        assert_eq!(listed, json!([]), "{round}: pool VMs are no user VMs");
        assert_eq!(
            namespaces(&ids).len(),
            1,
            "{round}: the pool VM has a namespace"
        );
        if round == "kill -9" {
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            // The VMM outlives a killed server; the next start removes it.
            assert_eq!(processes_mentioning(&vms_dir).len(), 1);
            let port = free_port();
            let _after = serve_with_env(root.path(), port, &[]);
            assert_eq!(processes_mentioning(&vms_dir), Vec::<u32>::new());
            assert_eq!(namespaces(&ids), Vec::<String>::new());
            assert_eq!(vm_dirs(root.path()), Vec::<String>::new());
        } else {
            let pid = server.child.id().to_string();
            assert!(Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success());
            assert!(server.child.wait().unwrap().success());
            assert_eq!(processes_mentioning(&vms_dir), Vec::<u32>::new());
            assert_eq!(namespaces(&ids), Vec::<String>::new());
            assert_eq!(vm_dirs(root.path()), Vec::<String>::new());
        }
    }
}
