//! Everyday use without booting a VM: references (name, id prefix, ambiguous, several at
//! once) to VMs and snapshots, list filters, aliases and the error lines. The VMs and
//! snapshots are rows written straight into the server's database while it is stopped; they
//! are stopped VMs, so nothing needs a guest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use bandsox_core::store::{SnapshotRecord, Store, TimeoutAction, VmRecord};
use bandsox_core::VmStatus;
use common::{answer, bandsox, free_port, start_server, text};

const WEB: &str = "d842e856-0000-4000-8000-000000000001";
const DB: &str = "d842f000-0000-4000-8000-000000000002";
const TWIN1: &str = "abcd1234-0000-4000-8000-000000000003";
const TWIN2: &str = "abce1234-0000-4000-8000-000000000004";
const BASE: &str = "5a5a0000-0000-4000-8000-000000000010";
const OTHER: &str = "5a5b0000-0000-4000-8000-000000000011";

fn vm(id: &str, name: &str, image: &str, status: VmStatus) -> VmRecord {
    VmRecord {
        id: id.into(),
        name: name.into(),
        image: image.into(),
        image_digest: "sha256:00".into(),
        status,
        vcpu: 1,
        mem_mib: 128,
        disk_size_mib: 64,
        created_at: 1.0,
        updated_at: 1.0,
        pid: None,
        error: None,
        metadata: serde_json::json!({}),
        env_vars: Default::default(),
        restored_from: None,
        expires_at: None,
        timeout_action: TimeoutAction::Stop,
        vmm: "qemu".into(),
        stop_reason: None,
        stopped_at: None,
    }
}

fn snapshot(id: &str, name: &str) -> SnapshotRecord {
    SnapshotRecord {
        id: id.into(),
        name: name.into(),
        source_vm_id: WEB.into(),
        image: "bandsox/busybox".into(),
        image_digest: "sha256:00".into(),
        vcpu: 1,
        mem_mib: 128,
        disk_size_mib: 64,
        size_bytes: 0,
        created_at: 1.0,
        metadata: serde_json::json!({}),
        env_vars: Default::default(),
    }
}

fn seed(storage: &Path) {
    let store = Store::open(&storage.join("bandsox.db")).unwrap();
    store
        .insert_vm(&vm(WEB, "web", "bandsox/busybox", VmStatus::Stopped))
        .unwrap();
    store
        .insert_vm(&vm(DB, "db", "bandsox/alpine", VmStatus::Stopped))
        .unwrap();
    store
        .insert_vm(&vm(TWIN1, "twin", "bandsox/busybox", VmStatus::Failed))
        .unwrap();
    store
        .insert_vm(&vm(TWIN2, "twin", "bandsox/busybox", VmStatus::Stopped))
        .unwrap();
    store.insert_snapshot(&snapshot(BASE, "base")).unwrap();
    store.insert_snapshot(&snapshot(OTHER, "other")).unwrap();
}

