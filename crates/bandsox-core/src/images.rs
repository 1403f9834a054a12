//! The image cache: base disks by digest, references in the database.
//!
//! An image is a read-only ext4 file at `images/<digest hex>/rootfs.ext4` plus its config
//! (env, working dir, user, ...). Every VM of an image shares that file; VM creation never
//! copies it.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use bandsox_image::oci::{ImagePlan, NoProgress, Progress};
use bandsox_image::pull::PullOptions;
use bandsox_protocol::ExecRequest;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::storage::Storage;
use crate::store::{now, ImageRecord, Store};

/// Runtime config of an image, next to its base disk.
const CONFIG_FILE: &str = "config.json";
/// What we know about an image's origin and content, next to its base disk.
const META_FILE: &str = "image.json";
/// Base disk file name.
const DISK_FILE: &str = "rootfs.ext4";
/// Environment variable listing extra plain-HTTP registries (comma-separated `host[:port]`).
pub const INSECURE_REGISTRIES_ENV: &str = bandsox_config::INSECURE_REGISTRIES;

/// Environment variable capping the unpacked size of one image (and of one import archive),
/// in MiB.
pub const MAX_UNPACKED_ENV: &str = bandsox_config::MAX_UNPACKED_MIB;
/// The cap without [`MAX_UNPACKED_ENV`].
pub const DEFAULT_MAX_UNPACKED_MIB: u64 = 16 * 1024;
/// Free space an import or pull leaves for everything else on the storage filesystem.
pub const FREE_SPACE_RESERVE_MIB: u64 = 256;

/// Name of the default offline image built by `bandsox init`.
pub const DEFAULT_IMAGE: &str = "bandsox/busybox";

/// A usable image: its record and its base disk.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub record: ImageRecord,
    pub disk: PathBuf,
}

/// Checks an image reference: 1-255 characters of `[A-Za-z0-9._/:@-]`, no `..`.
pub fn validate_reference(reference: &str) -> Result<()> {
    let ok = !reference.is_empty()
        && reference.len() <= 255
        && !reference.contains("..")
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/:@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidInput(format!(
            "invalid image reference `{}`",
            reference
                .chars()
                .take(80)
                .collect::<String>()
                .escape_debug()
        )))
    }
}

/// Finds a cached image by reference.
pub fn resolve(store: &Store, storage: &Storage, reference: &str) -> Result<ResolvedImage> {
    validate_reference(reference)?;
    let record = store
        .get_image(reference)?
        .ok_or_else(|| CoreError::NotFound {
            kind: "image",
            id: reference.to_owned(),
        })?;
    let disk = storage.image_dir(&record.digest)?.join("rootfs.ext4");
    if !disk.is_file() {
        return Err(CoreError::NotFound {
            kind: "image",
            id: format!(
                "{reference} (base disk {} is missing; re-import it)",
                disk.display()
            ),
        });
    }
    Ok(ResolvedImage { record, disk })
}

/// Imports a root filesystem directory as image `reference`. The digest is computed over the
/// tree's content, so importing the same tree twice reuses the cached disk.
pub fn import_dir(
    store: &Store,
    storage: &Storage,
    reference: &str,
    dir: &Path,
    config: serde_json::Value,
) -> Result<ImageRecord> {
    let meta = ImageMeta {
        source: "dir".into(),
        ..Default::default()
    };
    record_tree(
        store,
        storage,
        reference,
        dir,
        &bandsox_image::unpack::HeldModes::default(),
        config,
        meta,
    )
}

