//! `bandsox image pull|import|import-dir|ls|inspect|rm`.
//!
//! Through the server by default, reading its NDJSON progress stream for pull and import.
//! With `--storage DIR` the command works on that storage root directly, in this process (what
//! `scripts/setup` uses before any server runs). Either way pull and import show per-layer
//! progress bars (bytes and rate) when stdout is a terminal and `--quiet` is not given.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bandsox_core::images::{self, ImageInfo};
use bandsox_core::store::Store;
use bandsox_core::Storage;
use bandsox_image::oci::{NoProgress, Progress};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{core_error, storage};
use crate::client::{CliError, Client};
use crate::CliResult;

#[derive(Debug, Args)]
pub struct Common {
    /// Work on this storage root directly instead of through the server.
    #[arg(long)]
    pub(crate) storage: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress output.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry (`alpine`, `python:3.12-slim`, `localhost:5000/x:tag`).
    Pull {
        reference: String,
        /// Speak plain HTTP to the registry (loopback registries always are).
        #[arg(long)]
        insecure: bool,
        #[arg(long)]
        username: Option<String>,
        /// Read the password from stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Pull and convert again even when cached.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Import a `docker save` tarball or an OCI image layout (directory or tar).
    Import {
        path: PathBuf,
        /// Name to register (default: the archive's own tag).
        #[arg(long)]
        reference: Option<String>,
        /// Replace an image that already has this reference (refused otherwise).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Import a root filesystem directory as an image (needs --storage).
    ImportDir {
        dir: PathBuf,
        #[arg(long)]
        reference: String,
        /// Working directory for commands.
        #[arg(long, default_value = "/")]
        workdir: String,
        /// Image environment (repeatable); PATH defaults to the usual one.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Replace an existing image of that name.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Build an image from a Dockerfile, in VMs: `image build [-f FILE] DIR` with a context
    /// folder, or `image build FILE` (`-` reads stdin) without one. Same as `bandsox build`.
    Build {
        #[command(flatten)]
        args: super::build::BuildArgs,
        #[command(flatten)]
        common: Common,
    },
    /// List cached images.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        common: Common,
    },
    /// Show one image: digest, size, config, layers, users.
    Inspect {
        reference: String,
        #[command(flatten)]
        common: Common,
    },
    /// Remove an image (refused while a VM uses it).
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        reference: String,
        #[command(flatten)]
        common: Common,
    },
}

pub fn run(url: &str, cmd: ImageCommand) -> CliResult {
    match cmd {
        ImageCommand::Pull {
            reference,
            insecure,
            username,
            password_stdin,
            force,
            common,
        } => {
            let password = if password_stdin {
                let mut p = String::new();
                std::io::stdin()
                    .read_to_string(&mut p)
                    .map_err(|e| CliError::new(format!("cannot read the password: {e}")))?;
                Some(p.trim_end_matches(['\n', '\r']).to_owned())
            } else {
                None
            };
            let info = match &common.storage {
                Some(dir) => local(
                    dir.clone(),
                    |store, storage, progress| async move {
                        let mut opts = images::pull_options_from_env();
                        if insecure {
                            if let Ok(n) = bandsox_image::pull::normalize_reference(&reference) {
                                if let Some((reg, _)) = n.split_once('/') {
                                    opts.insecure_registries.push(reg.to_owned());
                                }
                            }
                        }
                        if let (Some(u), Some(p)) = (username, password) {
                            opts.credentials = Some((u, p));
                        }
                        let rec =
                            images::pull(&store, &storage, &reference, &opts, force, progress)
                                .await?;
                        images::inspect(&store, &storage, &rec.reference)
                    },
                    common.quiet,
                )?,
                None => {
                    let body = serde_json::json!({
                        "reference": reference, "insecure": insecure, "force": force,
                        "username": username, "password": password,
                    });
                    pull_streamed(url, &body, progress_sink(common.quiet))?
                }
            };
            print_one(&info, common.json)
        }
        ImageCommand::Import {
            path,
            reference,
            force,
            common,
        } => {
            let info = match &common.storage {
                Some(dir) => local(
                    dir.clone(),
                    |store, storage, progress| async move {
                        let rec = images::import(
                            &store,
                            &storage,
                            &path,
                            reference.as_deref(),
                            force,
                            progress,
                        )
                        .await?;
                        images::inspect(&store, &storage, &rec.reference)
                    },
                    common.quiet,
                )?,
                None => upload(
                    url,
                    &path,
                    reference.as_deref(),
                    force,
                    progress_sink(common.quiet),
                )?,
            };
            print_one(&info, common.json)
        }
        ImageCommand::ImportDir {
            dir,
            reference,
            workdir,
            env,
            force,
            common,
        } => {
            let root = common.storage.clone().ok_or_else(|| {
                CliError::new("import-dir works on a storage root directly: pass --storage DIR")
            })?;
            let mut env_list = env;
            if !env_list.iter().any(|e| e.starts_with("PATH=")) {
                env_list.insert(
                    0,
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                );
            }
            let config = serde_json::json!({"Env": env_list, "WorkingDir": workdir});
            let info = local(
                root,
                |store, storage, _| async move {
                    if !force {
                        if let Ok(info) = images::inspect(&store, &storage, &reference) {
                            return Ok(info);
                        }
                    }
                    let rec = images::import_dir(&store, &storage, &reference, &dir, config)?;
                    images::inspect(&store, &storage, &rec.reference)
                },
                common.quiet,
            )?;
            print_one(&info, common.json)
        }
        ImageCommand::Ls { common } => {
            let list: Vec<ImageInfo> = match &common.storage {
                Some(dir) => local_with(
                    dir.clone(),
                    |store, storage, _| async move { images::list(&store, &storage) },
                    true,
                    false,
                )?,
                None => Client::new(url).get("/api/images")?,
            };
            if common.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<50} {:<14} {:>9} {:<15} {:>3}  CREATED",
                    "REFERENCE", "DIGEST", "SIZE_MIB", "SOURCE", "VMS"
                );
                for i in &list {
                    println!(
                        "{:<50} {:<14} {:>9} {:<15} {:>3}  {}",
                        i.record.reference,
                        bandsox_image::oci::short(&i.record.digest),
                        i.record.size_bytes >> 20,
                        i.meta.as_ref().map_or("-", |m| m.source.as_str()),
                        i.used_by_vms.len(),
                        crate::human::relative(i.record.created_at)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Build { args, common } => super::build::run(url, args, common),
        ImageCommand::Inspect { reference, common } => {
            let info: ImageInfo = match &common.storage {
                Some(dir) => local_with(
                    dir.clone(),
                    |store, storage, _| async move { images::inspect(&store, &storage, &reference) },
                    true,
                    false,
                )?,
                None => Client::new(url).get(&format!("/api/images/{reference}"))?,
            };
            // Inspect is for reading: always the full JSON.
            println!(
                "{}",
                serde_json::to_string_pretty(&info).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Rm { reference, common } => {
            match &common.storage {
                Some(dir) => {
                    local(
                        dir.clone(),
                        |store, storage, _| async move {
                            images::remove(&store, &storage, &reference).await
                        },
                        true,
                    )?;
                }
                None => {
                    let _: serde_json::Value =
                        Client::new(url).delete(&format!("/api/images/{reference}"))?;
                }
            }
            if common.json {
                println!("{}", serde_json::json!({"status": "deleted"}));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_one(info: &ImageInfo, json: bool) -> CliResult {
    if json {
        println!("{}", serde_json::to_string_pretty(info).unwrap_or_default());
    } else {
        println!(
            "{} {} ({} MiB)",
            info.record.reference,
            info.record.digest,
            info.record.size_bytes >> 20
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` against a storage root in this process, owning the root (see
/// [`Storage::lock`]) while it writes.
fn local<T, F, Fut>(root: PathBuf, f: F, quiet: bool) -> Result<T, CliError>
where
    F: FnOnce(Store, Storage, Arc<dyn Progress>) -> Fut,
    Fut: std::future::Future<Output = bandsox_core::Result<T>>,
{
    local_with(root, f, quiet, true)
}

fn local_with<T, F, Fut>(root: PathBuf, f: F, quiet: bool, write: bool) -> Result<T, CliError>
where
    F: FnOnce(Store, Storage, Arc<dyn Progress>) -> Fut,
    Fut: std::future::Future<Output = bandsox_core::Result<T>>,
{
    let storage = storage(Some(root))?;
    if !storage.db_path().exists() {
        return Err(CliError::new(format!(
            "storage {} is not initialised",
            storage.root().display()
        ))
        .with_hint("run `bandsox init` (or scripts/setup) first"));
    }
    let _lock = if write {
        Some(storage.lock("image").map_err(core_error)?)
    } else {
        None
    };
    let store = Store::open(&storage.db_path()).map_err(core_error)?;
    let progress = progress_sink(quiet);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the runtime: {e}")))?;
    rt.block_on(f(store, storage, progress)).map_err(core_error)
}

/// Bars on a terminal, nothing with `--quiet` or when stdout is not a terminal.
fn progress_sink(quiet: bool) -> Arc<dyn Progress> {
    if quiet || !std::io::stdout().is_terminal() {
        Arc::new(NoProgress)
    } else {
        Arc::new(Bars::new())
    }
}

/// One line of the server's pull progress stream (see docs/IMAGES.md).
#[derive(serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum StreamEvent {
    Phase {
        message: String,
    },
    Layer {
        digest: String,
        bytes_done: u64,
        bytes_total: u64,
        cached: bool,
        done: bool,
    },
    Done {
        image: Box<ImageInfo>,
    },
    Error(bandsox_api::Problem),
    #[serde(other)]
    Unknown,
}

/// `POST /api/images/pull` with `Accept: application/x-ndjson`, replaying the server's
/// layer events into `progress`.
fn pull_streamed(
    url: &str,
    body: &serde_json::Value,
    progress: Arc<dyn Progress>,
) -> Result<ImageInfo, CliError> {
    let client = Client::new(url);
    let res = stream_request(&client, "/api/images/pull")?.send_json(body);
    read_stream(&client, res, progress)
}

/// A POST asking for the NDJSON progress stream (with the API key when there is one).
fn stream_request(client: &Client, path: &str) -> Result<ureq::Request, CliError> {
    let req = ureq::post(&client.url(path)?)
        .timeout(Duration::from_secs(3600))
        .set("Accept", "application/x-ndjson");
    Ok(match crate::client::api_key() {
        Some(key) => req.set("Authorization", &format!("Bearer {key}")),
        None => req,
    })
}

/// Reads a progress stream to its `done` (the image) or `error` line.
fn read_stream(
    client: &Client,
    res: Result<ureq::Response, ureq::Error>,
    progress: Arc<dyn Progress>,
) -> Result<ImageInfo, CliError> {
    use std::io::BufRead;
    let url = client.base();
    let res = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(status, r)) => {
            let body = r.into_string().unwrap_or_default();
            return Err(crate::client::problem_error(status, &body));
        }
        Err(ureq::Error::Transport(t)) => return Err(client.unreachable(&t)),
    };
    let mut seen: HashMap<String, u64> = HashMap::new();
    for line in std::io::BufReader::new(res.into_reader()).lines() {
        let line = line.map_err(|e| client.unreachable(&e))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: StreamEvent = serde_json::from_str(&line)
            .map_err(|e| CliError::new(format!("unreadable progress event from {url}: {e}")))?;
        match event {
            StreamEvent::Phase { message } => progress.phase(&message),
            StreamEvent::Layer {
                digest,
                bytes_done,
                bytes_total,
                cached,
                done,
            } => {
                let before = match seen.get(&digest) {
                    Some(b) => *b,
                    None => {
                        progress.blob_start(&digest, bytes_total, cached);
                        if cached {
                            bytes_total
                        } else {
                            0
                        }
                    }
                };
                if bytes_done > before {
                    progress.blob_bytes(&digest, bytes_done - before);
                }
                seen.insert(digest.clone(), bytes_done.max(before));
                if done {
                    progress.blob_done(&digest);
                }
            }
            StreamEvent::Done { image } => {
                progress.phase("done");
                return Ok(*image);
            }
            StreamEvent::Error(p) => {
                progress.phase("done");
                let status = p.status;
                let body = serde_json::to_string(&p).unwrap_or_default();
                return Err(crate::client::problem_error(status, &body));
            }
            StreamEvent::Unknown => {}
        }
    }
    progress.phase("done");
    Err(CliError::new(format!(
        "the server at {url} ended the pull stream without a result"
    )))
}

/// Uploads an archive (or an OCI layout directory, tarred on the fly) to the server.
fn upload(
    url: &str,
    path: &std::path::Path,
    reference: Option<&str>,
    force: bool,
    progress: Arc<dyn Progress>,
) -> Result<ImageInfo, CliError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))?;
    let reader: Box<dyn Read + Send> = if meta.is_dir() {
        let (r, w) =
            std::io::pipe().map_err(|e| CliError::new(format!("cannot create a pipe: {e}")))?;
        let dir = path.to_path_buf();
        std::thread::spawn(move || {
            let mut b = tar::Builder::new(w);
            b.follow_symlinks(false);
            let _ = b.append_dir_all(".", &dir).and_then(|()| b.finish());
        });
        Box::new(r)
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| CliError::new(format!("cannot open {}: {e}", path.display())))?,
        )
    };
    let mut query = Vec::new();
    if let Some(r) = reference {
        query.push(format!("reference={}", crate::client::segment(r)));
    }
    if force {
        query.push("force=true".to_owned());
    }
    let mut target = "/api/images/import".to_owned();
    if !query.is_empty() {
        target.push('?');
        target.push_str(&query.join("&"));
    }
    let client = Client::new(url);
    let res = stream_request(&client, &target)?
        .set("Content-Type", "application/x-tar")
        .send(reader);
    read_stream(&client, res, progress)
}

/// One bar per blob (bytes, total, rate) plus a status line.
struct Bars {
    multi: MultiProgress,
    status: ProgressBar,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let status = multi.add(ProgressBar::new_spinner());
        status.enable_steady_tick(Duration::from_millis(120));
        Self {
            multi,
            status,
            bars: Mutex::default(),
        }
    }
}

impl Progress for Bars {
    fn blob_start(&self, digest: &str, total_bytes: u64, cached: bool) {
        let pb = self
            .multi
            .insert_before(&self.status, ProgressBar::new(total_bytes));
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        pb.set_style(style);
        pb.set_prefix(bandsox_image::oci::short(digest).to_owned());
        if cached {
            pb.set_position(total_bytes);
            pb.finish_with_message("cached");
        }
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_owned(), pb);
    }

    fn blob_bytes(&self, digest: &str, n: u64) {
        if let Some(pb) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            pb.inc(n);
        }
    }

    fn blob_done(&self, digest: &str) {
        if let Some(pb) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            if !pb.is_finished() {
                pb.finish_with_message("done");
            }
        }
    }

    fn phase(&self, message: &str) {
        if message == "done" {
            self.status.finish_and_clear();
        } else {
            self.status.set_message(message.to_owned());
        }
    }
}
