//! `bandsox image ...` and `/api/images` against a real server and a real local registry
//! (Debian's `docker-registry`, images built here and pushed with skopeo): the NDJSON pull
//! progress stream, ls/inspect/rm (refused while a VM uses the image), `docker save` import,
//! and bad input (unknown image, unreachable registry, corrupt layer). Boots one VM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../bandsox-core/tests/image_support/mod.rs"]
mod image_support;

use std::io::BufRead;
use std::process::Command;

use common::{answer, bandsox, free_port, init, start_server, text};
use image_support::{busybox_layer, layout, names, Registry, Tar};

/// Bytes gzip and zstd cannot shrink, so layers keep their size on the wire.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Pulls `reference` with `Accept: application/x-ndjson`; every line parsed.
fn pull_stream(url: &str, reference: &str) -> Vec<serde_json::Value> {
    let res = ureq::post(&format!("{url}/api/images/pull"))
        .set("Accept", "application/x-ndjson")
        .send_json(serde_json::json!({ "reference": reference }))
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.content_type(), "application/x-ndjson");
    std::io::BufReader::new(res.into_reader())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

fn image_refs(url: &str) -> Vec<String> {
    let out = bandsox(url, &["image", "ls", "--json"]);
    assert!(out.status.success(), "ls: {}", text(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .map(|i| i["reference"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn pull_progress_ls_inspect_rm_import_and_bad_input() {
    let dir = common::TestRoot::new("bsximg");
    let storage = dir.path().join("storage");
    let out = init(&storage);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let port = free_port();
    let _server = start_server(&storage, port);
    let url = format!("http://127.0.0.1:{port}");
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();

    // A three-layer image, 6 MiB of incompressible data a layer.
    let big = work.path().join("big");
    layout(
        &big,
        (0..3)
            .map(|i| {
                Tar::default()
                    .file(&format!("layer{i}"), &noise(6 << 20, i + 1))
                    .done()
            })
            .collect(),
        serde_json::json!({"Env": ["PATH=/bin"]}),
        "v1",
    );
    reg.push(&big, "v1", "test/big:v1");
    let big_ref = reg.reference("test/big:v1");

    // The progress stream: phases, per-layer bytes rising to the total, one final done.
    let events = pull_stream(&url, &big_ref);
    assert!(events.len() >= 8, "{events:?}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "done").count(), 1);
    for phase in ["resolving", "downloading", "unpacking", "converting"] {
        assert!(
            events.iter().any(|e| e["phase"] == phase),
            "no {phase} phase: {events:?}"
        );
    }
    let done = events.last().unwrap();
    assert_eq!(done["image"]["reference"], big_ref.as_str());
    let mut per_layer: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut totals = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e["event"] == "layer") {
        let d = e["digest"].as_str().unwrap().to_owned();
        totals.insert(d.clone(), e["bytes_total"].as_u64().unwrap());
        per_layer
            .entry(d)
            .or_default()
            .push(e["bytes_done"].as_u64().unwrap());
    }
    let big_layers: Vec<_> = totals.iter().filter(|(_, t)| **t > 5 << 20).collect();
    assert_eq!(big_layers.len(), 3, "{totals:?}");
    for (d, total) in big_layers {
        let seen = &per_layer[d];
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{d}: {seen:?}");
        assert_eq!(seen.first(), Some(&0), "{d}: {seen:?}");
        assert_eq!(seen.last(), Some(total), "{d}: {seen:?}");
    }
    // Without the Accept header the answer is the ImageInfo, as before.
    let (status, body) = answer(
        ureq::post(&format!("{url}/api/images/pull"))
            .send_json(serde_json::json!({ "reference": big_ref })),
    );
    assert_eq!(status, 200);
    assert_eq!(body["reference"], big_ref.as_str());

    // CLI pull (stdout is a pipe: no bars); --json prints the ImageInfo only.
    let bb = work.path().join("bb");
    layout(
        &bb,
        vec![busybox_layer()],
        serde_json::json!({"Env": ["PATH=/bin"], "WorkingDir": "/tmp"}),
        "v1",
    );
    reg.push(&bb, "v1", "test/busybox:v1");
    let bb_ref = reg.reference("test/busybox:v1");
    let out = bandsox(&url, &["image", "pull", &bb_ref, "--json"]);
    assert!(out.status.success(), "pull: {}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["reference"], bb_ref.as_str());
    assert_eq!(text(&out.stderr), "");

    let refs = image_refs(&url);
    assert!(
        refs.contains(&bb_ref) && refs.contains(&big_ref),
        "{refs:?}"
    );
    let out = bandsox(&url, &["image", "inspect", &bb_ref, "--json"]);
    assert!(out.status.success(), "inspect: {}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["digest"], done_digest(&url, &bb_ref));

    // rm is refused while a VM uses the image, and works after.
    let out = bandsox(&url, &["create", &bb_ref]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let out = bandsox(&url, &["image", "rm", &bb_ref]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("hint: delete the VMs"), "{err}");
    assert!(image_refs(&url).contains(&bb_ref));
    let out = bandsox(&url, &["vm", "delete", &id]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    let out = bandsox(&url, &["image", "rm", &bb_ref]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    assert!(!image_refs(&url).contains(&bb_ref));

    // Import of a `docker save` archive written by skopeo.
    let saved = work.path().join("saved.tar");
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q"])
        .arg(format!("oci:{}:v1", bb.display()))
        .arg(format!(
            "docker-archive:{}:example/saved:1",
            saved.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = bandsox(
        &url,
        &["image", "import", saved.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // skopeo writes the fully qualified name into RepoTags.
    assert_eq!(info["reference"], "docker.io/example/saved:1");

    // The same import through REST: a progress stream on request, else `201` as before.
    let res = ureq::post(&format!(
        "{url}/api/images/import?reference=example/streamed:1"
    ))
    .set("Accept", "application/x-ndjson")
    .set("Content-Type", "application/x-tar")
    .send_bytes(&std::fs::read(&saved).unwrap())
    .unwrap();
    assert_eq!(res.content_type(), "application/x-ndjson");
    let events: Vec<serde_json::Value> = std::io::BufReader::new(res.into_reader())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(
        events.iter().any(|e| e["phase"] == "unpacking"),
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "done", "{events:?}");
    assert_eq!(last["image"]["reference"], "example/streamed:1");
    let (status, body) = answer(
        ureq::post(&format!(
            "{url}/api/images/import?reference=example/plain:1"
        ))
        .set("Content-Type", "application/octet-stream")
        .send_bytes(&std::fs::read(&saved).unwrap()),
    );
    assert_eq!(
        (status, body["reference"].as_str()),
        (201, Some("example/plain:1"))
    );
    assert!(names(&storage.join("images"))
        .iter()
        .all(|n| !n.starts_with(".upload-")));

    // Bad input.
    let images_dir = storage.join("images");
    let before = names(&images_dir);
    let missing = reg.reference("test/missing:v1");
    let (status, body) = answer(
        ureq::post(&format!("{url}/api/images/pull"))
            .send_json(serde_json::json!({ "reference": missing })),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("image_not_found"))
    );
    let out = bandsox(&url, &["image", "pull", &missing]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.lines().any(|l| l.starts_with("hint: ")), "{err}");
    let (status, body) = answer(
        ureq::post(&format!("{url}/api/images/pull"))
            .send_json(serde_json::json!({ "reference": "127.0.0.1:1/test/x:v1" })),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("registry_unreachable"))
    );

    // A corrupt layer: the stream ends in an error event; nothing is cached.
    let bad = work.path().join("corrupt");
    layout(
        &bad,
        vec![Tar::default().file("a", &noise(200_000, 9)).done()],
        serde_json::json!({}),
        "v1",
    );
    reg.push(&bad, "v1", "test/corrupt:v1");
    let (plan, _) = bandsox_image::oci::load_dir(&bad, None).unwrap();
    let data = reg.blob_data(plan.layers[0].digest.as_deref().unwrap());
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&data, bytes).unwrap();
    let bad_ref = reg.reference("test/corrupt:v1");
    let events = pull_stream(&url, &bad_ref);
    let last = events.last().unwrap();
    assert_eq!(last["event"], "error", "{events:?}");
    assert_eq!(last["code"], "digest_mismatch", "{last}");
    assert_eq!(last["status"], 422);
    let out = bandsox(&url, &["image", "pull", &bad_ref]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!image_refs(&url).contains(&bad_ref));
    assert_eq!(names(&images_dir), before);
}

/// The digest the server reports for `reference`.
fn done_digest(url: &str, reference: &str) -> serde_json::Value {
    let (status, body) = answer(ureq::get(&format!("{url}/api/images/{reference}")).call());
    assert_eq!(status, 200);
    body["digest"].clone()
}
