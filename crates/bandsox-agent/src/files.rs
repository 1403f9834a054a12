//! The file operations. Paths must be absolute (see docs/AGENT.md); file bytes travel as `Data`
//! frames in both directions under the stream's flow-control window, so neither side ever holds
//! a whole file in memory. Replacing writes go to a temporary file in the same directory that is
//! renamed over the target only when all bytes arrived: a failed or cancelled write changes
//! nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bandsox_protocol::frame::BULK_CHUNK_LEN;
use bandsox_protocol::{
    Channel, ErrorBody, ErrorCode, FileEntry, FileReadRequest, FileReadTextRequest,
    FileWriteBatchRequest, FileWriteRequest, Reply, ReplyBody,
};

use crate::server::{Handler, StdinCredit, StdinMsg};
use crate::sys;

/// Most entries one `FileList` reply carries.
pub const MAX_LIST_ENTRIES: usize = 20_000;
/// Default and largest `max_bytes` of a text read (a reply is one JSON frame).
pub const MAX_TEXT_BYTES: u64 = 2 << 20;
/// Largest file `FileEdit` loads.
pub const MAX_EDIT_BYTES: u64 = 64 << 20;

/// Page size of the guest (x86_64): file mappings start at a multiple of it.
const PAGE_SIZE: u64 = 4096;

/// How much of a file a download maps at a time (pre-faulted in one go).
pub const MAP_WINDOW_BYTES: u64 = 8 << 20;

type OpResult = Result<ReplyBody, ErrorBody>;

fn reply(r: OpResult) -> Reply {
    match r {
        Ok(b) => Reply::Ok(b),
        Err(e) => Reply::Error(e),
    }
}

/// Checks the path rule: absolute, non-empty, no NUL. `..` is allowed (the guest is the
/// user's); the path is used as given.
pub fn check_path(p: &str) -> Result<PathBuf, ErrorBody> {
    if p.is_empty() || p.contains('\0') || !p.starts_with('/') {
        return Err(ErrorBody::new(
            ErrorCode::InvalidPath,
            format!(
                "path `{}` must be absolute (start with /) and contain no NUL",
                p.escape_debug()
            ),
        ));
    }
    Ok(PathBuf::from(p))
}

/// Maps an I/O error, with errno-specific codes.
pub fn io_err(what: &str, path: &Path, e: &io::Error) -> ErrorBody {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) => ErrorCode::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => ErrorCode::PermissionDenied,
        Some(libc::EISDIR) => ErrorCode::IsADirectory,
        Some(libc::ENOTDIR) => ErrorCode::NotADirectory,
        Some(libc::EEXIST) => ErrorCode::AlreadyExists,
        Some(libc::ENOTEMPTY) => ErrorCode::NotEmpty,
        _ => match e.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            io::ErrorKind::InvalidData => ErrorCode::NotUtf8,
            _ => ErrorCode::Io,
        },
    };
    ErrorBody::new(code, format!("{what} {}: {e}", path.display()))
}

fn open_regular(path: &Path) -> Result<(File, fs::Metadata), ErrorBody> {
    let f = File::open(path).map_err(|e| io_err("open", path, &e))?;
    let m = f.metadata().map_err(|e| io_err("stat", path, &e))?;
    if m.is_dir() {
        return Err(ErrorBody::new(
            ErrorCode::IsADirectory,
            format!("{} is a directory", path.display()),
        ));
    }
    Ok((f, m))
}

