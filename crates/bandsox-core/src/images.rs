//! The image cache: base disks by digest, references in the database.
//!
//! An image is a read-only ext4 file at `images/<digest hex>/rootfs.ext4` plus its config
//! (env, working dir, user, ...). Every VM of an image shares that file; VM creation never
//! copies it.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::storage::Storage;
use crate::store::{now, ImageRecord, Store};

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
    validate_reference(reference)?;
    let digest = tree_digest(dir)?;
    let image_dir = storage.image_dir(&digest)?;
    let disk = image_dir.join("rootfs.ext4");
    let size_bytes = if disk.is_file() {
        disk.metadata()?.len()
    } else {
        std::fs::create_dir_all(&image_dir)?;
        let tmp = image_dir.join("rootfs.ext4.tmp");
        let built = bandsox_image::rootfs::make_ext4_from_dir(dir, &tmp, "bandsox-root");
        let size = match built {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&image_dir);
                return Err(e.into());
            }
        };
        std::fs::rename(&tmp, &disk)?;
        size
    };
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

/// `sha256:` digest of a directory tree: every entry's relative path, type, mode, link target
/// and content, in sorted order. Symlinks are hashed, never followed.
pub fn tree_digest(dir: &Path) -> Result<String> {
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
        use std::os::unix::fs::MetadataExt;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(meta.mode().to_le_bytes());
        h.update(meta.uid().to_le_bytes());
        h.update(meta.gid().to_le_bytes());
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
