//! `bandsox build` (and `bandsox image build`): a Dockerfile built by the server, in VMs.
//!
//! `PATH` is a context folder (packed as a tar, `.dockerignore` applied, streamed to
//! `POST /api/images/build`) or a Dockerfile (`-` for stdin) for a build without context.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::ProgressBar;

use super::image::Common;
use crate::client::{segment, CliError, Client};
use crate::CliResult;

/// Longest a build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context folder (`COPY`/`ADD` read it), or a Dockerfile (`-`: stdin) to
    /// build without a context.
    path: PathBuf,
    /// The Dockerfile, when PATH is a folder (default PATH/Dockerfile).
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// Name of the result (default `bandsox-build-<id>`).
    #[arg(long, short)]
    tag: Option<String>,
    /// A value for an `ARG` of the Dockerfile (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Build again even when the tag holds a build of the same inputs.
    #[arg(long, alias = "no-cache")]
    force: bool,
    /// Writable disk of the build VMs, MiB.
    #[arg(long, default_value_t = 4096)]
    disk_size: u64,
}

pub fn run(url: &str, args: BuildArgs, common: Common) -> CliResult {
    if common.storage.is_some() {
        return Err(
            CliError::new("image build runs in a VM: it needs the server")
                .with_hint("drop --storage and start `bandsox serve`"),
        );
    }
    let mut build_args = BTreeMap::new();
    for kv in &args.build_args {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            CliError::new(format!("--build-arg `{kv}` is not KEY=VALUE"))
                .with_hint("e.g. --build-arg VERSION=1.2")
        })?;
        build_args.insert(k.to_owned(), v.to_owned());
    }
    let client = Client::new(url);
    let spinner = (!common.quiet && !common.json && std::io::stderr().is_terminal()).then(|| {
        let p = ProgressBar::new_spinner().with_message("building in a VM");
        p.enable_steady_tick(Duration::from_millis(120));
        p
    });
    let built = if args.path.is_dir() {
        with_context(&client, &args, &build_args)
    } else {
        if args.file.is_some() {
            return Err(CliError::new("-f names the Dockerfile of a context folder")
                .with_hint("give the folder as PATH: bandsox build -f FILE DIR"));
        }
        let text = read_dockerfile(&args.path)?;
        let body = serde_json::json!({
            "dockerfile": text, "tag": args.tag, "force_rebuild": args.force,
            "disk_size_mib": args.disk_size, "build_args": build_args,
        });
        client.post("/api/images/build", &body, BUILD_TIMEOUT)
    };
    if let Some(p) = spinner {
        p.finish_and_clear();
    }
    let image: bandsox_core::ImageRecord = built?;
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&image).unwrap_or_default()
        );
    } else {
        println!("{}", image.reference);
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams the context folder as a tar (packed in a thread) with the options in the query.
fn with_context(
    client: &Client,
    args: &BuildArgs,
    build_args: &BTreeMap<String, String>,
) -> Result<bandsox_core::ImageRecord, CliError> {
    let dir = args.path.clone();
    // A Dockerfile outside the folder travels in the tar under a name of its own.
    let (dockerfile, extra) = match &args.file {
        None => ("Dockerfile".to_owned(), None),
        Some(f) => match inside(&dir, f) {
            Some(rel) => (rel, None),
            None => {
                let name = ".bandsox.Dockerfile".to_owned();
                (name.clone(), Some((name, read_dockerfile(f)?.into_bytes())))
            }
        },
    };
    if extra.is_none() && !dir.join(&dockerfile).is_file() {
        return Err(
            CliError::new(format!("{} has no {dockerfile}", dir.display()))
                .with_hint("name the Dockerfile with -f FILE"),
        );
    }
    let mut query = format!(
        "dockerfile={}&force_rebuild={}&disk_size_mib={}",
        segment(&dockerfile),
        args.force,
        args.disk_size
    );
    if let Some(t) = &args.tag {
        query.push_str(&format!("&tag={}", segment(t)));
    }
    if !build_args.is_empty() {
        let json = serde_json::to_string(build_args).unwrap_or_default();
        query.push_str(&format!("&build_args={}", segment(&json)));
    }
    let (reader, writer) = std::io::pipe()
        .map_err(|e| CliError::new(format!("cannot pack the build context: {e}")))?;
    let packer = std::thread::spawn(move || {
        let extra = extra.as_ref().map(|(n, b)| (n.as_str(), b.as_slice()));
        bandsox_core::dockerfile::pack_dir(&dir, extra, writer).map(drop)
    });
    let sent = client.send_reader_for(
        &format!("/api/images/build?{query}"),
        "application/x-tar",
        reader,
        BUILD_TIMEOUT,
    );
    match packer.join() {
        Ok(Ok(())) => {}
        // The server may have answered (an error) before the whole context was read.
        Ok(Err(e)) if sent.is_ok() => {
            return Err(CliError::new(format!("cannot pack the build context: {e}")))
        }
        _ => {}
    }
    sent
}

/// `file` relative to `dir` when it is inside it.
fn inside(dir: &Path, file: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let file = file.canonicalize().ok()?;
    Some(file.strip_prefix(&dir).ok()?.to_string_lossy().into_owned())
}

fn read_dockerfile(path: &Path) -> Result<String, CliError> {
    if path.as_os_str() == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
        return Ok(t);
    }
    std::fs::read_to_string(path)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))
}
