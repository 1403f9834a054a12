//! Pulling images from OCI registries (Docker Hub, any registry, plain-HTTP local ones) with
//! the `oci-client` crate into a content-addressed blob directory.
//!
//! References are normalised the Docker way (`python:3.12-slim` →
//! `docker.io/library/python:3.12-slim`). An image index resolves to its `linux/amd64`
//! manifest. Every blob is checked against its digest while it is written (and the layers
//! again while they are applied); a blob is stored under `<blobs>/sha256/<hex>` only once
//! verified, so the blob directory never holds partial or corrupt content, and a blob already
//! there is never downloaded again (layers are shared between images).
//!
//! Registries on `localhost`, `127.0.0.1` and `[::1]` are spoken to over plain HTTP, as are
//! the ones listed in [`PullOptions::insecure_registries`]. Credentials come from
//! [`PullOptions::credentials`], else from `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json` (`auths` entries; credential helpers are not run).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWrite;

use crate::oci::{self, digest_hex, ImagePlan, Progress, MEDIA_CONFIG};
use crate::unpack::Compression;
use crate::util::sha256_bytes;
use crate::ImageError;

/// Layers downloaded at once.
const PARALLEL_BLOBS: usize = 3;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP, besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Username and password; `None` reads the Docker config file.
    pub credentials: Option<(String, String)>,
    /// Docker config file; `None` means `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

/// Parses and normalises a reference: `alpine` → `docker.io/library/alpine:latest`.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    parse(reference).map(|r| r.whole())
}

fn parse(reference: &str) -> Result<Reference, ImageError> {
    Reference::from_str(reference).map_err(|e| {
        ImageError::InvalidInput(format!(
            "`{}` is not an image reference: {e}",
            reference.chars().take(100).collect::<String>()
        ))
    })
}

/// Whether `registry` (`host[:port]`) is spoken to over plain HTTP.
pub fn is_insecure(registry: &str, extra: &[String]) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
        || extra.iter().any(|r| r == registry || r == host)
}

/// Where a blob lives in the blob directory.
pub fn blob_path(blobs_dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    Ok(blobs_dir.join("sha256").join(digest_hex(digest)?))
}

/// Pulls the manifest, config and layers of `reference` into `blobs_dir` and returns the
/// plan to apply. Blobs already present are not downloaded again.
pub async fn pull(
    reference: &str,
    blobs_dir: &Path,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<ImagePlan, ImageError> {
    let r = parse(reference)?;
    let whole = r.whole();
    let registry = r.resolve_registry().to_owned();
    let protocol = if is_insecure(&registry, &opts.insecure_registries) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let auth = credentials(&r, opts);
    let errs = |e| map_error(e, &whole, &registry);

    progress.phase(&format!("resolving {whole}"));
    let (manifest, manifest_digest) = client.pull_image_manifest(&r, &auth).await.map_err(errs)?;
    let config_media = manifest.config.media_type.as_str();
    if !config_media.is_empty() && !MEDIA_CONFIG.contains(&config_media) {
        return Err(ImageError::UnsupportedMediaType(format!(
            "config media type `{config_media}` (not a container image)"
        )));
    }
    for l in &manifest.layers {
        if Compression::from_media_type(&l.media_type).is_none() {
            return Err(ImageError::UnsupportedMediaType(format!(
                "layer media type `{}`",
                l.media_type
            )));
        }
        digest_hex(&l.digest)?;
    }

    let mut config_bytes = Vec::new();
    client
        .pull_blob(&r, &manifest.config, &mut config_bytes)
        .await
        .map_err(errs)?;
    let actual = format!("sha256:{}", sha256_bytes(&config_bytes));
    if actual != manifest.config.digest {
        return Err(ImageError::DigestMismatch {
            what: "image config".into(),
            expected: manifest.config.digest.clone(),
            actual,
        });
    }

    let dir = blobs_dir.join("sha256");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
    // Futures built in a loop rather than a closure: a closure over a borrowed descriptor
    // makes the whole pull future not `Send` for every lifetime (an async handler needs that).
    let mut fetches = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        fetches.push(fetch_blob(&client, &r, layer, blobs_dir, progress.clone()));
    }
    let paths: Vec<PathBuf> = futures_util::stream::iter(fetches)
        .buffered(PARALLEL_BLOBS)
        .try_collect()
        .await
        .map_err(|e| match e {
            FetchError::Oci(e) => errs(e),
            FetchError::Image(e) => e,
        })?;

    oci::plan_from_parts(
        &config_bytes,
        Some(manifest_digest),
        manifest
            .layers
            .iter()
            .zip(paths)
            .map(|(l, p)| {
                (
                    p,
                    Some(l.digest.clone()),
                    l.media_type.clone(),
                    u64::try_from(l.size).unwrap_or(0),
                )
            })
            .collect(),
    )
}

