//! OCI image layouts and `docker save` archives: finding the manifest, config and layers of
//! one image, checking every digest, and applying the layers in order onto a directory.
//!
//! The unit of work is an [`ImagePlan`]: a verified config plus the layer blobs (files on
//! disk) in order. A plan comes from an OCI layout directory ([`load_dir`], which also reads
//! `docker save` directories), from an archive of either ([`extract_archive`] then
//! [`load_dir`]), or from a registry pull ([`crate::pull`]). [`ImagePlan::apply`] unpacks it.
//!
//! Files inside a layout or archive are opened only through real directories: a symlink
//! anywhere on the way (an archive may carry one to a host path) is refused.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::unpack::{self, Compression, LayerStats};
use crate::util::{sha256_bytes, sha256_file};
use crate::ImageError;

/// OCI image index / Docker manifest list media types.
pub const MEDIA_INDEX: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// OCI image manifest / Docker v2 manifest media types.
pub const MEDIA_MANIFEST: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Image config media types.
pub const MEDIA_CONFIG: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Annotation naming a manifest in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Reports progress of pulls, imports and conversions. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A blob of `total_bytes` starts downloading (or is found cached, then `cached`).
    fn blob_start(&self, _digest: &str, _total_bytes: u64, _cached: bool) {}
    /// `n` more bytes of a blob arrived.
    fn blob_bytes(&self, _digest: &str, _n: u64) {}
    /// A blob is complete and verified.
    fn blob_done(&self, _digest: &str) {}
    /// A new phase begins (`unpacking layer 2/5`, `building disk`, ...).
    fn phase(&self, _message: &str) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// One layer blob on disk, in application order.
#[derive(Debug, Clone)]
pub struct PlannedLayer {
    pub path: PathBuf,
    /// Digest of the blob as stored (`sha256:<hex>`), checked while applying when known.
    pub digest: Option<String>,
    /// Expected digest of the uncompressed tar (from the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub media_type: String,
    pub size_bytes: u64,
}

/// A verified image: config and layers, ready to apply.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// `sha256:<hex>` of the config blob: the image id, and the cache key of its base disk.
    pub config_digest: String,
    /// The parsed config blob.
    pub config: serde_json::Value,
    /// Digest of the manifest, when the image came with one.
    pub manifest_digest: Option<String>,
    pub layers: Vec<PlannedLayer>,
    /// Names the source gave the image (docker `RepoTags`, OCI `ref.name`), if any.
    pub names: Vec<String>,
}

impl ImagePlan {
    /// The runtime part of the config (`Env`, `WorkingDir`, `User`, `Entrypoint`, `Cmd`,
    /// `ExposedPorts`, ...): the config's `config` object, or `{}`.
    pub fn runtime_config(&self) -> serde_json::Value {
        match self.config.get("config") {
            Some(c) if c.is_object() => c.clone(),
            _ => serde_json::json!({}),
        }
    }

    /// Applies every layer in order onto `root` (an empty directory), checking each blob's
    /// digest (when known) and each uncompressed digest against the config's `diff_ids`.
    /// Without limit; what is held back from the host is dropped (see [`Self::apply_with`]).
    pub fn apply(
        &self,
        root: &Path,
        progress: &dyn Progress,
    ) -> Result<Vec<LayerStats>, ImageError> {
        self.apply_with(&mut unpack::Unpacker::default(), root, progress)
    }

    /// [`Self::apply`] through `unpacker`: its size limit applies to the whole image, and its
    /// [`unpack::HeldModes`] hold what the ext4 image must get and the host never does.
    pub fn apply_with(
        &self,
        unpacker: &mut unpack::Unpacker,
        root: &Path,
        progress: &dyn Progress,
    ) -> Result<Vec<LayerStats>, ImageError> {
        let mut all = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            progress.phase(&format!(
                "unpacking layer {}/{} ({})",
                i + 1,
                self.layers.len(),
                short(layer.digest.as_deref().unwrap_or(&layer.diff_id))
            ));
            let stats = unpacker.apply_layer_file(root, &layer.path, layer.digest.as_deref())?;
            if stats.diff_id != layer.diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("uncompressed layer {} (diff_id)", i + 1),
                    expected: layer.diff_id.clone(),
                    actual: stats.diff_id,
                });
            }
            for s in &stats.skipped {
                tracing::warn!(layer = i + 1, "skipped layer entry: {s}");
            }
            all.push(stats);
        }
        Ok(all)
    }
}

