//! `bandsox cp SRC DST`: copy files and directories between the host and a VM. One side is
//! `VM:PATH` (VM id, guest path), the other a host path. Files stream both ways.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::client::{segment, CliError, Client};
use crate::CliResult;

#[derive(Debug, Args)]
pub struct CpArgs {
    /// `VM:/guest/path` or a host path.
    src: String,
    /// `VM:/guest/path` or a host path.
    dst: String,
}

fn split_vm(s: &str) -> Option<(&str, &str)> {
    let (vm, path) = s.split_once(':')?;
    (!vm.is_empty() && !vm.contains('/') && path.starts_with('/')).then_some((vm, path))
}

fn query(path: &str) -> String {
    segment(path)
}

pub fn run(url: &str, a: CpArgs) -> CliResult {
    let client = Client::new(url);
    let n = match (split_vm(&a.src), split_vm(&a.dst)) {
        (None, Some((vm, guest))) => upload(&client, Path::new(&a.src), vm, guest)?,
        (Some((vm, guest)), None) => download(&client, vm, guest, Path::new(&a.dst))?,
        _ => {
            return Err(CliError::new(
                "exactly one side must be VM:/path and the other a host path",
            )
            .with_hint("e.g. `bandsox cp ./src VM:/work/src` or `bandsox cp VM:/etc/hostname .`"))
        }
    };
    eprintln!("copied {n} file(s)");
    Ok(ExitCode::SUCCESS)
}

/// Host file or directory to the guest; returns the number of files.
fn upload(client: &Client, src: &Path, vm: &str, guest: &str) -> Result<usize, CliError> {
    let meta =
        std::fs::metadata(src).map_err(|e| CliError::new(format!("{}: {e}", src.display())))?;
    if meta.is_file() {
        upload_file(client, src, vm, guest)?;
        return Ok(1);
    }
    let mut count = 0;
    let mut stack = vec![(src.to_path_buf(), guest.trim_end_matches('/').to_owned())];
    while let Some((dir, gdir)) = stack.pop() {
        let _: serde_json::Value = client.post(
            &format!("/api/vms/{}/files/mkdir", segment(vm)),
            &serde_json::json!({ "path": gdir }),
            Duration::from_secs(60),
        )?;
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let target = format!("{gdir}/{name}");
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push((e.path(), target)),
                Ok(t) if t.is_file() => {
                    upload_file(client, &e.path(), vm, &target)?;
                    count += 1;
                }
                _ => eprintln!(
                    "skipped {} (not a regular file or directory)",
                    e.path().display()
                ),
            }
        }
    }
    Ok(count)
}

fn upload_file(client: &Client, src: &Path, vm: &str, guest: &str) -> Result<(), CliError> {
    let file =
        std::fs::File::open(src).map_err(|e| CliError::new(format!("{}: {e}", src.display())))?;
    let boundary = format!("bandsox{:016x}", rand_u64());
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"remote_path\"\r\n\r\n{guest}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let body = std::io::Cursor::new(head.into_bytes())
        .chain(file)
        .chain(std::io::Cursor::new(tail.into_bytes()));
    let _: serde_json::Value = client.send_reader(
        &format!("/api/vms/{}/upload", segment(vm)),
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )?;
    Ok(())
}

/// Guest file or directory to the host; returns the number of files.
fn download(client: &Client, vm: &str, guest: &str, dst: &Path) -> Result<usize, CliError> {
    let info: serde_json::Value = client.get(&format!(
        "/api/vms/{}/file-info?path={}",
        segment(vm),
        query(guest)
    ))?;
    let name = guest
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("root");
    let target = if dst.is_dir() {
        dst.join(name)
    } else {
        dst.to_path_buf()
    };
    if info["info"]["is_dir"].as_bool() != Some(true) {
        download_file(client, vm, guest, &target)?;
        return Ok(1);
    }
    let mut count = 0;
    let mut stack: Vec<(String, PathBuf)> = vec![(guest.trim_end_matches('/').to_owned(), target)];
    while let Some((gdir, dir)) = stack.pop() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
        let listing: serde_json::Value = client.get(&format!(
            "/api/vms/{}/files?path={}",
            segment(vm),
            query(&gdir)
        ))?;
        for f in listing["files"].as_array().into_iter().flatten() {
            let (Some(name), Some(path)) = (f["name"].as_str(), f["path"].as_str()) else {
                continue;
            };
            if name.contains('/') || name == ".." || name == "." {
                continue; // never let a guest name escape the target directory
            }
            if f["is_dir"].as_bool() == Some(true) {
                stack.push((path.to_owned(), dir.join(name)));
            } else if f["is_file"].as_bool() == Some(true) {
                download_file(client, vm, path, &dir.join(name))?;
                count += 1;
            }
        }
    }
    Ok(count)
}

fn download_file(client: &Client, vm: &str, guest: &str, target: &Path) -> Result<(), CliError> {
    let mut reader = client.get_reader(&format!(
        "/api/vms/{}/download?path={}",
        segment(vm),
        query(guest)
    ))?;
    let mut out = std::fs::File::create(target)
        .map_err(|e| CliError::new(format!("{}: {e}", target.display())))?;
    std::io::copy(&mut reader, &mut out)
        .map_err(|e| CliError::new(format!("{}: {e}", target.display())))?;
    Ok(())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
