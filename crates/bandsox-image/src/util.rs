//! Small file and process helpers shared by the modules of this crate.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::ImageError;

/// Hex SHA-256 of a file's contents.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f =
        File::open(path).map_err(|e| ImageError::io(format!("open {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hex SHA-256 of a byte slice.
pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A sibling temporary path for `dest` (same directory, so a rename is atomic).
pub(crate) fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dest.with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

/// Writes a file atomically: the content goes to a temporary sibling, is flushed to disk and
/// renamed over `dest`. On error the temporary file is removed.
pub(crate) fn write_atomic(
    dest: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temp_sibling(dest);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        fill(&mut f)?;
        f.flush()?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dest)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::io(format!("write {}", dest.display()), e));
    }
    Ok(())
}

/// Runs an external tool, mapping "not installed" and non-zero exits to clear errors.
pub(crate) fn run_tool(
    tool: &'static str,
    hint: &'static str,
    cmd: &mut Command,
) -> Result<Vec<u8>, ImageError> {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::ToolMissing { tool, hint })
        }
        Err(e) => return Err(ImageError::io(format!("run {tool}"), e)),
    };
    if !out.status.success() {
        return Err(ImageError::ToolFailed {
            tool: tool.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}
