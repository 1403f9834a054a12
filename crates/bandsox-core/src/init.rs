//! `bandsox init`: the storage layout, the database, the guest kernel and initramfs, the
//! default offline image and (BandSox's `--rootfs-url`) a base image from an ext4 file.
//! Idempotent: a second run changes nothing unless forced.

use std::path::{Path, PathBuf};

use bandsox_image::assets::{install_kernel_assets, InitOptions, InitReport, KernelSource};

use crate::error::{CoreError, Result};
use crate::images::{self, DEFAULT_IMAGE};
use crate::storage::Storage;
use crate::store::Store;

/// The image an ext4 root filesystem given to `init` becomes (BandSox's name for it).
pub const BASE_IMAGE: &str = "bandsox-base";

/// Where `scripts/setup` puts the Debian kernel package.
pub const KERNEL_DEB_CACHE: &str = "/var/cache/bandsox";

/// Inputs of [`initialise`].
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub storage: Storage,
    /// `None`: the newest `linux-image-*.deb` in `BANDSOX_KERNEL_DEB` or [`KERNEL_DEB_CACHE`].
    pub kernel: Option<KernelSource>,
    pub agent_bin: PathBuf,
    /// Static busybox for the default image; `None` skips the image.
    pub busybox: Option<PathBuf>,
    /// Leave the kernel and initramfs as they are (or absent).
    pub skip_kernel: bool,
    /// An ext4 root filesystem to import as [`BASE_IMAGE`].
    pub rootfs: Option<PathBuf>,
    pub force: bool,
}

/// What [`initialise`] did.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// `None` with `skip_kernel`.
    pub kernel: Option<InitReport>,
    /// The default image, and whether it was (re)built.
    pub default_image: Option<(crate::store::ImageRecord, bool)>,
    /// The image made of `rootfs`, and whether it was (re)built.
    pub base_image: Option<(crate::store::ImageRecord, bool)>,
    /// What was found wrong and repaired (a re-pointed or changed default image).
    pub warnings: Vec<String>,
}

/// Prepares a storage root so VMs can be created.
pub fn initialise(req: &InitRequest) -> Result<InitOutcome> {
    let _lock = req.storage.lock("init")?;
    req.storage.create_layout()?;
    let store = Store::open(&req.storage.db_path())?;
    let report = if req.skip_kernel {
        None
    } else {
        let kernel = match &req.kernel {
            Some(k) => k.clone(),
            None => KernelSource::Deb(find_kernel_deb()?),
        };
        Some(install_kernel_assets(&InitOptions {
            storage: req.storage.root().to_path_buf(),
            kernel,
            agent_bin: req.agent_bin.clone(),
            force: req.force,
        })?)
    };
    let mut warnings = Vec::new();
    let default_image = match &req.busybox {
        None => None,
        Some(busybox) => Some(import_busybox(
            &store,
            &req.storage,
            busybox,
            req.force,
            &mut warnings,
        )?),
    };
    let base_image = match &req.rootfs {
        None => None,
        Some(ext4) => Some(import_ext4(&store, &req.storage, ext4, req.force)?),
    };
    Ok(InitOutcome {
        kernel: report,
        default_image,
        base_image,
        warnings,
    })
}

