//! Applying image layers (tar streams, optionally gzip- or zstd-compressed) onto a root
//! filesystem directory, with OCI whiteouts, and **without ever writing outside it**.
//!
//! Every entry path is cleaned (leading `/` and `./` dropped; entries with `..` components
//! are skipped and reported). Parent directories are resolved component by component with
//! `symlink_metadata`: a symlink that the image itself placed on the way is followed *inside*
//! the root (absolute targets restart at the root, `..` stops at the root), the way the
//! guest will see it — so a layer that ships `etc -> /etc` and then `etc/passwd` writes the
//! image's own `/etc/passwd`, never the host's. The final component is never followed: an
//! existing entry is removed and replaced. Hard-link targets are resolved the same way and
//! must already exist inside the root.
//!
//! Regular files, directories, symlinks, hard links, character and block devices and FIFOs
//! are created with their ownership (numeric uid/gid from the tar header; needs root), but
//! what would be dangerous on the host never materialises there with usable permissions:
//! device nodes and FIFOs are made with mode 0 and owned by root, and setuid, setgid, sticky
//! and world-write bits are stripped from files and directories. The real modes and owners
//! are kept aside in [`HeldModes`] (by host inode) and written into the ext4 image only
//! ([`crate::rootfs::make_ext4_from_tree`]). The unpacked size can be capped
//! ([`Unpacker::with_limit`]). Extended attributes are not applied.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::sys::{mknod, NodeKind};
use crate::ImageError;

/// How deep a chain of in-image symlinks may go while resolving one path.
const MAX_SYMLINK_HOPS: usize = 40;
/// Name of an opaque-directory whiteout.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Prefix of a whiteout entry.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Bytes every entry costs against the unpacked-size limit (an inode and a block), on top of
/// its content.
pub const ENTRY_COST_BYTES: u64 = 4096;
/// Mode bits never given to a file or directory on the host: setuid, setgid, sticky and
/// write-by-others.
const HOST_STRIPPED_BITS: u32 = 0o7002;

/// The real mode (with its file-type bits), owner and group of an entry whose host copy is
/// held back (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Modes and owners of a tree that exist only in its ext4 image, never on the host: keyed by
/// host inode (device, inode number), so hard links share one entry and a replaced entry (a
/// new inode) drops it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldModes {
    by_inode: HashMap<(u64, u64), Held>,
}

impl HeldModes {
    /// Nothing held back.
    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }

    /// Number of inodes held back.
    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    /// What is held back for the host entry `meta`, if anything.
    pub fn get(&self, meta: &fs::Metadata) -> Option<Held> {
        self.by_inode.get(&(meta.dev(), meta.ino())).copied()
    }

    fn set(&mut self, meta: &fs::Metadata, held: Option<Held>) {
        let key = (meta.dev(), meta.ino());
        match held {
            Some(h) => {
                self.by_inode.insert(key, h);
            }
            None => {
                self.by_inode.remove(&key);
            }
        }
    }
}

/// Applies layers one after another onto one tree, keeping what must not reach the host
/// ([`HeldModes`]) and counting the unpacked bytes against a limit.
#[derive(Debug, Clone)]
pub struct Unpacker {
    /// Modes and owners held back from the host tree so far.
    pub held: HeldModes,
    limit_bytes: u64,
    used_bytes: u64,
    /// Strip setuid/setgid/sticky and world-write bits on the host (and hold them back).
    strip_modes: bool,
}

impl Default for Unpacker {
    fn default() -> Self {
        Self::with_limit(u64::MAX)
    }
}

impl Unpacker {
    /// An unpacker that refuses to write more than `limit_bytes` (file contents plus
    /// [`ENTRY_COST_BYTES`] per entry) with [`ImageError::TooLarge`].
    pub fn with_limit(limit_bytes: u64) -> Self {
        Self {
            held: HeldModes::default(),
            limit_bytes,
            used_bytes: 0,
            strip_modes: true,
        }
    }

    /// An unlimited unpacker that gives files and directories their full modes on the host
    /// (setuid included); device nodes and FIFOs are still made mode 0 and owned by root. For
    /// trees inside a private (0700) directory that are read again on the host, such as a
    /// Dockerfile build's context and `FROM scratch` stages.
    pub fn keeping_modes() -> Self {
        Self {
            strip_modes: false,
            ..Self::default()
        }
    }