/// First 12 hex digits of a digest, for messages.
pub fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Checks a `sha256:<64 lowercase hex>` digest and returns the hex part.
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| {
            ImageError::InvalidArchive(format!(
                "unsupported or malformed digest `{}` (only sha256 is supported)",
                digest.chars().take(100).collect::<String>()
            ))
        })
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Kind of image directory [`load_dir`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    OciLayout,
    DockerSave,
}

/// Loads one image from an OCI layout directory or an extracted `docker save` archive.
/// `name` picks among several images (an OCI `ref.name` annotation — full or just the tag —
/// or a docker `RepoTags` entry); without it the only image (or the linux/amd64 one) is used.
pub fn load_dir(dir: &Path, name: Option<&str>) -> Result<(ImagePlan, DirKind), ImageError> {
    if safe_file(dir, "oci-layout").is_ok() && safe_file(dir, "index.json").is_ok() {
        return Ok((load_oci_layout(dir, name)?, DirKind::OciLayout));
    }
    if safe_file(dir, "manifest.json").is_ok() {
        return Ok((load_docker_save(dir, name)?, DirKind::DockerSave));
    }
    Err(ImageError::InvalidArchive(format!(
        "{} is neither an OCI image layout (oci-layout + index.json) nor a `docker save` \
         archive (manifest.json)",
        dir.display()
    )))
}

/// Extracts an image archive (tar, optionally gzip/zstd-compressed) into `dest` with the same
/// safe unpacker as layers: nothing can land outside `dest`, and no more than `limit_bytes`
/// ([`ImageError::TooLarge`]).
pub fn extract_archive(archive: &Path, dest: &Path, limit_bytes: u64) -> Result<(), ImageError> {
    fs::create_dir_all(dest)
        .map_err(|e| ImageError::io(format!("create {}", dest.display()), e))?;
    let mut unpacker = unpack::Unpacker::with_limit(limit_bytes);
    unpacker
        .apply_layer_file(dest, archive, None)
        .map_err(|e| match e {
            ImageError::CorruptLayer(m) => ImageError::InvalidArchive(format!(
                "{} is not a tar archive: {m}",
                archive.display()
            )),
            e => e,
        })?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, Vec<u8>), ImageError> {
    let bytes =
        fs::read(path).map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
    let v = serde_json::from_slice(&bytes).map_err(|e| {
        ImageError::InvalidArchive(format!("{} is not valid JSON: {e}", path.display()))
    })?;
    Ok((v, bytes))
}

/// `dir/rel` when every component below `dir` is a real directory and the last a regular
/// file: no symlink is ever followed, no `..` accepted.
pub fn safe_file(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let mut path = dir.to_path_buf();
    let comps: Vec<OsString> = Path::new(rel)
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n.to_owned()),
            _ => Err(ImageError::InvalidArchive(format!(
                "path `{rel}` in the archive is not a plain relative path"
            ))),
        })
        .collect::<Result<_, _>>()?;
    if comps.is_empty() {
        return Err(ImageError::InvalidArchive(
            "empty path in the archive".into(),
        ));
    }
    for (i, c) in comps.iter().enumerate() {
        path.push(c);
        let meta = fs::symlink_metadata(&path).map_err(|_| {
            ImageError::InvalidArchive(format!("`{rel}` is missing from the archive"))
        })?;
        let last = i + 1 == comps.len();
        let ok = if last { meta.is_file() } else { meta.is_dir() };
        if !ok {
            return Err(ImageError::InvalidArchive(format!(
                "`{rel}` in the archive is not a regular file reached through directories"
            )));
        }
    }
    Ok(path)
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest_hex(digest)?;
    safe_file(dir, &format!("blobs/sha256/{hex}"))
}

/// Reads a small blob (index, manifest, config) and checks its digest.
fn read_verified(dir: &Path, desc: &Descriptor, what: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(dir, &desc.digest)?;
    let bytes =
        fs::read(&path).map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
    let actual = format!("sha256:{}", sha256_bytes(&bytes));
    if actual != desc.digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn is_amd64(p: &Option<Platform>) -> bool {
    p.as_ref()
        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
}

fn load_oci_layout(dir: &Path, name: Option<&str>) -> Result<ImagePlan, ImageError> {
    let (index, _): (Index, _) = read_json(&safe_file(dir, "index.json")?)?;
    let matches_name = |d: &Descriptor| {
        let Some(want) = name else { return true };
        d.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME_ANNOTATION))
            .is_some_and(|n| n == want || want.rsplit_once(':').is_some_and(|(_, tag)| tag == n))
    };
    let candidates: Vec<&Descriptor> = index.manifests.iter().filter(|d| matches_name(d)).collect();
    let desc = match candidates.as_slice() {
        [] => {
            return Err(ImageError::InvalidArchive(match name {
                Some(n) => format!("no image named `{n}` in the OCI layout"),
                None => "the OCI layout's index.json lists no manifests".into(),
            }))
        }
        [one] => *one,
        many => many
            .iter()
            .find(|d| is_amd64(&d.platform))
            .copied()
            .unwrap_or(many[0]),
    };
    let mut plan = load_oci_manifest(dir, desc, 0)?;
    plan.names = desc
        .annotations
        .as_ref()
        .and_then(|a| a.get(REF_NAME_ANNOTATION))
        .filter(|n| n.contains('/') || n.contains(':'))
        .cloned()
        .into_iter()
        .collect();
    Ok(plan)
}