/// MIME type of an image (or PDF) recognised by its first bytes.
pub fn sniff_mime(head: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| head.starts_with(m);
    Some(if starts(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if starts(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        "image/gif"
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        "image/webp"
    } else if starts(b"BM") && head.len() >= 14 {
        "image/bmp"
    } else if starts(&[0, 0, 1, 0]) {
        "image/x-icon"
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        "image/tiff"
    } else if head.len() >= 12
        && &head[4..8] == b"ftyp"
        && (&head[8..12] == b"avif" || &head[8..12] == b"avis")
    {
        "image/avif"
    } else if starts(b"%PDF-") {
        "application/pdf"
    } else {
        let text = String::from_utf8_lossy(&head[..head.len().min(256)]);
        let t = text.trim_start();
        if t.starts_with("<svg") || (t.starts_with("<?xml") && t.contains("<svg")) {
            "image/svg+xml"
        } else {
            return None;
        }
    })
}

/// `FileRead`: stream bytes within the window.
pub fn read(req: FileReadRequest, h: &Handler) -> Reply {
    reply(read_inner(req, h))
}

fn read_inner(req: FileReadRequest, h: &Handler) -> OpResult {
    let path = check_path(&req.path)?;
    let (mut f, m) = open_regular(&path)?;
    let size = m.len();
    let mut head = [0u8; 256];
    let head_len = f.read_at(&mut head, 0).unwrap_or(0);
    let mime = sniff_mime(&head[..head_len]).map(str::to_owned);
    // Pseudo files (`/proc/meminfo`) say size 0 and have content: read them to their end.
    let pseudo = size == 0 && head_len > 0;
    let start = if pseudo {
        req.offset
    } else {
        req.offset.min(size)
    };
    f.seek(SeekFrom::Start(start))
        .map_err(|e| io_err("seek", &path, &e))?;
    let avail = if pseudo {
        PSEUDO_FILE_CAP
    } else {
        size - start
    };
    let limit = req.max_bytes.map_or(avail, |m| m.min(avail));
    let mut sent = 0u64;
    let mut scratch = Vec::new();
    // Where the channel has a descriptor of its own, the file is mapped (a window at a time)
    // and its pages are written to the channel from the mapping: one copy, as for a raw
    // writer, instead of read-then-write (under TCG the guest CPU is the bottleneck).
    let mut map_ok = !pseudo && limit > 0 && h.tx.has_channel_fd();
    let mut window: Option<(u64, sys::FileMap)> = None;
    // Files can grow while read: send what `limit` allowed at open time.
    while sent < limit {
        let Some(credit) = h.ctl.wait_window(Channel::Stdout) else {
            return Err(ErrorBody::new(ErrorCode::Internal, "cancelled"));
        };
        let want = (credit as usize)
            .min(BULK_CHUNK_LEN)
            .min((limit - sent) as usize);
        if map_ok {
            let pos = start + sent;
            let covered = window
                .as_ref()
                .is_some_and(|(at, m)| pos >= *at && pos + want as u64 <= *at + m.len() as u64);
            if !covered {
                window = None; // unmap before mapping the next window
                let at = pos & !(PAGE_SIZE - 1);
                let len = (start + limit - at).min(MAP_WINDOW_BYTES) as usize;
                match sys::FileMap::new(f.as_fd(), at, len) {
                    Ok(m) => window = Some((at, m)),
                    // Not mappable (a device or pseudo file): read it instead.
                    Err(_) => {
                        map_ok = false;
                        f.seek(SeekFrom::Start(pos))
                            .map_err(|e| io_err("seek", &path, &e))?;
                        continue;
                    }
                }
            }
            if let Some((at, m)) = &window {
                h.tx.data_from_map(Channel::Stdout, m, (pos - at) as usize, want)
                    .map_err(|e| io_err("read", &path, &e))?;
                h.ctl.consume(Channel::Stdout, want);
                sent += want as u64;
            }
            continue;
        }
        // Read straight into the outgoing frame.
        let n = match h
            .tx
            .data_from(Channel::Stdout, want, &mut scratch, |b| f.read(b))
        {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", &path, &e)),
        };
        h.ctl.consume(Channel::Stdout, n);
        sent += n as u64;
    }
    h.tx.eof(Channel::Stdout);
    let size = if pseudo { start + sent } else { size };
    Ok(ReplyBody::FileRead {
        size,
        sent_bytes: sent,
        truncated: if pseudo {
            sent == limit
        } else {
            start + sent < size
        },
        mime,
    })
}

/// Most bytes read from a pseudo file, whose size is unknown until its end.
const PSEUDO_FILE_CAP: u64 = 64 << 20;

/// `FileReadText`: a window of lines, numbered once when asked.
pub fn read_text(req: FileReadTextRequest) -> Reply {
    reply(read_text_inner(req))
}

fn read_text_inner(req: FileReadTextRequest) -> OpResult {
    let path = check_path(&req.path)?;
    let (f, _) = open_regular(&path)?;
    let max = req.max_bytes.unwrap_or(MAX_TEXT_BYTES).min(MAX_TEXT_BYTES) as usize;
    let mut reader = BufReader::with_capacity(64 << 10, f);
    let mut content = String::new();
    let mut line = Vec::new();
    let mut total = 0u64;
    let mut truncated = false;
    let mut taken = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err("read", &path, &e))?;
        if n == 0 {
            break;
        }
        total += 1;
        let in_window = total > req.offset_lines
            && (req.limit_lines == 0 || taken < req.limit_lines)
            && !truncated;
        if !in_window {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let prefix = if req.line_numbers {
            format!("{total}\t")
        } else {
            String::new()
        };
        if content.len() + prefix.len() + text.len() > max {
            truncated = true;
            continue;
        }
        content.push_str(&prefix);
        content.push_str(&text);
        taken += 1;
    }
    Ok(ReplyBody::Text {
        content,
        total_lines: total,
        truncated,
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.bsx-{}-{n}.tmp", std::process::id()))
}

/// Makes sure the parent of `path` exists (creating it when allowed) and `path` is not a
/// directory.
fn prepare_target(path: &Path, create_parents: bool) -> Result<Option<fs::Metadata>, ErrorBody> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ErrorBody::new(
                ErrorCode::NotADirectory,
                format!("parent {} is not a directory", parent.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && create_parents => {
            fs::create_dir_all(parent).map_err(|e| io_err("create directory", parent, &e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!(
                    "parent directory {} does not exist (set create_parents)",
                    parent.display()
                ),
            ))
        }
        Err(e) => return Err(io_err("stat", parent, &e)),
    }
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(ErrorBody::new(
            ErrorCode::IsADirectory,
            format!("{} is a directory", path.display()),
        )),
        Ok(m) => Ok(Some(m)),
        Err(_) => Ok(None),
    }
}

/// Receives the stream's stdin data into `sink`, granting credit as bytes are written.
/// `Ok(bytes)` at `Eof`; an error when the sink fails or the stream is cancelled.
fn receive(
    h: &Handler,
    mut sink: impl FnMut(&[u8]) -> Result<(), ErrorBody>,
) -> Result<u64, ErrorBody> {
    let mut total = 0u64;
    let mut credit = StdinCredit::new(&h.tx);
    loop {
        match h.stdin_rx.recv() {
            Ok(StdinMsg::Data(bytes)) => {
                sink(&bytes)?;
                total += bytes.len() as u64;
                credit.consumed(bytes.len());
            }
            Ok(StdinMsg::Eof) => return Ok(total),
            Err(_) => {
                return Err(ErrorBody::new(
                    ErrorCode::Internal,
                    "the write was cancelled before all bytes arrived",
                ))
            }
        }
    }
}

/// `FileWrite`.
pub fn write(req: FileWriteRequest, h: &Handler) -> Reply {
    reply(write_inner(req, h))
}

fn write_inner(req: FileWriteRequest, h: &Handler) -> OpResult {
    let path = check_path(&req.path)?;
    let existing = prepare_target(&path, req.create_parents)?;
    let mode = req
        .mode
        .map(|m| m & 0o7777)
        .or_else(|| existing.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    if req.append {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| io_err("open", &path, &e))?;
        let bytes = receive(h, |b| {
            f.write_all(b).map_err(|e| io_err("write", &path, &e))
        })?;
        if req.mode.is_some() {
            sys::fchmod(f.as_fd(), mode).map_err(|e| io_err("chmod", &path, &e))?;
        }
        return Ok(ReplyBody::Written { files: 1, bytes });
    }
    let tmp = temp_path_for(&path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, &e))?;
        let bytes = receive(h, |b| {
            f.write_all(b).map_err(|e| io_err("write", &path, &e))
        })?;
        sys::fchmod(f.as_fd(), mode).map_err(|e| io_err("chmod", &path, &e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| io_err("rename into", &path, &e))?;
        Ok(bytes)
    })();
    match result {
        Ok(bytes) => Ok(ReplyBody::Written { files: 1, bytes }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `FileWriteBatch`: all paths are checked before anything is written.
pub fn write_batch(req: FileWriteBatchRequest, h: &Handler) -> Reply {
    reply(write_batch_inner(req, h))
}

fn write_batch_inner(req: FileWriteBatchRequest, h: &Handler) -> OpResult {
    let mut targets = Vec::with_capacity(req.files.len());
    for f in &req.files {
        let path = check_path(&f.path)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !req.create_parents && !parent.is_dir() {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!(
                    "parent directory {} does not exist (set create_parents)",
                    parent.display()
                ),
            ));
        }
        if path.is_dir() {
            return Err(ErrorBody::new(
                ErrorCode::IsADirectory,
                format!("{} is a directory", path.display()),
            ));
        }
        targets.push(path);
    }
    let mut idx = 0usize;
    let mut current: Option<(File, u64)> = None;
    let open = |i: usize| -> Result<(File, u64), ErrorBody> {
        let path = &targets[i];
        let spec = &req.files[i];
        prepare_target(path, req.create_parents)?;
        let mode = spec.mode.unwrap_or(0o644) & 0o7777;
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| io_err("open", path, &e))?;
        if spec.mode.is_some() {
            sys::fchmod(f.as_fd(), mode).map_err(|e| io_err("chmod", path, &e))?;
        }
        Ok((f, spec.size))
    };
    // Opens the next files; empty ones are finished at once.
    let advance = |idx: &mut usize, current: &mut Option<(File, u64)>| -> Result<(), ErrorBody> {
        while current.is_none() && *idx < targets.len() {
            let (f, size) = open(*idx)?;
            *idx += 1;
            if size > 0 {
                *current = Some((f, size));
            }
        }
        Ok(())
    };
    advance(&mut idx, &mut current)?;
    let mut bytes_total = 0u64;
    receive(h, |mut b| {
        while !b.is_empty() {
            let Some((f, left)) = current.as_mut() else {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "more data than the sizes of the batch's files",
                ));
            };
            let take = (*left).min(b.len() as u64) as usize;
            f.write_all(&b[..take])
                .map_err(|e| io_err("write", &targets[idx - 1], &e))?;
            *left -= take as u64;
            bytes_total += take as u64;
            b = &b[take..];
            if *left == 0 {
                current = None;
                advance(&mut idx, &mut current)?;
            }
        }
        Ok(())
    })?;
    if current.is_some() || idx < targets.len() {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "the data ended before the batch's files were complete",
        ));
    }
    Ok(ReplyBody::Written {
        files: targets.len() as u64,
        bytes: bytes_total,
    })
}