    /// Bytes counted so far.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// [`apply_layer_file`] through this unpacker.
    pub fn apply_layer_file(
        &mut self,
        root: &Path,
        blob: &Path,
        expect_blob_digest: Option<&str>,
    ) -> Result<LayerStats, ImageError> {
        apply_file_with(self, root, blob, expect_blob_digest)
    }

    /// [`apply_layer`] through this unpacker.
    pub fn apply_layer<R: Read>(
        &mut self,
        root: &Path,
        tar_stream: R,
    ) -> Result<LayerStats, ImageError> {
        apply_with(self, root, tar_stream)
    }

    /// Counts `bytes` against the limit.
    fn charge(&mut self, bytes: u64) -> Result<(), ImageError> {
        self.used_bytes = self.used_bytes.saturating_add(bytes);
        if self.used_bytes > self.limit_bytes {
            return Err(ImageError::TooLarge {
                limit_bytes: self.limit_bytes,
            });
        }
        Ok(())
    }

    /// Bytes that may still be written.
    fn remaining(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.used_bytes)
    }
}

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Compression named by a layer media type, `None` when the media type is not a layer
    /// we can apply.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// Compression recognised from the first bytes of a blob.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// What applying one layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries created or replaced.
    pub entries: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Entries refused, with the reason (`..` components, hard links to missing or outside
    /// targets, unknown entry types).
    pub skipped: Vec<String>,
    /// `sha256:<hex>` of the uncompressed tar stream (the layer's `diff_id`).
    pub diff_id: String,
    /// `sha256:<hex>` of the blob as read (compressed), when it was computed.
    pub blob_digest: Option<String>,
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads the rest of the stream (tar archives end before their padding does) and returns
    /// the digest.
    fn finish(mut self) -> io::Result<(String, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.bytes,
            self.inner,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Applies the layer blob at `blob` onto `root`. The compression is taken from the blob's
/// first bytes. The blob's own digest and its uncompressed digest are returned in the stats
/// so callers can check them against the manifest and the config's `diff_ids`; when
/// `expect_blob_digest` is given it is checked here and a mismatch is an error.
///
/// This is [`Unpacker::keeping_modes`]: nothing is limited, files keep their full modes on the
/// host, device nodes and FIFOs are made mode 0 (their real modes are dropped). Only for a
/// `root` inside a private (0700) directory.
pub fn apply_layer_file(
    root: &Path,
    blob: &Path,
    expect_blob_digest: Option<&str>,
) -> Result<LayerStats, ImageError> {
    Unpacker::keeping_modes().apply_layer_file(root, blob, expect_blob_digest)
}

fn apply_file_with(
    unpacker: &mut Unpacker,
    root: &Path,
    blob: &Path,
    expect_blob_digest: Option<&str>,
) -> Result<LayerStats, ImageError> {
    let f = File::open(blob).map_err(|e| ImageError::io(format!("open {}", blob.display()), e))?;
    let mut raw = BufReader::with_capacity(1 << 20, HashingReader::new(f));
    let head = {
        use std::io::BufRead;
        raw.fill_buf()
            .map_err(|e| ImageError::io(format!("read {}", blob.display()), e))?
            .to_vec()
    };
    let compression = Compression::sniff(&head);
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(&mut raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(&mut raw)
                .map_err(|e| ImageError::io(format!("zstd {}", blob.display()), e))?,
        ),
    };
    let mut stats = apply_with(unpacker, root, decoded).map_err(|e| match e {
        ImageError::Io { context, source } => {
            ImageError::io(format!("{context} (layer {})", blob.display()), source)
        }
        e => e,
    })?;
    // Hash the rest of the compressed blob (trailing bytes after the compressed stream).
    let hashing = raw.into_inner();
    let (digest, _, _) = hashing
        .finish()
        .map_err(|e| ImageError::io(format!("read {}", blob.display()), e))?;
    if let Some(expected) = expect_blob_digest {
        if expected != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("layer {}", blob.display()),
                expected: expected.to_owned(),
                actual: digest,
            });
        }
    }
    stats.blob_digest = Some(digest);
    Ok(stats)
}