fn ids(out: &std::process::Output) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", text(&out.stdout)));
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn references_filters_and_aliases() {
    let root = common::TestRoot::new("bsxeveryday");
    seed(root.path());
    let port = free_port();
    let _server = start_server(root.path(), port);
    let url = format!("http://127.0.0.1:{port}");

    // By name, by prefix, by full id.
    for r in ["web", "d842e", WEB] {
        let out = bandsox(&url, &["vm", "info", r, "--json"]);
        assert!(out.status.success(), "{r}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["id"], WEB, "{r}");
    }
    // The API resolves every `{id}` route, not only GET.
    let (status, body) = answer(
        ureq::put(&format!("{url}/api/vms/db/metadata"))
            .send_json(serde_json::json!({"metadata": {"k": 1}})),
    );
    assert_eq!((status, body["id"].as_str()), (200, Some(DB)), "{body}");

    // Ambiguous: a shared name, a shared prefix.
    for r in ["twin", "d842"] {
        let out = bandsox(&url, &["vm", "info", r]);
        assert_eq!(out.status.code(), Some(4), "{r}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("ambiguous"), "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[1].starts_with("hint: "), "{err}");
    }
    let err = text(&bandsox(&url, &["vm", "info", "twin"]).stderr);
    assert!(err.contains(TWIN1) && err.contains(TWIN2), "{err}");
    let (status, body) = answer(ureq::get(&format!("{url}/api/vms/d842")).call());
    assert_eq!(status, 409);
    assert_eq!(body["code"], "ambiguous_reference");
    // Too short a prefix, an unknown name: not found, naming it.
    for r in ["d84", "nope"] {
        let out = bandsox(&url, &["vm", "info", r]);
        assert_eq!(out.status.code(), Some(3), "{r}");
        assert!(
            text(&out.stderr).contains(&format!("`{r}`")),
            "{}",
            text(&out.stderr)
        );
    }

    // Filters, and `ls` as `list`.
    let out = bandsox(&url, &["vm", "ls", "--status", "stopped", "--json"]);
    let mut got = ids(&out);
    got.sort();
    assert_eq!(got, [TWIN2, WEB, DB].map(String::from));
    let out = bandsox(&url, &["vm", "list", "--image", "bandsox/alpine", "--json"]);
    assert_eq!(ids(&out), [DB]);
    let out = bandsox(&url, &["vm", "list", "--name", "tw", "--json"]);
    assert_eq!(ids(&out).len(), 2);

    // Snapshots by name and prefix; `snapshot ls`.
    let out = bandsox(&url, &["snapshot", "info", "base", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], BASE);
    let out = bandsox(&url, &["snapshot", "info", "5a5"]);
    assert_eq!(out.status.code(), Some(3));
    let out = bandsox(&url, &["snapshot", "info", "5a5a"]);
    assert!(out.status.success());
    let out = bandsox(&url, &["snapshot", "info", "5a5"]);
    assert_eq!(out.status.code(), Some(3), "3 characters are no prefix");
    let out = bandsox(&url, &["snapshot", "ls", "--json"]);
    assert_eq!(ids(&out).len(), 2);
    // Tables show times for people; --json keeps Unix seconds.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["created_at"], 1.0);
    let table = text(&bandsox(&url, &["snapshot", "ls"]).stdout);
    assert!(
        table.lines().next().unwrap().ends_with("CREATED"),
        "{table}"
    );
    assert!(
        table.lines().skip(1).all(|l| l.ends_with(" days ago")),
        "{table}"
    );
    let table = text(&bandsox(&url, &["vm", "ls"]).stdout);
    assert!(table.contains(" days ago "), "{table}");
    let (status, _) = answer(ureq::delete(&format!("{url}/api/snapshots/base")).call());
    assert_eq!(status, 200);
    let out = bandsox(&url, &["snapshot", "rm", "other", "base"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "deleted\n");
    assert!(
        text(&out.stderr).contains("`base`"),
        "{}",
        text(&out.stderr)
    );

    // Several VMs at once, by name and prefix; one unknown one does not stop the others.
    let out = bandsox(&url, &["vm", "rm", "web", "nope", "abce"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "deleted\ndeleted\n");
    let out = bandsox(&url, &["vm", "ls", "--json"]);
    let mut left = ids(&out);
    left.sort();
    assert_eq!(left, [TWIN1, DB].map(String::from), "sorted");
    // Now `twin` names one VM.
    let out = bandsox(&url, &["vm", "delete", "twin", "db"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(ids(&bandsox(&url, &["vm", "ls", "--json"])).is_empty());
}

#[test]
fn references_need_credentials() {
    let root = common::TestRoot::new("bsxeverydayauth");
    seed(root.path());
    let (_, key) = common::auth_init(root.path());
    let port = free_port();
    let _server = start_server(root.path(), port);
    let url = format!("http://127.0.0.1:{port}");

    // Without credentials an ambiguous name is refused like any other path: nothing is
    // looked up, nothing about the names is told.
    let (status, body) = answer(ureq::get(&format!("{url}/api/vms/twin")).call());
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let with_key = |path: &str| {
        answer(
            ureq::get(&format!("{url}{path}"))
                .set("Authorization", &format!("Bearer {key}"))
                .call(),
        )
    };
    let (status, body) = with_key("/api/vms/twin");
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("ambiguous_reference"))
    );
    assert_eq!(with_key("/api/vms/web").1["id"], WEB);
    let metrics = || {
        ureq::get(&format!("{url}/metrics"))
            .set("Authorization", &format!("Bearer {key}"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    };
    let checks = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("bandsox_credential_checks_total "))
            .unwrap_or_else(|| panic!("{m}"))
            .parse()
            .unwrap()
    };
    // The key is looked up once per request, also when the resolver needed it first (one
    // for the request, one for the second scrape itself).
    let before = checks(&metrics());
    assert_eq!(with_key("/api/vms/web").0, 200);
    assert_eq!(checks(&metrics()) - before, 2);
    let before = checks(&metrics());
    assert_eq!(with_key("/api/vms").0, 200);
    assert_eq!(checks(&metrics()) - before, 2);
    // A refused request is still counted under its route.
    let metrics = metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bandsox_http_requests_total")
                && l.contains(r#"route="/api/vms/{id}""#)
                && l.contains(r#"status="401""#)),
        "{metrics}"
    );
}

/// `bandsox` with `BANDSOX_API_KEY` set when a key is given (and a HOME without credentials).
fn cli(url: &str, home: &Path, key: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(args)
        .env("BANDSOX_URL", url)
        .env("HOME", home)
        .env_remove("BANDSOX_API_KEY")
        .stdin(std::process::Stdio::null());
    if let Some(k) = key {
        cmd.env("BANDSOX_API_KEY", k);
    }
    cmd.output().unwrap()
}

const GHOST: &str = "6a057000-0000-4000-8000-000000000021";
const IDLE: &str = "1d1e0000-0000-4000-8000-000000000022";
const LATE: &str = "1a7e0000-0000-4000-8000-000000000023";

/// `extend` refusals, `timeout`, and the stop reason a server restart leaves, with auth off
/// and on.
fn timeouts_and_stop_reasons(auth: bool) {
    let root = common::TestRoot::new("bsxttl");
    let store = Store::open(&root.path().join("bandsox.db")).unwrap();
    // A VM the last server left running, whose VMM is gone: this server cannot take it over.
    let mut ghost = vm(GHOST, "ghost", "bandsox/busybox", VmStatus::Running);
    ghost.stop_reason = Some(bandsox_core::StopReason::User);
    store.insert_vm(&ghost).unwrap();
    store
        .insert_vm(&vm(IDLE, "idle", "bandsox/busybox", VmStatus::Stopped))
        .unwrap();
    let mut late = vm(LATE, "late", "bandsox/busybox", VmStatus::Stopped);
    late.expires_at = Some(bandsox_core::store::now() + 100.0);
    store.insert_vm(&late).unwrap();
    drop(store);
    let key = auth.then(|| common::auth_init(root.path()).1);
    let key = key.as_deref();
    let home = root.path().join("home");
    let port = free_port();
    let started = bandsox_core::store::now();
    let _server = start_server(root.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str]| cli(&url, &home, key, args);

    let out = run(&["vm", "info", "ghost", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "stopped", "{v}");
    assert_eq!(v["stop_reason"], "host_restart", "{v}");
    let at = v["stopped_at"].as_f64().unwrap();
    assert!(
        at >= started - 1.0 && at <= bandsox_core::store::now(),
        "{v}"
    );
    let out = run(&["vm", "info", "ghost"]);
    let info = text(&out.stdout);
    assert!(
        info.lines()
            .any(|l| l.starts_with("stopped     host_restart, ")
                && (l.ends_with(" ago") || l.ends_with("just now"))),
        "{info}"
    );
    // A VM that never stopped under this version has no reason.
    let out = run(&["vm", "info", "idle", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["stop_reason"], &v["stopped_at"]),
        (&serde_json::Value::Null, &serde_json::Value::Null)
    );

    // `extend` on a VM without a timeout is refused (it used to give it a short life).
    let out = run(&["extend", "idle", "60"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: VM `{IDLE}` has no timeout to extend\n\
             hint: set one with `bandsox timeout VM SECONDS` (POST /api/vms/{{id}}/timeout)\n"
        )
    );
    let mut req = ureq::post(&format!("{url}/api/vms/idle/extend"));
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let (status, body) = answer(req.send_json(serde_json::json!({"seconds": 60})));
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert_eq!(body["expires_at"], serde_json::Value::Null);
    // A stopped VM's timeout cannot fire, so it is not extended either.
    let out = run(&["extend", "late", "60"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with(&format!("error: VM `{LATE}` is stopped; ")),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["extend", "idle", "0"]);
    assert!(!out.status.success());
    // `timeout` sets one.
    let out = run(&["timeout", "idle", "600", "--action", "pause"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "expires in 10 minutes (pause)\n");
    let out = run(&["vm", "info", "idle", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["timeout_action"], "pause");
    let left = v["expires_at"].as_f64().unwrap() - bandsox_core::store::now();
    assert!((590.0..=600.0).contains(&left), "{v}");
    assert_eq!(text(&run(&["timeout", "idle", "0"]).stdout), "no timeout\n");

    // A VM that is not running: the next command to run is in the hint.
    for args in [
        &["vm", "pause", "idle"][..],
        &["exec", "idle", "--", "true"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: VM `{IDLE}` is stopped, not running\nhint: start it with `bandsox start VM`\n"
            ),
            "{args:?}"
        );
    }
    // A server URL without a scheme is a usage error naming the fix.
    let out = cli("localhost:18300", &home, key, &["vm", "ls"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "error: the server URL `localhost:18300` is not an http:// or https:// URL\n\
         hint: pass --url http://localhost:18300 (or set BANDSOX_URL)\n"
    );
    // An unreachable server: one line with the cause, not the chain of wrappers.
    let out = cli(
        &format!("http://127.0.0.1:{}", free_port()),
        &home,
        key,
        &["vm", "ls"],
    );
    assert_eq!(out.status.code(), Some(5));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("error: cannot reach the bandsox server at http://127.0.0.1:")
            && lines[0].ends_with(": Connection refused (os error 111)"),
        "{err}"
    );

    if auth {
        // A missing key and a wrong key are told apart; both hints name BANDSOX_API_KEY.
        let out = cli(&url, &home, None, &["vm", "ls"]);
        let err = text(&out.stderr);
        assert!(err.starts_with("error: this server requires an API key and none was sent\nhint: set BANDSOX_API_KEY"), "{err}");
        let out = cli(&url, &home, Some("bsx_kwrong"), &["vm", "ls"]);
        assert_eq!(out.status.code(), Some(6));
        let err = text(&out.stderr);
        assert!(
            err.starts_with("error: the API key or session is not valid"),
            "{err}"
        );
        assert!(err.contains("\nhint: check BANDSOX_API_KEY"), "{err}");
        // Without the key every one of these is refused.
        for args in [
            &["extend", "idle", "60"][..],
            &["timeout", "idle", "60"],
            &["vm", "info", "ghost"],
        ] {
            let out = cli(&url, &home, None, args);
            assert_eq!(
                out.status.code(),
                Some(6),
                "{args:?}: {}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn timeouts_and_stop_reasons_auth_off() {
    timeouts_and_stop_reasons(false);
}

#[test]
fn timeouts_and_stop_reasons_auth_on() {
    timeouts_and_stop_reasons(true);
}

/// Polls `GET /api/vms/{id}` until `done` holds (at most `secs` seconds); returns the VM.
fn wait_vm(
    url: &str,
    id: &str,
    secs: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let (_, v) = answer(ureq::get(&format!("{url}/api/vms/{id}")).call());
        if done(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "gave up waiting: {v}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Every kind of stop of one real VM records its reason and time: a timeout (stop and
/// pause), a guest power-off, `vm stop`, a VMM killed under it; `extend` on a running VM
/// without a timeout is refused and leaves it running.
#[test]
fn stop_reasons_of_a_real_vm() {
    let root = common::TestRoot::new("bsxstops");
    let out = common::init(root.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let port = free_port();
    let _server = start_server(root.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let out = bandsox(&url, &["create", "bandsox/busybox", "--name", "life"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let ok = |args: &[&str]| {
        let out = bandsox(&url, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    let reason = |v: &serde_json::Value| v["stop_reason"].as_str().map(str::to_owned);

    // The issue's case: `extend` on a VM without a timeout must not give it a short life.
    let out = bandsox(&url, &["extend", "life", "2"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    std::thread::sleep(std::time::Duration::from_secs(4));
    let v = wait_vm(&url, &id, 1, |_| true);
    assert_eq!(
        (v["status"].as_str(), reason(&v)),
        (Some("running"), None),
        "{v}"
    );

    // Timeout with action pause, then stop.
    ok(&["timeout", "life", "1", "--action", "pause"]);
    let v = wait_vm(&url, &id, 10, |v| v["status"] == "paused");
    assert_eq!(reason(&v).as_deref(), Some("timeout"), "{v}");
    assert!(v["stopped_at"].as_f64().is_some(), "{v}");
    ok(&["vm", "resume", "life"]);
    let v = wait_vm(&url, &id, 1, |_| true);
    assert_eq!(
        (reason(&v), &v["stopped_at"]),
        (None, &serde_json::Value::Null),
        "{v}"
    );
    ok(&["timeout", "life", "1", "--action", "stop"]);
    let v = wait_vm(&url, &id, 30, |v| v["status"] == "stopped");
    assert_eq!(reason(&v).as_deref(), Some("timeout"), "{v}");

    // The guest powers itself off.
    ok(&["start", "life"]);
    let _ = bandsox(&url, &["exec", "life", "--", "poweroff", "-f"]);
    let v = wait_vm(&url, &id, 30, |v| v["status"] != "running");
    assert_eq!(
        (v["status"].as_str(), reason(&v).as_deref(), &v["error"]),
        (
            Some("stopped"),
            Some("guest_poweroff"),
            &serde_json::Value::Null
        ),
        "{v}"
    );

    // `vm stop`.
    ok(&["start", "life"]);
    ok(&["vm", "stop", "life"]);
    let v = wait_vm(&url, &id, 1, |_| true);
    assert_eq!(
        (v["status"].as_str(), reason(&v).as_deref()),
        (Some("stopped"), Some("user")),
        "{v}"
    );
    let out = bandsox(&url, &["vm", "info", "life"]);
    assert!(
        text(&out.stdout).contains("\nstopped     user, "),
        "{}",
        text(&out.stdout)
    );

    // The VMM dies under the VM.
    ok(&["start", "life"]);
    let v = wait_vm(&url, &id, 1, |_| true);
    let pid = v["pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let v = wait_vm(&url, &id, 10, |v| v["status"] == "failed");
    assert_eq!(reason(&v).as_deref(), Some("vmm_exited"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("signal 9"), "{v}");

    ok(&["vm", "rm", "life"]);
}