fn load_oci_manifest(dir: &Path, desc: &Descriptor, depth: usize) -> Result<ImagePlan, ImageError> {
    if depth > 4 {
        return Err(ImageError::InvalidArchive(
            "image indexes nest too deeply".into(),
        ));
    }
    let bytes = read_verified(dir, desc, "manifest")?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::InvalidArchive(format!("manifest is not valid JSON: {e}")))?;
    let media = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or(desc.media_type.as_str())
        .to_owned();
    let is_index = MEDIA_INDEX.contains(&media.as_str())
        || (media.is_empty() && value.get("manifests").is_some());
    if is_index {
        let index: Index = serde_json::from_value(value)
            .map_err(|e| ImageError::InvalidArchive(format!("bad image index: {e}")))?;
        let _ = index.media_type;
        let next = index
            .manifests
            .iter()
            .find(|d| is_amd64(&d.platform))
            .ok_or_else(|| {
                let have: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                ImageError::UnsupportedPlatform(format!("platforms [{}] only", have.join(", ")))
            })?;
        return load_oci_manifest(dir, next, depth + 1);
    }
    if !media.is_empty() && !MEDIA_MANIFEST.contains(&media.as_str()) {
        return Err(ImageError::UnsupportedMediaType(format!(
            "manifest media type `{media}`"
        )));
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| ImageError::InvalidArchive(format!("bad image manifest: {e}")))?;
    let _ = manifest.media_type;
    let config_bytes = read_config_checked(dir, &manifest.config)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| {
            if Compression::from_media_type(&l.media_type).is_none() {
                return Err(ImageError::UnsupportedMediaType(format!(
                    "layer media type `{}`",
                    l.media_type
                )));
            }
            Ok((blob_path(dir, &l.digest)?, l))
        })
        .collect::<Result<Vec<_>, _>>()?;
    plan_from_parts(
        &config_bytes,
        Some(desc.digest.clone()),
        layers
            .into_iter()
            .map(|(path, l)| (path, Some(l.digest.clone()), l.media_type.clone(), l.size))
            .collect(),
    )
}

fn read_config_checked(dir: &Path, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    if !desc.media_type.is_empty() && !MEDIA_CONFIG.contains(&desc.media_type.as_str()) {
        return Err(ImageError::UnsupportedMediaType(format!(
            "config media type `{}` (not a container image)",
            desc.media_type
        )));
    }
    read_verified(dir, desc, "image config")
}