enum FetchError {
    Oci(OciDistributionError),
    Image(ImageError),
}

/// Downloads one blob to its place in the blob directory unless it is already there.
async fn fetch_blob(
    client: &Client,
    r: &Reference,
    layer: &OciDescriptor,
    blobs_dir: &Path,
    progress: Arc<dyn Progress>,
) -> Result<PathBuf, FetchError> {
    let dest = blob_path(blobs_dir, &layer.digest).map_err(FetchError::Image)?;
    let total = u64::try_from(layer.size).unwrap_or(0);
    if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_file()) {
        progress.blob_start(&layer.digest, total, true);
        progress.blob_done(&layer.digest);
        return Ok(dest);
    }
    progress.blob_start(&layer.digest, total, false);
    let tmp = dest.with_extension(format!("part-{}", std::process::id() ^ rand_u32()));
    let file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| FetchError::Image(ImageError::io(format!("create {}", tmp.display()), e)))?;
    let mut writer = CountingWriter {
        inner: tokio::io::BufWriter::with_capacity(1 << 20, file),
        progress: progress.clone(),
        digest: layer.digest.clone(),
    };
    // oci-client checks the content against the layer digest (and the registry's
    // Docker-Content-Digest header) before returning Ok.
    let result = client.pull_blob(r, layer, &mut writer).await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(FetchError::Oci(e));
    }
    let finish = async {
        use tokio::io::AsyncWriteExt;
        writer.inner.flush().await?;
        writer.inner.get_ref().sync_data().await?;
        tokio::fs::rename(&tmp, &dest).await
    };
    if let Err(e) = finish.await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(FetchError::Image(ImageError::io(
            format!("store blob {}", dest.display()),
            e,
        )));
    }
    progress.blob_done(&layer.digest);
    Ok(dest)
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Forwards writes and reports their sizes.
struct CountingWriter<W> {
    inner: W,
    progress: Arc<dyn Progress>,
    digest: String,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.progress.blob_bytes(&self.digest, *n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Credentials for the reference's registry: explicit ones, else the Docker config file.
fn credentials(r: &Reference, opts: &PullOptions) -> RegistryAuth {
    if let Some((u, p)) = &opts.credentials {
        return RegistryAuth::Basic(u.clone(), p.clone());
    }
    let path = opts.docker_config.clone().or_else(|| {
        std::env::var_os("DOCKER_CONFIG")
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
            })
    });
    let Some(path) = path else {
        return RegistryAuth::Anonymous;
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return RegistryAuth::Anonymous;
    };
    docker_config_auth(&text, r.registry()).unwrap_or(RegistryAuth::Anonymous)
}

/// Looks `registry` up in a Docker `config.json`'s `auths`.
pub fn docker_config_auth(config_json: &str, registry: &str) -> Option<RegistryAuth> {
    let v: serde_json::Value = serde_json::from_str(config_json).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let mut keys = vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" || registry == "index.docker.io" {
        keys.extend([
            "https://index.docker.io/v1/".to_owned(),
            "index.docker.io".to_owned(),
            "docker.io".to_owned(),
        ]);
    }
    let entry = keys
        .iter()
        .find_map(|k| auths.get(k).or_else(|| auths.get(&format!("{k}/"))))?;
    if let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (u, p) = text.split_once(':')?;
        return Some(RegistryAuth::Basic(u.to_owned(), p.to_owned()));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some(RegistryAuth::Basic(u.to_owned(), p.to_owned()))
}