/// Records the tree at `dir` as image `reference` (base disk by tree digest, config, `meta`
/// with its `content_bytes` filled in). `held` are the modes and owners the unpacker kept off
/// the host tree; they go into the base disk and the digest.
pub(crate) fn record_tree(
    store: &Store,
    storage: &Storage,
    reference: &str,
    dir: &Path,
    held: &bandsox_image::unpack::HeldModes,
    config: serde_json::Value,
    meta: ImageMeta,
) -> Result<ImageRecord> {
    validate_reference(reference)?;
    let digest = tree_digest_held(dir, held)?;
    let image_dir = storage.image_dir(&digest)?;
    let disk = image_dir.join(DISK_FILE);
    let content_bytes = bandsox_image::rootfs::dir_content_bytes(dir)?;
    let size_bytes = if disk.is_file() {
        disk.metadata()?.len()
    } else {
        std::fs::create_dir_all(&image_dir)?;
        let tmp = image_dir.join("rootfs.ext4.tmp");
        let built = bandsox_image::rootfs::make_ext4_from_tree(dir, &tmp, "bandsox-root", held);
        let size = match built {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&image_dir);
                return Err(e.into());
            }
        };
        // Shared, read-only content: readable so a Firecracker jail can hard-link it (the
        // storage root's mode 0700 keeps other users out).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::rename(&tmp, &disk)?;
        size
    };
    write_json_atomic(&image_dir.join(CONFIG_FILE), &config)?;
    write_json_atomic(
        &image_dir.join(META_FILE),
        &ImageMeta {
            content_bytes,
            ..meta
        },
    )?;
    let record = ImageRecord {
        reference: reference.to_owned(),
        digest,
        size_bytes,
        config,
        created_at: now(),
    };
    store.upsert_image(&record)?;
    Ok(record)
}

/// Origin and content facts of a cached image (`images/<hex>/image.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageMeta {
    /// `registry`, `archive`, `layout` or `dir`.
    pub source: String,
    /// The normalised reference it was pulled as, for registry images.
    #[serde(default)]
    pub pulled_as: Option<String>,
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// Layer blob digests, in order (blobs under `images/blobs/`).
    #[serde(default)]
    pub layers: Vec<String>,
    /// Bytes the unpacked tree occupies (generous estimate): the least a VM disk must hold.
    pub content_bytes: u64,
    /// For images built from a Dockerfile: the SHA-256 of its text (a cached build is reused
    /// only for the same text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_digest: Option<String>,
    /// `sha256:` of the base disk file as built, for images `bandsox init` checks (the
    /// default image): a disk changed behind its back is rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_digest: Option<String>,
}

/// An image as `image ls` / `image inspect` show it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageInfo {
    #[serde(flatten)]
    pub record: ImageRecord,
    pub meta: Option<ImageMeta>,
    /// VMs whose disks use this image.
    pub used_by_vms: Vec<String>,
}

/// Directory of layer blobs shared by every image: `images/blobs/sha256/<hex>`.
pub fn blobs_dir(storage: &Storage) -> PathBuf {
    storage.images_dir().join("blobs")
}