/// Applies one uncompressed layer tar stream onto `root` (see the module docs; the same
/// [`Unpacker::keeping_modes`] as [`apply_layer_file`]).
pub fn apply_layer<R: Read>(root: &Path, tar_stream: R) -> Result<LayerStats, ImageError> {
    Unpacker::keeping_modes().apply_layer(root, tar_stream)
}

fn apply_with<R: Read>(
    unpacker: &mut Unpacker,
    root: &Path,
    tar_stream: R,
) -> Result<LayerStats, ImageError> {
    let mut hashing = HashingReader::new(tar_stream);
    let mut stats = LayerStats::default();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut applier = Applier {
            root,
            created: HashSet::new(),
            parent_cache: None,
            unpacker,
        };
        let entries = archive
            .entries()
            .map_err(|e| ImageError::io("read layer", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ImageError::CorruptLayer(e.to_string()))?;
            applier.entry(&mut entry, &mut stats)?;
        }
    }
    let (diff_id, _, _) = hashing
        .finish()
        .map_err(|e| ImageError::CorruptLayer(e.to_string()))?;
    stats.diff_id = diff_id;
    Ok(stats)
}

/// Cleans a tar path into plain components. `None` when it contains `..` or nothing.
fn clean_components(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

struct Applier<'a> {
    root: &'a Path,
    /// Paths (relative, cleaned) created by this layer: an opaque whiteout keeps them.
    created: HashSet<PathBuf>,
    /// Last resolved parent: (components as written in the tar, real path).
    parent_cache: Option<(Vec<OsString>, PathBuf)>,
    unpacker: &'a mut Unpacker,
}