/// Turns an `oci-client` error into one of ours with a stable meaning.
fn map_error(e: OciDistributionError, reference: &str, registry: &str) -> ImageError {
    use OciDistributionError as E;
    let unreachable = |detail: String| ImageError::RegistryUnreachable {
        registry: registry.to_owned(),
        detail,
    };
    let auth = |detail: String| ImageError::RegistryAuth {
        registry: registry.to_owned(),
        detail,
    };
    let not_found = |detail: String| ImageError::NotInRegistry {
        reference: reference.to_owned(),
        detail,
    };
    match e {
        E::RequestError(re) => {
            let mut detail = re.to_string();
            let mut src = std::error::Error::source(&re);
            while let Some(s) = src {
                detail.push_str(": ");
                detail.push_str(&s.to_string());
                src = s.source();
            }
            unreachable(detail)
        }
        E::AuthenticationFailure(d) => auth(d),
        E::UnauthorizedError { url } => auth(format!("unauthorized at {url}")),
        E::ImageManifestNotFoundError(d) => {
            if d.contains("platform") {
                ImageError::UnsupportedPlatform(
                    "a multi-platform image without a linux/amd64 variant".into(),
                )
            } else {
                not_found(d)
            }
        }
        E::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = format!("{envelope} ({url})");
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                auth(detail)
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found(detail)
            } else {
                ImageError::Registry(detail)
            }
        }
        E::ServerError { code: 404, url, .. } => not_found(format!("404 at {url}")),
        E::ServerError {
            code: 401 | 403,
            url,
            ..
        } => auth(format!("denied at {url}")),
        E::DigestError(d) => ImageError::DigestMismatch {
            what: format!("a blob of {reference}"),
            expected: String::new(),
            actual: d.to_string(),
        },
        E::UnsupportedMediaTypeError(m) | E::IncompatibleLayerMediaTypeError(m) => {
            ImageError::UnsupportedMediaType(m)
        }
        E::ManifestParsingError(m) | E::VersionedParsingError(m) => {
            ImageError::UnsupportedMediaType(format!("manifest: {m}"))
        }
        E::UnsupportedSchemaVersionError(v) => {
            ImageError::UnsupportedMediaType(format!("manifest schema version {v}"))
        }
        other => ImageError::Registry(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_like_docker() {
        assert_eq!(
            normalize_reference("python:3.12-slim").unwrap(),
            "docker.io/library/python:3.12-slim"
        );
        assert_eq!(
            normalize_reference("alpine").unwrap(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            normalize_reference("localhost:5000/a/b:t").unwrap(),
            "localhost:5000/a/b:t"
        );
        assert!(normalize_reference("library/UPPER").is_err());
        assert!(normalize_reference("a//b").is_err());
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("127.0.0.1:40000", &[]));
        assert!(is_insecure("[::1]:5000", &[]));
        assert!(!is_insecure("registry.example.com", &[]));
        assert!(is_insecure(
            "registry.example.com:5000",
            &["registry.example.com:5000".into()]
        ));
    }

    #[test]
    fn docker_config_auths_are_read() {
        let cfg = r#"{"auths":{"reg.example:5000":{"auth":"dXNlcjpwYXNz"},
                      "https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#;
        match docker_config_auth(cfg, "reg.example:5000") {
            Some(RegistryAuth::Basic(u, p)) => {
                assert_eq!((u.as_str(), p.as_str()), ("user", "pass"))
            }
            other => panic!("{other:?}"),
        }
        match docker_config_auth(cfg, "docker.io") {
            Some(RegistryAuth::Basic(u, p)) => assert_eq!((u.as_str(), p.as_str()), ("u", "p")),
            other => panic!("{other:?}"),
        }
        assert!(docker_config_auth(cfg, "other").is_none());
    }
}