/// Pull options from the environment: `BANDSOX_INSECURE_REGISTRIES`, Docker config.
pub fn pull_options_from_env() -> PullOptions {
    PullOptions {
        insecure_registries: bandsox_config::get(INSECURE_REGISTRIES_ENV)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// One lock per key (reference or digest) and storage root, so concurrent pulls of the same
/// image wait for one another instead of downloading and converting twice.
fn key_lock(storage: &Storage, key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        OnceLock::new();
    let full = format!("{}\0{key}", storage.root().display());
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(full)
        .or_default()
        .clone()
}

/// Finds a cached image by the reference as written, then by its normalised form
/// (`alpine` → `docker.io/library/alpine:latest`).
pub fn find(store: &Store, storage: &Storage, reference: &str) -> Result<Option<ResolvedImage>> {
    validate_reference(reference)?;
    let mut names = vec![reference.to_owned()];
    if let Ok(n) = bandsox_image::pull::normalize_reference(reference) {
        if n != reference {
            names.push(n);
        }
    }
    for name in names {
        match resolve(store, storage, &name) {
            Ok(r) => return Ok(Some(r)),
            Err(CoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Pulls `reference` from its registry (unless cached and not `force`), converts it to a
/// base disk and records it under its normalised name. Concurrent pulls of one reference
/// share the work.
pub async fn pull(
    store: &Store,
    storage: &Storage,
    reference: &str,
    opts: &PullOptions,
    force: bool,
    progress: Arc<dyn Progress>,
) -> Result<ImageRecord> {
    validate_reference(reference)?;
    let name = bandsox_image::pull::normalize_reference(reference)?;
    validate_reference(&name)?;
    let lock = key_lock(storage, &format!("ref:{name}"));
    let _guard = lock.lock().await;
    if !force {
        // A reference that names something other than this registry image (an import, a
        // build, the default image) is never answered with it, nor silently replaced.
        if let Some(found) = find(store, storage, reference)? {
            let from_registry =
                image_meta(storage, &found.record.digest).is_some_and(|m| m.source == "registry");
            if !from_registry || found.record.reference != name {
                return Err(CoreError::ImageExists(found.record.reference));
            }
            return Ok(found.record);
        }
    }
    let plan =
        bandsox_image::pull::pull(&name, &blobs_dir(storage), opts, progress.clone()).await?;
    let meta = ImageMeta {
        source: "registry".into(),
        pulled_as: Some(name.clone()),
        manifest_digest: plan.manifest_digest.clone(),
        layers: plan
            .layers
            .iter()
            .filter_map(|l| l.digest.clone())
            .collect(),
        content_bytes: 0,
        dockerfile_digest: None,
        disk_digest: None,
    };
    build_and_record(store, storage, &name, plan, meta, force, progress).await
}

/// Imports a `docker save` archive or an OCI layout (directory or tar, optionally
/// compressed) as `reference`. Without a reference, the archive's own tag (docker
/// `RepoTags`) is used.
///
/// A reference that already exists (as written or normalised) is refused with
/// [`CoreError::ImageExists`] unless `force`. The archive and the image it holds are each
/// limited by [`unpack_limit`].
pub async fn import(
    store: &Store,
    storage: &Storage,
    path: &Path,
    reference: Option<&str>,
    force: bool,
    progress: Arc<dyn Progress>,
) -> Result<ImageRecord> {
    if let Some(r) = reference {
        validate_reference(r)?;
        if !force {
            refuse_existing(store, r)?;
        }
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| CoreError::InvalidInput(format!("cannot read {}: {e}", path.display())))?;
    let scratch = scratch_dir(storage)?;
    let result = async {
        let dir = if meta.is_dir() {
            path.to_path_buf()
        } else {
            progress.phase("reading archive");
            let (archive, out) = (path.to_path_buf(), scratch.join("archive"));
            let limit = unpack_limit(storage)?;
            tokio::task::spawn_blocking(move || {
                bandsox_image::oci::extract_archive(&archive, &out, limit.bytes)
                    .map(|()| out)
                    .map_err(|e| limit.explain(e))
            })
            .await
            .map_err(|e| CoreError::Io(std::io::Error::other(e)))??
        };
        let (plan, kind, name) = load_plan(&dir, reference)?;
        let reference = match (reference, name) {
            (Some(r), _) => r.to_owned(),
            (None, Some(n)) => n,
            (None, None) => {
                return Err(CoreError::InvalidInput(
                    "the archive does not name its image; pass a reference (--reference NAME)"
                        .into(),
                ))
            }
        };
        validate_reference(&reference)?;
        let lock = key_lock(storage, &format!("ref:{reference}"));
        let _guard = lock.lock().await;
        if !force {
            refuse_existing(store, &reference)?;
        }
        let meta = ImageMeta {
            source: match kind {
                bandsox_image::oci::DirKind::OciLayout => "oci-layout",
                bandsox_image::oci::DirKind::DockerSave => "docker-archive",
            }
            .into(),
            pulled_as: None,
            manifest_digest: plan.manifest_digest.clone(),
            layers: plan.layers.iter().map(|l| l.diff_id.clone()).collect(),
            content_bytes: 0,
            dockerfile_digest: None,
            disk_digest: None,
        };
        build_and_record(store, storage, &reference, plan, meta, true, progress).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// [`CoreError::ImageExists`] when `reference` (as written or normalised) is taken.
pub fn refuse_existing(store: &Store, reference: &str) -> Result<()> {
    let mut names = vec![reference.to_owned()];
    if let Ok(n) = bandsox_image::pull::normalize_reference(reference) {
        names.push(n);
    }
    for name in names {
        if store.get_image(&name)?.is_some() {
            return Err(CoreError::ImageExists(name));
        }
    }
    Ok(())
}

/// How many bytes one archive or image may unpack to: the smaller of
/// [`MAX_UNPACKED_ENV`] (default [`DEFAULT_MAX_UNPACKED_MIB`]) and half the free space
/// under the storage root above [`FREE_SPACE_RESERVE_MIB`] (the unpacked tree and the base
/// disk built from it are both there at once).
#[derive(Debug, Clone)]
pub struct UnpackLimit {
    pub bytes: u64,
    /// Why it is this number, for the error message.
    pub reason: String,
}

impl UnpackLimit {
    /// Turns the image crate's size refusal into [`CoreError::ImageTooLarge`] naming the cause.
    pub(crate) fn explain(&self, e: bandsox_image::ImageError) -> CoreError {
        match e {
            bandsox_image::ImageError::TooLarge { .. } => CoreError::ImageTooLarge(format!(
                "the image unpacks to more than {} MiB ({}); nothing was kept",
                self.bytes >> 20,
                self.reason
            )),
            e => e.into(),
        }
    }
}

/// The [`UnpackLimit`] now.
pub fn unpack_limit(storage: &Storage) -> Result<UnpackLimit> {
    let configured_mib = match bandsox_config::get(MAX_UNPACKED_ENV) {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                CoreError::InvalidInput(format!(
                    "{MAX_UNPACKED_ENV}={} is not a positive number of MiB",
                    v.chars().take(40).collect::<String>()
                ))
            })?,
        None => DEFAULT_MAX_UNPACKED_MIB,
    };
    let configured = configured_mib.saturating_mul(1 << 20);
    let free = crate::sys::free_space_bytes(storage.root())?;
    let by_space = free.saturating_sub(FREE_SPACE_RESERVE_MIB << 20) / 2;
    Ok(if by_space < configured {
        UnpackLimit {
            bytes: by_space,
            reason: format!(
                "not enough free space: {} MiB free under the storage root",
                free >> 20
            ),
        }
    } else {
        UnpackLimit {
            bytes: configured,
            reason: format!("the limit {MAX_UNPACKED_ENV}={configured_mib}"),
        }
    })
}

/// Loads the plan of an image directory: the image named `reference` when the archive holds
/// several, else the first. Also returns the archive's own name for it.
fn load_plan(
    dir: &Path,
    reference: Option<&str>,
) -> Result<(ImagePlan, bandsox_image::oci::DirKind, Option<String>)> {
    let (plan, kind) = match reference {
        Some(r) => bandsox_image::oci::load_dir(dir, Some(r))
            .or_else(|_| bandsox_image::oci::load_dir(dir, None))?,
        None => bandsox_image::oci::load_dir(dir, None)?,
    };
    let name = plan.names.first().cloned();
    Ok((plan, kind, name))
}

/// Applies a plan into a scratch directory, builds the base disk (unless one exists for the
/// digest and `rebuild` is false), writes config and meta, and records `reference`. On any
/// failure nothing new is left: no disk, no record.
async fn build_and_record(
    store: &Store,
    storage: &Storage,
    reference: &str,
    plan: ImagePlan,
    mut meta: ImageMeta,
    rebuild: bool,
    progress: Arc<dyn Progress>,
) -> Result<ImageRecord> {
    let digest = plan.config_digest.clone();
    let image_dir = storage.image_dir(&digest)?;
    let lock = key_lock(storage, &format!("digest:{digest}"));
    let _guard = lock.lock().await;
    let disk = image_dir.join(DISK_FILE);
    let config = plan.runtime_config();
    let existing: Option<ImageMeta> = read_json(&image_dir.join(META_FILE));
    let size_bytes = match existing {
        Some(m) if disk.is_file() && !rebuild => {
            meta.content_bytes = m.content_bytes;
            disk.metadata()?.len()
        }
        _ => {
            let limit = unpack_limit(storage)?;
            let scratch = scratch_dir(storage)?;
            let (dir2, disk2, progress2) = (image_dir.clone(), disk.clone(), progress.clone());
            let built = tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
                let root = scratch.join("root");
                std::fs::create_dir_all(&root)?;
                // The guest's `/` unless a layer sets it: 0755 whatever the umask.
                std::fs::set_permissions(
                    &root,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )?;
                let r = (|| {
                    let mut unpacker = bandsox_image::unpack::Unpacker::with_limit(limit.bytes);
                    plan.apply_with(&mut unpacker, &root, progress2.as_ref())
                        .map_err(|e| limit.explain(e))?;
                    let content = bandsox_image::rootfs::dir_content_bytes(&root)?;
                    progress2.phase("building base disk");
                    let created = !dir2.exists();
                    std::fs::create_dir_all(&dir2)?;
                    match bandsox_image::rootfs::make_ext4_from_tree(
                        &root,
                        &disk2,
                        "bandsox-root",
                        &unpacker.held,
                    ) {
                        Ok(size) => Ok((size, content)),
                        Err(e) => {
                            if created {
                                let _ = std::fs::remove_dir_all(&dir2);
                            }
                            Err(e.into())
                        }
                    }
                })();
                let _ = std::fs::remove_dir_all(&scratch);
                r
            })
            .await
            .map_err(|e| CoreError::Io(std::io::Error::other(e)))??;
            meta.content_bytes = built.1;
            built.0
        }
    };
    write_json_atomic(&image_dir.join(CONFIG_FILE), &config)?;
    write_json_atomic(&image_dir.join(META_FILE), &meta)?;
    let record = ImageRecord {
        reference: reference.to_owned(),
        digest,
        size_bytes,
        config,
        created_at: now(),
    };
    store.upsert_image(&record)?;
    progress.phase("done");
    Ok(record)
}

/// The image a new VM boots from: cached (by reference or normalised reference) or pulled
/// now; re-pulled and rebuilt with `force_rebuild`. Refuses a `disk_size_mib` that cannot
/// hold the image's content.
pub async fn resolve_for_create(
    store: &Store,
    storage: &Storage,
    reference: &str,
    disk_size_mib: u64,
    force_rebuild: bool,
) -> Result<ResolvedImage> {
    let cached = find(store, storage, reference)?;
    let from_registry = cached
        .as_ref()
        .and_then(|c| image_meta(storage, &c.record.digest))
        .is_none_or(|m| m.source == "registry");
    let image = match cached {
        Some(c) if !(force_rebuild && from_registry) => c,
        _ => {
            let rec = pull(
                store,
                storage,
                reference,
                &pull_options_from_env(),
                force_rebuild,
                Arc::new(NoProgress),
            )
            .await?;
            resolve(store, storage, &rec.reference)?
        }
    };
    let needed_bytes = image_meta(storage, &image.record.digest)
        .map(|m| m.content_bytes)
        .unwrap_or(0);
    let needed_mib = needed_bytes.div_ceil(1 << 20);
    if disk_size_mib < needed_mib {
        return Err(CoreError::DiskTooSmall {
            image: reference.to_owned(),
            disk_size_mib,
            needed_mib,
        });
    }
    Ok(image)
}

/// `sha256:` of the base disk file of image `digest`.
pub fn disk_digest(storage: &Storage, digest: &str) -> Result<String> {
    let disk = storage.image_dir(digest)?.join(DISK_FILE);
    let mut f = std::fs::File::open(&disk)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Whether the base disk of image `digest` is the file that was recorded for it
/// ([`ImageMeta::disk_digest`]). A disk with no recorded digest gets it now (storage roots
/// made before digests were recorded) and counts as unchanged; a missing disk is changed.
pub fn verify_disk(storage: &Storage, digest: &str) -> Result<bool> {
    let dir = storage.image_dir(digest)?;
    if !dir.join(DISK_FILE).is_file() {
        return Ok(false);
    }
    let Some(mut meta) = image_meta(storage, digest) else {
        return Ok(false);
    };
    let actual = disk_digest(storage, digest)?;
    match &meta.disk_digest {
        Some(recorded) => Ok(*recorded == actual),
        None => {
            meta.disk_digest = Some(actual);
            write_json_atomic(&dir.join(META_FILE), &meta)?;
            Ok(true)
        }
    }
}

/// Records the digest of the base disk of image `digest` in its meta (see [`verify_disk`]).
pub fn record_disk_digest(storage: &Storage, digest: &str) -> Result<String> {
    let dir = storage.image_dir(digest)?;
    let mut meta = image_meta(storage, digest).unwrap_or_default();
    let actual = disk_digest(storage, digest)?;
    meta.disk_digest = Some(actual.clone());
    write_json_atomic(&dir.join(META_FILE), &meta)?;
    Ok(actual)
}

/// Removes the base disk of image `digest` (so the next import of its tree builds it anew).
pub fn discard_disk(storage: &Storage, digest: &str) -> Result<()> {
    match std::fs::remove_file(storage.image_dir(digest)?.join(DISK_FILE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The stored meta of an image digest, if any.
pub fn image_meta(storage: &Storage, digest: &str) -> Option<ImageMeta> {
    read_json(&storage.image_dir(digest).ok()?.join(META_FILE))
}

/// Lists cached images with their meta and users.
pub fn list(store: &Store, storage: &Storage) -> Result<Vec<ImageInfo>> {
    let vms = store.list_vms()?;
    Ok(store
        .list_images()?
        .into_iter()
        .map(|record| {
            let used_by_vms = vms
                .iter()
                .filter(|v| v.image_digest == record.digest)
                .map(|v| v.id.clone())
                .collect();
            ImageInfo {
                meta: image_meta(storage, &record.digest),
                record,
                used_by_vms,
            }
        })
        .collect())
}

/// One cached image by reference (as written or normalised).
pub fn inspect(store: &Store, storage: &Storage, reference: &str) -> Result<ImageInfo> {
    let found = find(store, storage, reference)?.ok_or_else(|| CoreError::NotFound {
        kind: "image",
        id: reference.to_owned(),
    })?;
    let used_by_vms = store
        .list_vms()?
        .into_iter()
        .filter(|v| v.image_digest == found.record.digest)
        .map(|v| v.id)
        .collect();
    Ok(ImageInfo {
        meta: image_meta(storage, &found.record.digest),
        record: found.record,
        used_by_vms,
    })
}

/// Removes an image reference. When it is the last reference to its digest, the base disk
/// and the layer blobs no other image uses are removed too — refused while a VM or a
/// snapshot uses it.
pub async fn remove(store: &Store, storage: &Storage, reference: &str) -> Result<ImageRecord> {
    let found = find(store, storage, reference)?.ok_or_else(|| CoreError::NotFound {
        kind: "image",
        id: reference.to_owned(),
    })?;
    let record = found.record;
    let lock = key_lock(storage, &format!("digest:{}", record.digest));
    let _guard = lock.lock().await;
    let images = store.list_images()?;
    let last = !images
        .iter()
        .any(|i| i.digest == record.digest && i.reference != record.reference);
    if last {
        let (cache, snapshots): (Vec<_>, Vec<_>) = store
            .list_snapshots()?
            .into_iter()
            .filter(|s| s.image_digest == record.digest)
            .partition(crate::dockerfile::is_cache_snapshot);
        let users: Vec<String> = store
            .list_vms()?
            .into_iter()
            .filter(|v| v.image_digest == record.digest)
            .map(|v| format!("VM {}", v.id))
            .chain(snapshots.iter().map(|s| format!("snapshot {}", s.id)))
            .collect();
        if !users.is_empty() {
            return Err(CoreError::ImageInUse(format!(
                "image `{}` is used by {}",
                record.reference,
                users.join(", ")
            )));
        }
        // The Dockerfile step cache's snapshots of it go with it.
        for s in cache {
            store.delete_snapshot(&s.id)?;
            if crate::storage::validate_id(&s.id).is_ok() {
                let _ = std::fs::remove_dir_all(storage.root().join("snapshots").join(&s.id));
            }
        }
    }
    delete_image_row(storage, &record.reference)?;
    if last {
        let meta = image_meta(storage, &record.digest);
        let dir = storage.image_dir(&record.digest)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(meta) = meta {
            let still_used: std::collections::HashSet<String> = store
                .list_images()?
                .iter()
                .filter_map(|i| image_meta(storage, &i.digest))
                .flat_map(|m| m.layers)
                .collect();
            for blob in meta.layers.iter().filter(|b| !still_used.contains(*b)) {
                if let Ok(p) = bandsox_image::pull::blob_path(&blobs_dir(storage), blob) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
    Ok(record)
}

/// Deletes one row of the images table. (Through a connection of our own, so the image
/// cache needs no change to the shared store.)
fn delete_image_row(storage: &Storage, reference: &str) -> Result<()> {
    let conn = rusqlite::Connection::open(storage.db_path())?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute("DELETE FROM images WHERE reference = ?1", [reference])?;
    Ok(())
}

/// The runtime config of the image with `digest` (`Null` when unknown).
pub fn image_config(store: &Store, storage: &Storage, digest: &str) -> serde_json::Value {
    storage
        .image_dir(digest)
        .ok()
        .and_then(|d| read_json(&d.join(CONFIG_FILE)))
        .or_else(|| {
            store
                .list_images()
                .ok()?
                .into_iter()
                .find(|i| i.digest == digest)
                .map(|i| i.config)
        })
        .unwrap_or(serde_json::Value::Null)
}

/// Applies an image's runtime config to a command: its `Env` under the VM's and the
/// request's variables (`req.env` already holds those, the request's winning), and its
/// `WorkingDir` when the request names no `cwd`, and its `User` when the request names no user.
pub fn apply_exec_defaults(store: &Store, storage: &Storage, digest: &str, req: &mut ExecRequest) {
    let config = image_config(store, storage, digest);
    let mut env: BTreeMap<String, String> = image_env(&config);
    env.append(&mut req.env);
    req.env = env;
    if req.cwd.is_none() {
        if let Some(wd) = config.get("WorkingDir").and_then(|w| w.as_str()) {
            if !wd.is_empty() {
                req.cwd = Some(wd.to_owned());
            }
        }
    }
    if req.user.is_none() {
        // OCI allows `user`, `uid`, `user:group` and `uid:gid`; the group part is not applied
        // (the user's primary group from the image's /etc/passwd is).
        if let Some(user) = config.get("User").and_then(|u| u.as_str()) {
            let user = user.split(':').next().unwrap_or_default();
            if !user.is_empty() {
                req.user = Some(user.to_owned());
            }
        }
    }
}

/// The `Env` list of a runtime config as a map (`K=V` entries; later ones win).
pub fn image_env(config: &serde_json::Value) -> BTreeMap<String, String> {
    config
        .get("Env")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A new scratch directory under `images/`, mode 0700 from its creation: unpacked trees and
/// uploads in it are reachable by root only.
pub(crate) fn scratch_dir(storage: &Storage) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let images = storage.images_dir();
    std::fs::create_dir_all(&images)?;
    let p = images.join(format!(".tmp-{}", crate::storage::new_id()));
    std::fs::DirBuilder::new().mode(0o700).create(&p)?;
    // The mode given to mkdir is masked by the umask; 0700 is never widened by it, but set it
    // explicitly so the directory is 0700 whatever the umask was.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
    Ok(p)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| CoreError::Io(std::io::Error::other(e)))?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `sha256:` digest of a directory tree: every entry's relative path, type, mode, link target
/// and content, in sorted order. Symlinks are hashed, never followed.
pub fn tree_digest(dir: &Path) -> Result<String> {
    tree_digest_held(dir, &bandsox_image::unpack::HeldModes::default())
}

/// [`tree_digest`] of a tree whose real modes and owners are partly `held` back from the host:
/// those count instead of the host's.
pub fn tree_digest_held(dir: &Path, held: &bandsox_image::unpack::HeldModes) -> Result<String> {
    let mut h = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    let mut entries = Vec::new();
    while let Some(rel) = stack.pop() {
        let mut children: Vec<_> = std::fs::read_dir(dir.join(&rel))?
            .map(|e| e.map(|e| rel.join(e.file_name())))
            .collect::<std::io::Result<_>>()?;
        children.sort();
        for child in children {
            let meta = std::fs::symlink_metadata(dir.join(&child))?;
            if meta.is_dir() {
                stack.push(child.clone());
            }
            entries.push((child, meta));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut buf = vec![0u8; 64 << 10];
    for (rel, meta) in entries {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        let (mode, uid, gid) = match held.get(&meta) {
            Some(k) => (k.mode, k.uid, k.gid),
            None => (meta.mode(), meta.uid(), meta.gid()),
        };
        h.update(mode.to_le_bytes());
        h.update(uid.to_le_bytes());
        h.update(gid.to_le_bytes());
        if meta.file_type().is_char_device() || meta.file_type().is_block_device() {
            h.update(meta.rdev().to_le_bytes());
        }
        let full = dir.join(&rel);
        if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&full)?.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            h.update(meta.len().to_le_bytes());
            let mut f = std::fs::File::open(&full)?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        h.update([0xff]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_validated() {
        for ok in [
            "bandsox/busybox",
            "python:3.12-slim",
            "localhost:5000/a/b@sha256:00",
        ] {
            validate_reference(ok).unwrap();
        }
        for bad in ["", "a/../b", "a b", "a\0", "x;rm"] {
            assert!(validate_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tree_digest_tracks_content_and_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"one").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("l")).unwrap();
        let a = tree_digest(d.path()).unwrap();
        assert_eq!(a, tree_digest(d.path()).unwrap());
        std::fs::write(d.path().join("f"), b"two").unwrap();
        let b = tree_digest(d.path()).unwrap();
        assert_ne!(a, b);
        std::fs::remove_file(d.path().join("l")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.path().join("l")).unwrap();
        assert_ne!(b, tree_digest(d.path()).unwrap());
    }
}