impl Applier<'_> {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        stats: &mut LayerStats,
    ) -> Result<(), ImageError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let Some(mut comps) = clean_components(&raw_path) else {
            stats.skipped.push(format!("{shown}: path contains `..`"));
            return Ok(());
        };
        let Some(name) = comps.pop() else {
            // The root itself (`./`): apply its mode and owner.
            if entry.header().entry_type().is_dir() {
                let header = entry.header().clone();
                self.set_meta(self.root, &header)?;
            }
            return Ok(());
        };
        let kind = entry.header().entry_type();
        let name_str = name.to_string_lossy();

        // Whiteouts.
        if name_str == OPAQUE_WHITEOUT {
            let Some(dir) = self.resolve_dir(&comps, false)? else {
                return Ok(());
            };
            self.parent_cache = None;
            let rel: PathBuf = comps.iter().collect();
            for child in fs::read_dir(&dir).map_err(|e| io_at("read", &dir, e))? {
                let child = child.map_err(|e| io_at("read", &dir, e))?;
                if !self.created.contains(&rel.join(child.file_name())) {
                    remove_any(&child.path())?;
                }
            }
            stats.whiteouts += 1;
            return Ok(());
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(".wh.") || hidden.is_empty() || hidden == "." || hidden == ".." {
                // AUFS metadata (`.wh..wh.plnk`, ...) or nonsense: nothing to apply.
                return Ok(());
            }
            if let Some(dir) = self.resolve_dir(&comps, false)? {
                self.parent_cache = None;
                remove_any(&dir.join(hidden))?;
            }
            stats.whiteouts += 1;
            return Ok(());
        }

        let parent = self.resolve_parent(&comps)?;
        let target = parent.join(&name);
        let rel: PathBuf = comps.iter().chain(std::iter::once(&name)).collect();
        let header = entry.header().clone();
        let existing = fs::symlink_metadata(&target).ok();

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match &existing {
                    Some(m) if m.is_dir() => {}
                    Some(_) => {
                        self.parent_cache = None;
                        remove_any(&target)?;
                        fs::create_dir(&target).map_err(|e| io_at("mkdir", &target, e))?;
                    }
                    None => fs::create_dir(&target).map_err(|e| io_at("mkdir", &target, e))?,
                }
                self.unpacker.charge(ENTRY_COST_BYTES)?;
                self.set_meta(&target, &header)?;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear(&target, existing.as_ref())?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(|e| io_at("create", &target, e))?;
                self.unpacker.charge(ENTRY_COST_BYTES)?;
                let room = self.unpacker.remaining();
                let written = io::copy(&mut entry.take(room.saturating_add(1)), &mut f)
                    .map_err(|e| io_at("write", &target, e))?;
                self.unpacker.charge(written)?;
                if let Ok(mtime) = header.mtime() {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = f.set_modified(t);
                }
                drop(f);
                self.set_meta(&target, &header)?;
            }
            T::Symlink => {
                let Some(link) = entry.link_name_bytes() else {
                    stats
                        .skipped
                        .push(format!("{shown}: symlink without target"));
                    return Ok(());
                };
                self.clear(&target, existing.as_ref())?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(|e| io_at("symlink", &target, e))?;
                self.unpacker.charge(ENTRY_COST_BYTES)?;
                let (uid, gid) = header_owner(&header);
                lchown(&target, uid, gid).map_err(|e| io_at("chown", &target, e))?;
                let meta = fs::symlink_metadata(&target).map_err(|e| io_at("stat", &target, e))?;
                self.unpacker.held.set(&meta, None);
            }
            T::Link => {
                let link = entry.link_name_bytes().map(|l| l.into_owned());
                let Some(mut link_comps) = link.as_deref().and_then(clean_components) else {
                    stats.skipped.push(format!(
                        "{shown}: hard link target missing or contains `..`"
                    ));
                    return Ok(());
                };
                let Some(link_name) = link_comps.pop() else {
                    stats
                        .skipped
                        .push(format!("{shown}: hard link to the root"));
                    return Ok(());
                };
                let Some(link_dir) = self.resolve_dir(&link_comps, false)? else {
                    stats
                        .skipped
                        .push(format!("{shown}: hard link target does not exist"));
                    return Ok(());
                };
                let source = link_dir.join(&link_name);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        stats.skipped.push(format!(
                            "{shown}: hard link target is missing or a directory"
                        ));
                        return Ok(());
                    }
                }
                if source == target {
                    return Ok(());
                }
                self.clear(&target, existing.as_ref())?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink source is linked itself, never
                // followed.
                fs::hard_link(&source, &target).map_err(|e| io_at("link", &target, e))?;
            }
            T::Char | T::Block | T::Fifo => {
                let node = match kind {
                    T::Char => NodeKind::Char,
                    T::Block => NodeKind::Block,
                    _ => NodeKind::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                self.clear(&target, existing.as_ref())?;
                self.unpacker.charge(ENTRY_COST_BYTES)?;
                // Mode 0 and owned by root on the host: nobody can open it here. Its real mode
                // and owner go into the ext4 image only.
                mknod(&target, node, 0, major, minor).map_err(|e| io_at("mknod", &target, e))?;
                lchown(&target, Some(0), Some(0)).map_err(|e| io_at("chown", &target, e))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o000))
                    .map_err(|e| io_at("chmod", &target, e))?;
                let meta = fs::symlink_metadata(&target).map_err(|e| io_at("stat", &target, e))?;
                let (uid, gid) = header_owner(&header);
                let type_bits = meta.mode() & libc::S_IFMT;
                self.unpacker.held.set(
                    &meta,
                    Some(Held {
                        mode: type_bits | (header.mode().unwrap_or(0o644) & 0o7777),
                        uid: uid.unwrap_or(0),
                        gid: gid.unwrap_or(0),
                    }),
                );
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => {
                stats
                    .skipped
                    .push(format!("{shown}: unsupported entry type {other:?}"));
                return Ok(());
            }
        }
        self.created.insert(rel);
        stats.entries += 1;
        Ok(())
    }

    /// Gives a file or directory the header's owner and its mode without the bits the host
    /// never gets ([`HOST_STRIPPED_BITS`]); the real mode is held back when they differ. Mode
    /// after owner, because `chown` clears setuid/setgid bits.
    fn set_meta(&mut self, path: &Path, header: &tar::Header) -> Result<(), ImageError> {
        let (uid, gid) = header_owner(header);
        lchown(path, uid, gid).map_err(|e| io_at("chown", path, e))?;
        let mode = header.mode().ok().map(|m| m & 0o7777);
        let stripped = if self.unpacker.strip_modes {
            HOST_STRIPPED_BITS
        } else {
            0
        };
        if let Some(mode) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & !stripped))
                .map_err(|e| io_at("chmod", path, e))?;
        }
        let meta = fs::symlink_metadata(path).map_err(|e| io_at("stat", path, e))?;
        let held = mode.filter(|m| m & stripped != 0).map(|m| Held {
            mode: (meta.mode() & libc::S_IFMT) | m,
            uid: meta.uid(),
            gid: meta.gid(),
        });
        self.unpacker.held.set(&meta, held);
        Ok(())
    }

    /// Forgets anything held back for a directory the unpacker just made itself.
    fn fresh_dir(&mut self, path: &Path) -> Result<(), ImageError> {
        let meta = fs::symlink_metadata(path).map_err(|e| io_at("stat", path, e))?;
        self.unpacker.held.set(&meta, None);
        Ok(())
    }

    /// Removes whatever is at `target` (never following it) so a new entry can take its place.
    fn clear(&mut self, target: &Path, existing: Option<&fs::Metadata>) -> Result<(), ImageError> {
        if let Some(m) = existing {
            if !m.is_file() {
                // A directory or symlink may be part of the cached parent path.
                self.parent_cache = None;
            }
            if m.nlink() <= 1 {
                // Its inode is gone with it (entries a reused inode number gets are set anew).
                self.unpacker.held.set(m, None);
            }
            remove_any(target)?;
        }
        Ok(())
    }

    /// The real directory for the parent components of an entry, creating missing
    /// directories (mode 0755) on the way.
    fn resolve_parent(&mut self, comps: &[OsString]) -> Result<PathBuf, ImageError> {
        if let Some((key, real)) = &self.parent_cache {
            if key.as_slice() == comps {
                return Ok(real.clone());
            }
        }
        let real = self.resolve_dir(comps, true)?.ok_or_else(|| {
            ImageError::CorruptLayer("parent directory could not be created".into())
        })?;
        self.parent_cache = Some((comps.to_vec(), real.clone()));
        Ok(real)
    }

    /// Resolves `comps` to a real directory under the root, following symlinks found in the
    /// tree but never leaving the root. With `create`, missing directories are made and
    /// non-directories in the way replaced; without it, `None` when something is missing.
    fn resolve_dir(
        &mut self,
        comps: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, ImageError> {
        let mut current: Vec<OsString> = Vec::new();
        let mut pending: std::collections::VecDeque<OsString> = comps.iter().cloned().collect();
        let mut hops = 0usize;
        while let Some(c) = pending.pop_front() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                current.pop();
                continue;
            }
            let path: PathBuf = std::iter::once(self.root.as_os_str())
                .chain(current.iter().map(OsString::as_os_str))
                .chain(std::iter::once(c.as_os_str()))
                .collect();
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => current.push(c),
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ImageError::CorruptLayer(format!(
                            "too many levels of symlinks resolving {}",
                            path.display()
                        )));
                    }
                    let link = fs::read_link(&path).map_err(|e| io_at("readlink", &path, e))?;
                    if link.is_absolute() {
                        current.clear();
                    }
                    let mut parts: Vec<OsString> = link
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(n) => Some(n.to_owned()),
                            Component::ParentDir => Some(OsString::from("..")),
                            _ => None,
                        })
                        .collect();
                    parts.extend(pending.drain(..));
                    pending = parts.into();
                }
                Ok(_) if create => {
                    // A file where a directory is needed: the directory wins.
                    self.parent_cache = None;
                    remove_any(&path)?;
                    fs::create_dir(&path).map_err(|e| io_at("mkdir", &path, e))?;
                    self.fresh_dir(&path)?;
                    current.push(c);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&path).map_err(|e| io_at("mkdir", &path, e))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(|e| io_at("chmod", &path, e))?;
                    self.fresh_dir(&path)?;
                    current.push(c);
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_at("stat", &path, e)),
            }
        }
        Ok(Some(
            std::iter::once(self.root.as_os_str())
                .chain(current.iter().map(OsString::as_os_str))
                .collect(),
        ))
    }
}

/// Removes a file, symlink, special file or directory tree at `path`, never following a
/// symlink. Missing is fine.
fn remove_any(path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| io_at("remove", path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| io_at("remove", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at("stat", path, e)),
    }
}

/// The header's numeric owner and group (each `None` when unreadable).
fn header_owner(header: &tar::Header) -> (Option<u32>, Option<u32>) {
    let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
    let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
    (uid, gid)
}

fn io_at(what: &str, path: &Path, e: io::Error) -> ImageError {
    ImageError::io(format!("{what} {}", path.display()), e)
}
