//! Importing `docker save` tarballs and OCI layouts (directory and tar), and the bad-input
//! cases of import, checked on the built base disk (read with debugfs, no VM needed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod image_support;

use std::path::Path;
use std::sync::Arc;

use bandsox_core::images;
use bandsox_core::store::Store;
use bandsox_image::oci::NoProgress;
use common::fresh_storage;
use image_support::{ext4_cat, layout, names, Tar};

fn tar_dir(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A `docker save` archive: `manifest.json`, `<config hex>.json`, `<id>/layer.tar`.
fn docker_save(out: &Path, tag: &str, layers: &[Vec<u8>], corrupt_diff_id: bool) {
    let mut diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    if corrupt_diff_id {
        diff_ids[0] = format!("sha256:{}", "0".repeat(64));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["FROM=docker-save"], "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_name = format!("{}.json", sha(config.as_bytes()));
    let layer_names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": [tag], "Layers": layer_names,
    }])
    .to_string();
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", manifest.as_bytes());
    add(&config_name, config.as_bytes());
    for (n, l) in layer_names.iter().zip(layers) {
        add(n, l);
    }
    b.finish().unwrap();
}

fn store(ts: &common::TestStorage) -> Store {
    Store::open(&ts.storage.db_path()).unwrap()
}

#[tokio::test]
async fn docker_save_and_oci_layout_archives_import() {
    let ts = fresh_storage();
    let st = store(&ts);
    let work = tempfile::tempdir().unwrap();

    // docker save tarball, named by its RepoTags.
    let ds = work.path().join("save.tar");
    docker_save(
        &ds,
        "example/saved:1",
        &[
            Tar::default()
                .file("srv/a", b"one\n")
                .file("srv/b", b"two\n")
                .done(),
            Tar::default()
                .file("srv/.wh.b", b"")
                .file("srv/c", b"three\n")
                .done(),
        ],
        false,
    );
    let rec = images::import(&st, &ts.storage, &ds, None, false, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(rec.reference, "example/saved:1");
    assert_eq!(rec.config["WorkingDir"], "/srv");
    let disk = ts
        .storage
        .image_dir(&rec.digest)
        .unwrap()
        .join("rootfs.ext4");
    assert_eq!(ext4_cat(&disk, "/srv/a").unwrap(), b"one\n");
    assert_eq!(ext4_cat(&disk, "/srv/c").unwrap(), b"three\n");
    assert!(ext4_cat(&disk, "/srv/b").is_none());
    let info = images::inspect(&st, &ts.storage, "example/saved:1").unwrap();
    assert_eq!(info.meta.unwrap().source, "docker-archive");

    // OCI layout as a directory and as a tar, under explicit references.
    let lay = work.path().join("layout");
    layout(
        &lay,
        vec![
            Tar::default().file("x", b"x1\n").symlink("y", "/x").done(),
            Tar::default().file("z", b"z\n").done(),
        ],
        serde_json::json!({"Env": ["K=V"]}),
        "v2",
    );
    let from_dir = images::import(
        &st,
        &ts.storage,
        &lay,
        Some("example/oci:dir"),
        false,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let archive = work.path().join("layout.tar");
    tar_dir(&lay, &archive);
    let from_tar = images::import(
        &st,
        &ts.storage,
        &archive,
        Some("example/oci:tar"),
        false,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    // Same content, same digest: one shared base disk.
    assert_eq!(from_dir.digest, from_tar.digest);
    let disk = ts
        .storage
        .image_dir(&from_tar.digest)
        .unwrap()
        .join("rootfs.ext4");
    assert_eq!(ext4_cat(&disk, "/z").unwrap(), b"z\n");
    assert!(!names(&ts.storage.images_dir())
        .iter()
        .any(|n| n.starts_with(".tmp")));
    let refs: Vec<String> = images::list(&st, &ts.storage)
        .unwrap()
        .into_iter()
        .map(|i| i.record.reference)
        .collect();
    for r in ["example/saved:1", "example/oci:dir", "example/oci:tar"] {
        assert!(refs.contains(&r.to_owned()), "{refs:?}");
    }
}

#[tokio::test]
async fn bad_archives_get_their_own_codes_and_leave_nothing() {
    let ts = fresh_storage();
    let st = store(&ts);
    let work = tempfile::tempdir().unwrap();
    let before = names(&ts.storage.images_dir());
    let n_images = st.list_images().unwrap().len();

    // Layer content that does not match the config's diff_id.
    let corrupt = work.path().join("corrupt.tar");
    docker_save(
        &corrupt,
        "bad/corrupt:1",
        &[Tar::default().file("a", b"a").done()],
        true,
    );
    // A layout whose layer has an unknown media type.
    let odd = work.path().join("odd");
    layout(
        &odd,
        vec![Tar::default().file("a", b"a").done()],
        serde_json::json!({}),
        "v1",
    );
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(odd.join("index.json")).unwrap()).unwrap();
    let mdigest = idx["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let mpath = odd
        .join("blobs/sha256")
        .join(mdigest.trim_start_matches("sha256:"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    manifest["layers"][0]["mediaType"] = "application/vnd.example.weird".into();
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let new_digest = format!("sha256:{}", sha(&mbytes));
    std::fs::write(odd.join("blobs/sha256").join(sha(&mbytes)), &mbytes).unwrap();
    std::fs::write(
        odd.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": new_digest, "size": mbytes.len()}],
        }))
        .unwrap(),
    )
    .unwrap();
    // Not an archive at all.
    let junk = work.path().join("junk.tar");
    std::fs::write(
        &junk,
        b"this is not a tar archive, not even close .........",
    )
    .unwrap();

    for (path, reference, code) in [
        (corrupt.as_path(), None, "digest_mismatch"),
        (odd.as_path(), Some("bad/odd:1"), "unsupported_media_type"),
        (junk.as_path(), Some("bad/junk:1"), "invalid_image"),
        (
            work.path().join("missing.tar").as_path(),
            Some("bad/missing:1"),
            "invalid_input",
        ),
        (junk.as_path(), Some("../etc"), "invalid_input"),
    ] {
        let err = images::import(
            &st,
            &ts.storage,
            path,
            reference,
            false,
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), code, "{}: {err}", path.display());
    }
    assert_eq!(names(&ts.storage.images_dir()), before);
    assert_eq!(st.list_images().unwrap().len(), n_images);
}