fn entry_of(path: &Path) -> io::Result<FileEntry> {
    let lm = fs::symlink_metadata(path)?;
    // Follow symlinks for type and size when the target exists.
    let m = if lm.file_type().is_symlink() {
        fs::metadata(path).unwrap_or_else(|_| lm.clone())
    } else {
        lm.clone()
    };
    Ok(FileEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".to_owned()),
        path: path.to_string_lossy().into_owned(),
        size: m.len(),
        is_dir: m.is_dir(),
        is_file: m.is_file(),
        is_symlink: lm.file_type().is_symlink(),
        mode: m.mode(),
        mtime: m.mtime(),
    })
}

/// `FileList`.
pub fn list(path: &str) -> Reply {
    reply((|| {
        let path = check_path(path)?;
        let m = fs::metadata(&path).map_err(|e| io_err("stat", &path, &e))?;
        if !m.is_dir() {
            return Err(ErrorBody::new(
                ErrorCode::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        let mut entries = Vec::new();
        let mut truncated = false;
        for e in fs::read_dir(&path).map_err(|e| io_err("list", &path, &e))? {
            let Ok(e) = e else { continue };
            if entries.len() >= MAX_LIST_ENTRIES {
                truncated = true;
                break;
            }
            if let Ok(entry) = entry_of(&e.path()) {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ReplyBody::Entries { entries, truncated })
    })())
}

/// `FileStat`: a missing path is `entry: null`.
pub fn stat(path: &str) -> Reply {
    reply((|| {
        let path = check_path(path)?;
        match entry_of(&path) {
            Ok(e) => Ok(ReplyBody::Stat { entry: Some(e) }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                Ok(ReplyBody::Stat { entry: None })
            }
            Err(e) => Err(io_err("stat", &path, &e)),
        }
    })())
}

/// `FileMkdir`.
pub fn mkdir(path: &str, parents: bool, mode: Option<u32>) -> Reply {
    reply((|| {
        let path = check_path(path)?;
        if parents {
            if let Ok(m) = fs::metadata(&path) {
                if !m.is_dir() {
                    return Err(ErrorBody::new(
                        ErrorCode::AlreadyExists,
                        format!("{} exists and is not a directory", path.display()),
                    ));
                }
            }
            fs::create_dir_all(&path).map_err(|e| io_err("mkdir", &path, &e))?;
        } else {
            fs::create_dir(&path).map_err(|e| io_err("mkdir", &path, &e))?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| io_err("chmod", &path, &e))?;
        }
        Ok(ReplyBody::Done)
    })())
}

/// `FileRemove`.
pub fn remove(path: &str, recursive: bool) -> Reply {
    reply((|| {
        let path = check_path(path)?;
        if path == Path::new("/") {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "refusing to remove /",
            ));
        }
        let m = fs::symlink_metadata(&path).map_err(|e| io_err("remove", &path, &e))?;
        if m.is_dir() {
            if recursive {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_dir(&path)
            }
        } else {
            fs::remove_file(&path)
        }
        .map_err(|e| io_err("remove", &path, &e))?;
        Ok(ReplyBody::Done)
    })())
}

/// `FileRename`.
pub fn rename(from: &str, to: &str) -> Reply {
    reply((|| {
        let from = check_path(from)?;
        let to = check_path(to)?;
        fs::symlink_metadata(&from).map_err(|e| io_err("rename", &from, &e))?;
        fs::rename(&from, &to).map_err(|e| io_err("rename to", &to, &e))?;
        Ok(ReplyBody::Done)
    })())
}

/// `FileEdit`: replace text that occurs exactly once; atomic (temp file + rename).
pub fn edit(path: &str, old: &str, new: &str) -> Reply {
    reply((|| {
        let path = check_path(path)?;
        if old.is_empty() {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "the text to replace is empty",
            ));
        }
        let (mut f, m) = open_regular(&path)?;
        if m.len() > MAX_EDIT_BYTES {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("{} is larger than {MAX_EDIT_BYTES} bytes", path.display()),
            ));
        }
        let mut bytes = Vec::with_capacity(m.len() as usize);
        f.read_to_end(&mut bytes)
            .map_err(|e| io_err("read", &path, &e))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ErrorBody::new(
                ErrorCode::NotUtf8,
                format!("{} is not UTF-8 text", path.display()),
            )
        })?;
        let mut matches = text.match_indices(old);
        let Some((at, _)) = matches.next() else {
            return Err(ErrorBody::new(
                ErrorCode::NoMatch,
                format!("the text to replace does not occur in {}", path.display()),
            ));
        };
        let extra = matches.count();
        if extra > 0 {
            return Err(ErrorBody::new(
                ErrorCode::MultipleMatches,
                format!(
                    "the text to replace occurs {} times in {}; give more context",
                    extra + 1,
                    path.display()
                ),
            ));
        }
        let mut out = String::with_capacity(text.len() + new.len());
        out.push_str(&text[..at]);
        out.push_str(new);
        out.push_str(&text[at + old.len()..]);
        let tmp = temp_path_for(&path);
        let result = (|| {
            let mut t = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_err("create", &tmp, &e))?;
            t.write_all(out.as_bytes())
                .map_err(|e| io_err("write", &tmp, &e))?;
            sys::fchmod(t.as_fd(), m.mode() & 0o7777).map_err(|e| io_err("chmod", &tmp, &e))?;
            fs::rename(&tmp, &path).map_err(|e| io_err("rename into", &path, &e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        Ok(ReplyBody::Done)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_by_magic() {
        assert_eq!(sniff_mime(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff_mime(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(sniff_mime(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff_mime(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_mime(b"  <svg xmlns=\"\">"), Some("image/svg+xml"));
        assert_eq!(sniff_mime(b"hello"), None);
    }

    #[test]
    fn path_rule() {
        assert!(check_path("/a/b").is_ok());
        for bad in ["", "a/b", "./x", "/a\0b"] {
            assert_eq!(check_path(bad).unwrap_err().code, ErrorCode::InvalidPath);
        }
    }
}