/// Builds a plan from a config blob and the layer files: checks the platform and pairs the
/// layers with the config's `diff_ids`.
pub fn plan_from_parts(
    config_bytes: &[u8],
    manifest_digest: Option<String>,
    layers: Vec<(PathBuf, Option<String>, String, u64)>,
) -> Result<ImagePlan, ImageError> {
    let config: serde_json::Value = serde_json::from_slice(config_bytes)
        .map_err(|e| ImageError::InvalidArchive(format!("image config is not valid JSON: {e}")))?;
    let os = config.get("os").and_then(|v| v.as_str()).unwrap_or("linux");
    let arch = config
        .get("architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("amd64");
    if os != "linux" || arch != "amd64" {
        return Err(ImageError::UnsupportedPlatform(format!("{os}/{arch}")));
    }
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(ImageError::InvalidArchive(format!(
            "the config lists {} layer diff_ids but the manifest has {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    for d in &diff_ids {
        digest_hex(d)?;
    }
    let layers = layers
        .into_iter()
        .zip(diff_ids)
        .map(
            |((path, digest, media_type, size_bytes), diff_id)| PlannedLayer {
                path,
                digest,
                diff_id,
                media_type,
                size_bytes,
            },
        )
        .collect();
    Ok(ImagePlan {
        config_digest: format!("sha256:{}", sha256_bytes(config_bytes)),
        config,
        manifest_digest,
        layers,
        names: Vec::new(),
    })
}

fn load_docker_save(dir: &Path, name: Option<&str>) -> Result<ImagePlan, ImageError> {
    let (entries, _): (Vec<DockerSaveEntry>, _) = read_json(&safe_file(dir, "manifest.json")?)?;
    let entry = match name {
        Some(n) => entries.iter().find(|e| {
            e.repo_tags
                .as_ref()
                .is_some_and(|tags| tags.iter().any(|t| t == n))
        }),
        None => entries.first(),
    }
    .ok_or_else(|| {
        ImageError::InvalidArchive(match name {
            Some(n) => format!("no image tagged `{n}` in the docker archive"),
            None => "the docker archive's manifest.json lists no images".into(),
        })
    })?;
    let config_path = safe_file(dir, &entry.config)?;
    let config_bytes = fs::read(&config_path)
        .map_err(|e| ImageError::io(format!("read {}", config_path.display()), e))?;
    // Config files are named after their digest (`<hex>.json` or `blobs/sha256/<hex>`).
    let stem = Path::new(&entry.config)
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".json").to_owned())
        .unwrap_or_default();
    let actual = sha256_bytes(&config_bytes);
    if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) && stem != actual {
        return Err(ImageError::DigestMismatch {
            what: "image config".into(),
            expected: format!("sha256:{stem}"),
            actual: format!("sha256:{actual}"),
        });
    }
    let layers = entry
        .layers
        .iter()
        .map(|l| {
            let path = safe_file(dir, l)?;
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            Ok((
                path,
                None,
                "application/vnd.docker.image.rootfs.diff.tar".to_owned(),
                size,
            ))
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    let mut plan = plan_from_parts(&config_bytes, None, layers)?;
    plan.names = entry.repo_tags.clone().unwrap_or_default();
    Ok(plan)
}

/// A layer for [`write_layout`]: an uncompressed tar and how to store it.
#[derive(Debug, Clone)]
pub struct LayoutLayer {
    pub tar: Vec<u8>,
    pub compression: Compression,
}

/// Writes a single-image OCI layout at `dir` (used by tests, benchmarks and `scripts/setup`):
/// blobs, manifest, config with the given runtime `config` object, and `index.json` naming
/// the manifest `tag`. Returns the manifest digest.
pub fn write_layout(
    dir: &Path,
    layers: &[LayoutLayer],
    runtime_config: serde_json::Value,
    tag: &str,
) -> Result<String, ImageError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)
        .map_err(|e| ImageError::io(format!("create {}", blobs.display()), e))?;
    let put = |bytes: &[u8]| -> Result<(String, u64), ImageError> {
        let hex = sha256_bytes(bytes);
        let p = blobs.join(&hex);
        fs::write(&p, bytes).map_err(|e| ImageError::io(format!("write {}", p.display()), e))?;
        Ok((format!("sha256:{hex}"), bytes.len() as u64))
    };
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    for l in layers {
        diff_ids.push(format!("sha256:{}", sha256_bytes(&l.tar)));
        let (blob, media) = match l.compression {
            Compression::None => (l.tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&l.tar)
                    .and_then(|()| enc.finish())
                    .map(|b| (b, "application/vnd.oci.image.layer.v1.tar+gzip"))
                    .map_err(|e| ImageError::io("gzip layer", e))?
            }
            Compression::Zstd => (
                zstd::encode_all(l.tar.as_slice(), 3)
                    .map_err(|e| ImageError::io("zstd layer", e))?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let (digest, size) = put(&blob)?;
        layer_descs.push(serde_json::json!({"mediaType": media, "digest": digest, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": runtime_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config)
        .map_err(|e| ImageError::InvalidInput(format!("config: {e}")))?;
    let (config_digest, config_size) = put(&config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| ImageError::InvalidInput(format!("manifest: {e}")))?;
    let (manifest_digest, manifest_size) = put(&manifest_bytes)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {REF_NAME_ANNOTATION: tag},
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    });
    let w = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        fs::write(&p, bytes).map_err(|e| ImageError::io(format!("write {}", p.display()), e))
    };
    w("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    w("index.json", index.to_string().as_bytes())?;
    Ok(manifest_digest)
}

/// Checks a blob file against its digest.
pub fn verify_blob(path: &Path, digest: &str) -> Result<(), ImageError> {
    let hex = digest_hex(digest)?;
    let actual = sha256_file(path)?;
    if actual != hex {
        return Err(ImageError::DigestMismatch {
            what: format!("blob {}", path.display()),
            expected: digest.to_owned(),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(())
}