/// Imports the tree of ext4 image `ext4` as [`BASE_IMAGE`]: read with `debugfs` (no mount),
/// recorded like `image import-dir`. Kept unless `force`.
fn import_ext4(
    store: &Store,
    storage: &Storage,
    ext4: &Path,
    force: bool,
) -> Result<(crate::store::ImageRecord, bool)> {
    if !force {
        if let Ok(existing) = images::resolve(store, storage, BASE_IMAGE) {
            return Ok((existing.record, false));
        }
    }
    let scratch = tempdir_in(&storage.images_dir())?;
    let tmp = tree_root_in(&scratch)?;
    let result = (|| {
        let out = std::process::Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump / {}", tmp.display()))
            .arg(ext4)
            .output()
            .map_err(|e| CoreError::InvalidInput(format!("cannot run debugfs (e2fsprogs): {e}")))?;
        let _ = std::fs::remove_dir(tmp.join("lost+found"));
        let empty = std::fs::read_dir(&tmp)?.next().is_none();
        if !out.status.success() || empty {
            return Err(CoreError::InvalidInput(format!(
                "{} is not an ext4 root filesystem: {}",
                ext4.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .filter(|l| !l.starts_with("debugfs "))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let config = serde_json::json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "Cmd": ["/bin/sh"],
        });
        images::import_dir(store, storage, BASE_IMAGE, &tmp, config)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok((result?, true))
}

/// Builds the default image's tree and checks [`DEFAULT_IMAGE`] against it: kept when the
/// reference names exactly that tree (its digest) and its base disk is the file recorded
/// when it was built; otherwise (re-pointed to another image, disk changed, or `force`)
/// rebuilt and re-pointed, with a warning for what was wrong.
fn import_busybox(
    store: &Store,
    storage: &Storage,
    busybox: &Path,
    force: bool,
    warnings: &mut Vec<String>,
) -> Result<(crate::store::ImageRecord, bool)> {
    let scratch = tempdir_in(&storage.images_dir())?;
    let tmp = tree_root_in(&scratch)?;
    let result = (|| {
        bandsox_image::rootfs::build_busybox_rootfs(busybox, &tmp)?;
        let expected = images::tree_digest(&tmp)?;
        let existing = images::resolve(store, storage, DEFAULT_IMAGE).ok();
        if let Some(existing) = &existing {
            if existing.record.digest != expected {
                warnings.push(format!(
                    "image {DEFAULT_IMAGE} pointed at {}, not the image init builds ({expected}); re-pointed",
                    existing.record.digest
                ));
            }
        }
        // The base disk of the expected tree, if one exists, must be the one built for it.
        if storage.image_dir(&expected)?.join("rootfs.ext4").is_file()
            && !images::verify_disk(storage, &expected)?
        {
            warnings.push(format!(
                "the base disk of {DEFAULT_IMAGE} ({expected}) changed since it was built; rebuilt"
            ));
            images::discard_disk(storage, &expected)?;
        } else if !force {
            if let Some(existing) = existing.filter(|e| e.record.digest == expected) {
                return Ok((existing.record, false));
            }
        }
        let config = serde_json::json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "Cmd": ["/bin/sh"],
        });
        let rec = images::import_dir(store, storage, DEFAULT_IMAGE, &tmp, config)?;
        images::record_disk_digest(storage, &rec.digest)?;
        Ok((rec, true))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// `scratch/root`, mode 0755: the root directory of an image tree (its mode becomes the
/// guest's `/`), inside a 0700 scratch directory.
fn tree_root_in(scratch: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let p = scratch.join("root");
    std::fs::create_dir(&p)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(p)
}

/// A new 0700 scratch directory under `parent`.
fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::create_dir_all(parent)?;
    let p = parent.join(format!(".tmp-{}", crate::storage::new_id()));
    std::fs::DirBuilder::new().mode(0o700).create(&p)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
    Ok(p)
}

/// The newest Debian kernel package in `BANDSOX_KERNEL_DEB` (a file or directory) or the cache.
pub fn find_kernel_deb() -> Result<PathBuf> {
    let place = bandsox_config::get_os(bandsox_config::KERNEL_DEB)
        .map_or_else(|| PathBuf::from(KERNEL_DEB_CACHE), PathBuf::from);
    if place.is_file() {
        return Ok(place);
    }
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&place)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("linux-image-") && n.ends_with(".deb"))
                })
                .collect()
        })
        .unwrap_or_default();
    debs.sort();
    debs.pop().ok_or_else(|| {
        CoreError::NotInitialised(format!(
            "no Debian kernel package (linux-image-*-cloud-amd64 .deb) in {}; run scripts/setup, or pass --kernel-deb or --kernel",
            place.display()
        ))
    })
}
