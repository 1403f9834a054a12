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
    // A refused request is still counted under its route.
    let metrics = ureq::get(&format!("{url}/metrics"))
        .set("Authorization", &format!("Bearer {key}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bandsox_http_requests_total")
                && l.contains(r#"route="/api/vms/{id}""#)
                && l.contains(r#"status="401""#)),
        "{metrics}"
    );
}
