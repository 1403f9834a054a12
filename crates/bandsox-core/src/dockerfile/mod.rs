//! Images from Dockerfiles, built inside VMs (no Docker daemon).
//!
//! Each stage's `FROM` names an image bandsox can resolve (pulled on demand), an earlier
//! stage, or `scratch`. `RUN` executes in a build VM of the stage's base with the
//! environment, working directory and user the instructions before it set. `COPY`/`ADD` take
//! files from the build context (a tar the client uploads, unpacked on the host with the safe
//! unpacker image layers use, `.dockerignore` applied) or from an earlier stage
//! (`--from`), and put them into the VM as one tar. The finished root filesystem is streamed
//! out of the guest as a tar, unpacked on the host (the guest is untrusted), and recorded as
//! a new image whose runtime config is the base's, changed by `ENV`, `WORKDIR`, `USER`,
//! `CMD`, `ENTRYPOINT`, `EXPOSE` and `LABEL`.
//!
//! Only the stages the last one needs are built. A tag never replaces an image that was not
//! built from a Dockerfile, and a finished build is reused when the Dockerfile text, the
//! build arguments and the context are all the same.

mod cache;
mod context;
mod parse;
mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bandsox_protocol::ExecRequest;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

pub(crate) use cache::is_cache as is_cache_snapshot;
pub use context::{pack_dir, Ignore};
pub use parse::{Base, Copy, Dockerfile, Stage, Step, MAX_DOCKERFILE_BYTES};

use crate::error::{CoreError, Result};
use crate::guest::files::WriteOptions;
use crate::images::{self, ImageMeta};
use crate::manager::{CreateVm, Manager};
use crate::store::ImageRecord;
use context::{Owner, Packed};
use parse::{bad, resolve_dir};

/// Largest build context accepted (the uploaded tar).
pub const MAX_CONTEXT_BYTES: u64 = 2 << 30;
/// Longest one `RUN` step may take.
const STEP_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// Output kept from a failed step for the error message.
const ERROR_TAIL_BYTES: usize = 2000;
/// Paths left out of the exported tree (kernel file systems the agent mounts at boot).
const VIRTUAL_DIRS: [&str; 3] = ["proc", "sys", "dev"];
/// Where a `COPY` tar is put in the guest before it is unpacked (and removed).
const GUEST_COPY_TAR: &str = "/.bandsox-copy.tar";

/// Where the Dockerfile comes from.
#[derive(Debug, Clone)]
pub enum DockerfileSource {
    Text(String),
    /// A path inside the build context (`Dockerfile` by default).
    InContext(String),
}

/// What to build and what to call it.
#[derive(Debug)]
pub struct BuildRequest {
    pub dockerfile: DockerfileSource,
    /// The build context, from [`Manager::receive_context`]; `COPY`/`ADD` need one.
    pub context: Option<ContextTar>,
    /// `--build-arg`s: override the defaults of the `ARG`s the Dockerfile declares.
    pub build_args: BTreeMap<String, String>,
    /// Image reference to record; `bandsox-build-<id>` when absent.
    pub tag: Option<String>,
    /// Build again even when the tag holds a build of the same inputs.
    pub force_rebuild: bool,
    /// Writable disk of the build VMs.
    pub disk_size_mib: u64,
}

impl BuildRequest {
    /// A build of Dockerfile `text` without a context.
    pub fn text(text: String) -> Self {
        Self {
            dockerfile: DockerfileSource::Text(text),
            context: None,
            build_args: BTreeMap::new(),
            tag: None,
            force_rebuild: false,
            disk_size_mib: 4096,
        }
    }
}

/// An uploaded build context (a tar, optionally compressed) in the storage root's scratch
/// space; removed when dropped.
#[derive(Debug)]
pub struct ContextTar {
    dir: PathBuf,
}

impl ContextTar {
    fn tar(&self) -> PathBuf {
        self.dir.join("context.tar")
    }
}

impl Drop for ContextTar {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A built stage: where its files are, its runtime config and its step-cache key (`None`
/// when the stage is not cached).
struct Built {
    fs: Fs,
    config: Value,
    key: Option<String>,
}

enum Fs {
    /// A build VM (deleted when the build ends).
    Vm(String),
    /// A tree on the host (`FROM scratch`).
    Tree(PathBuf),
}

/// What one stage's instructions have set so far.
struct State {
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
}

/// Everything a build holds until it ends: scratch space, VMs, stage images.
struct Work {
    dir: PathBuf,
    context: PathBuf,
    ignore: Ignore,
    has_context: bool,
    disk_size_mib: u64,
    vms: Vec<String>,
    stage_images: Vec<String>,
    seq: usize,
    /// Look steps up in the cache (off with `force_rebuild`; steps are recorded either way).
    use_cache: bool,
}

impl Work {
    fn next_path(&mut self, what: &str) -> PathBuf {
        self.seq += 1;
        self.dir.join(format!("{what}-{}", self.seq))
    }
}

impl Manager {
    /// Stores an uploaded build context (at most [`MAX_CONTEXT_BYTES`]) for
    /// [`BuildRequest::context`].
    pub async fn receive_context<R: AsyncRead + Unpin>(&self, reader: R) -> Result<ContextTar> {
        let ctx = ContextTar {
            dir: images::scratch_dir(self.storage())?,
        };
        let mut out = tokio::fs::File::create(ctx.tar()).await?;
        let mut limited = reader.take(MAX_CONTEXT_BYTES + 1);
        let n = tokio::io::copy(&mut limited, &mut out).await?;
        if n > MAX_CONTEXT_BYTES {
            return Err(bad(format!(
                "the build context is larger than {} MiB; leave build output and \
                 dependencies out with .dockerignore",
                MAX_CONTEXT_BYTES >> 20
            )));
        }
        out.flush().await?;
        Ok(ctx)
    }

    /// Builds (or reuses) the image a Dockerfile describes and records it under the tag.
    pub async fn build_image(self: &Arc<Self>, req: BuildRequest) -> Result<ImageRecord> {
        let tag = match &req.tag {
            Some(t) => t.clone(),
            None => format!("bandsox-build-{}", crate::storage::new_id()),
        };
        images::validate_reference(&tag)?;
        let dir = images::scratch_dir(self.storage())?;
        let mut work = Work {
            context: dir.join("context"),
            dir,
            ignore: Ignore::default(),
            has_context: req.context.is_some(),
            disk_size_mib: req.disk_size_mib,
            vms: Vec::new(),
            stage_images: Vec::new(),
            seq: 0,
            use_cache: !req.force_rebuild,
        };
        let result = self.build_with(&mut work, req, &tag).await;
        for id in &work.vms {
            if let Err(e) = self.delete_vm(id).await {
                tracing::warn!(vm = %id, error = %e, "cannot delete a build VM");
            }
        }
        for r in &work.stage_images {
            if let Err(e) = images::remove(self.store(), self.storage(), r).await {
                tracing::warn!(image = %r, error = %e, "cannot remove a stage image");
            }
        }
        let _ = std::fs::remove_dir_all(&work.dir);
        result
    }

    async fn build_with(
        self: &Arc<Self>,
        work: &mut Work,
        req: BuildRequest,
        tag: &str,
    ) -> Result<ImageRecord> {
        std::fs::create_dir_all(&work.context)?;
        let context_digest = match &req.context {
            Some(ctx) => {
                let (root, tar) = (work.context.clone(), ctx.tar());
                let stats = blocking(move || {
                    bandsox_image::unpack::apply_layer_file(&root, &tar, None)
                        .map_err(|e| bad(format!("the build context is not a readable tar: {e}")))
                })
                .await?;
                work.ignore = Ignore::of_dir(&work.context);
                stats.diff_id
            }
            None => String::new(),
        };
        drop(req.context);
        let text = match req.dockerfile {
            DockerfileSource::Text(t) => t,
            DockerfileSource::InContext(p) => read_dockerfile(&work.context, &p)?,
        };
        let file = Dockerfile::parse_with(&text, &req.build_args)?;
        // Refused before any VM boots.
        let from_context = file.needed().into_iter().any(|i| {
            file.stages[i]
                .steps
                .iter()
                .any(|s| matches!(s, Step::Copy(Copy { from: None, .. })))
        });
        if from_context && !work.has_context {
            return Err(no_context());
        }

        let mut key = Sha256::new();
        key.update(text.as_bytes());
        for (k, v) in &req.build_args {
            key.update(format!("\0{k}={v}").as_bytes());
        }
        key.update(format!("\0{context_digest}").as_bytes());
        let key = format!("sha256:{}", hex::encode(key.finalize()));
        if let Some(found) = images::find(self.store(), self.storage(), tag)? {
            let meta = images::image_meta(self.storage(), &found.record.digest);
            match meta.as_ref().and_then(|m| m.dockerfile_digest.as_deref()) {
                None => {
                    return Err(CoreError::Conflict(format!(
                        "image `{tag}` exists and was not built from a Dockerfile; \
                         choose another tag"
                    )))
                }
                Some(d) if d == key && !req.force_rebuild => return Ok(found.record),
                Some(_) => {}
            }
        }

        let mut built: Vec<Option<Built>> = (0..file.stages.len()).map(|_| None).collect();
        for i in file.needed() {
            let stage = self
                .run_stage(work, &file.stages[i], &built)
                .await
                .map_err(|e| stage_error(&file, i, e))?;
            built[i] = Some(stage);
        }
        let last = built
            .pop()
            .flatten()
            .expect("needed() always holds the last stage");
        let meta = ImageMeta {
            source: "dockerfile".into(),
            dockerfile_digest: Some(key),
            ..Default::default()
        };
        self.record_built(work, &last, tag, meta).await
    }

    /// Runs one stage's instructions in its own VM (or tree, for `FROM scratch`). A stage
    /// from an image resumes from the longest run of its steps found in the step cache.
    async fn run_stage(
        self: &Arc<Self>,
        work: &mut Work,
        stage: &Stage,
        built: &[Option<Built>],
    ) -> Result<Built> {
        let mut start = 0;
        let mut keys: Vec<Option<String>> = Vec::new();
        let (fs, base) = match &stage.base {
            Base::Scratch => {
                let tree = work.next_path("tree");
                std::fs::create_dir_all(&tree)?;
                (Fs::Tree(tree), json!({}))
            }
            Base::Image(reference) => {
                let known = images::find(self.store(), self.storage(), reference)?;
                // An image not pulled yet is pulled by the first VM; nothing is cached of it.
                let (id, digest) = match known {
                    Some(found) => {
                        let digest = found.record.digest;
                        keys = self.step_keys(work, stage, built, &digest).await?;
                        let hit = if work.use_cache {
                            self.longest_cached(stage, &keys)?
                        } else {
                            None
                        };
                        let id = match hit {
                            Some((n, snapshot)) => {
                                start = n + 1;
                                self.cached_vm(work, &snapshot).await?
                            }
                            None => self.build_vm(work, reference).await?,
                        };
                        (id, digest)
                    }
                    None => {
                        let id = self.build_vm(work, reference).await?;
                        let digest = self.get_vm(&id)?.image_digest;
                        keys = self.step_keys(work, stage, built, &digest).await?;
                        (id, digest)
                    }
                };
                (
                    Fs::Vm(id),
                    images::image_config(self.store(), self.storage(), &digest),
                )
            }
            Base::Stage(j) => {
                let earlier = built[*j]
                    .as_ref()
                    .expect("needed() builds a stage's base before it");
                let reference = format!("bandsox-build-stage-{}", crate::storage::new_id());
                let meta = ImageMeta {
                    source: "dockerfile".into(),
                    ..Default::default()
                };
                self.record_built(work, earlier, &reference, meta).await?;
                work.stage_images.push(reference.clone());
                let id = self.build_vm(work, &reference).await?;
                (Fs::Vm(id), earlier.config.clone())
            }
        };
        let mut state = State {
            env: BTreeMap::new(),
            cwd: base["WorkingDir"]
                .as_str()
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            user: None,
        };
        for (n, step) in stage.steps.iter().enumerate() {
            if n < start {
                // Its effect on the disk is in the restored snapshot; replay the rest.
                state.replay(step);
                continue;
            }
            self.run_step(work, &fs, &mut state, step, built)
                .await
                .map_err(|e| step_error(n, step, e))?;
            if let (Fs::Vm(id), Some(Some(key))) = (&fs, keys.get(n)) {
                if matches!(step, Step::Run(_) | Step::Copy(_)) {
                    self.save_step(id, key).await;
                }
            }
        }
        let config = stage.config(&base);
        let key = keys.last().cloned().flatten();
        Ok(Built { fs, config, key })
    }

    /// The step key after each step of `stage` (from image `digest`); `None` from a step on
    /// that copies from a stage without a key.
    async fn step_keys(
        &self,
        work: &Work,
        stage: &Stage,
        built: &[Option<Built>],
        digest: &str,
    ) -> Result<Vec<Option<String>>> {
        let mut prev = Some(cache::chain("", "FROM", digest));
        let mut keys = Vec::with_capacity(stage.steps.len());
        for step in &stage.steps {
            let extra = match step {
                Step::Copy(Copy { from: Some(j), .. }) => {
                    built[*j].as_ref().and_then(|b| b.key.clone())
                }
                Step::Copy(c) if work.has_context => {
                    let (root, ignore, sources) =
                        (work.context.clone(), work.ignore.clone(), c.sources.clone());
                    Some(
                        blocking(move || {
                            let rels = context::resolve_sources(&root, &sources, &ignore)?;
                            context::digest(&root, &rels, &ignore)
                        })
                        .await
                        // A source error is reported when the step runs.
                        .unwrap_or_default(),
                    )
                }
                _ => Some(String::new()),
            };
            prev = match (prev, extra) {
                (Some(p), Some(x)) => Some(cache::chain(&p, &format!("{step:?}"), &x)),
                _ => None,
            };
            keys.push(prev.clone());
        }
        Ok(keys)
    }

    /// The last step of the longest cached run of `stage`'s steps, and its snapshot.
    fn longest_cached(
        &self,
        stage: &Stage,
        keys: &[Option<String>],
    ) -> Result<Option<(usize, String)>> {
        let cached = self.cached_steps()?;
        let mut hit = None;
        for (n, step) in stage.steps.iter().enumerate() {
            if !matches!(step, Step::Run(_) | Step::Copy(_)) {
                continue;
            }
            let Some(Some(key)) = keys.get(n) else {
                break;
            };
            match cached.get(key) {
                Some(snapshot) => hit = Some((n, snapshot.clone())),
                None => break,
            }
        }
        Ok(hit)
    }

    /// A build VM restored from a cache snapshot.
    async fn cached_vm(self: &Arc<Self>, work: &mut Work, snapshot: &str) -> Result<String> {
        let opts = crate::snapshots::RestoreOptions {
            metadata: Some(json!({ "bandsox.build": "dockerfile" })),
            ..Default::default()
        };
        let vm = self.restore_snapshot(snapshot, opts).await?;
        work.vms.push(vm.id.clone());
        Ok(vm.id)
    }

    async fn build_vm(self: &Arc<Self>, work: &mut Work, image: &str) -> Result<String> {
        let mut create = CreateVm::new(image.to_owned());
        create.disk_size_mib = work.disk_size_mib;
        create.mem_mib = 512;
        create.metadata = json!({ "bandsox.build": "dockerfile" });
        let vm = self.create_vm(create).await?;
        work.vms.push(vm.id.clone());
        Ok(vm.id)
    }

    async fn run_step(
        &self,
        work: &mut Work,
        fs: &Fs,
        state: &mut State,
        step: &Step,
        built: &[Option<Built>],
    ) -> Result<()> {
        match (step, fs) {
            (Step::Env(..) | Step::Arg(..) | Step::User(_), _) => state.replay(step),
            (Step::Workdir(d), _) => {
                let dir = resolve_dir(state.cwd.as_deref(), d);
                if let Fs::Vm(id) = fs {
                    let mkdir = vec!["mkdir".into(), "-p".into(), dir.clone()];
                    self.run_command(id, mkdir, &state.env, None, Some("0"))
                        .await?;
                }
                state.cwd = Some(dir);
            }
            (Step::Run(argv), Fs::Vm(id)) => {
                self.run_command(
                    id,
                    argv.clone(),
                    &state.env,
                    state.cwd.as_deref(),
                    state.user.as_deref(),
                )
                .await?;
            }
            (Step::Copy(copy), _) => self.copy_step(work, fs, state, copy, built).await?,
            _ => {}
        }
        Ok(())
    }

    /// `COPY`/`ADD`: packs the sources at their destination and unpacks them in the stage.
    async fn copy_step(
        &self,
        work: &mut Work,
        fs: &Fs,
        state: &State,
        copy: &Copy,
        built: &[Option<Built>],
    ) -> Result<()> {
        let (root, ignore) = match copy.from {
            None if !work.has_context => return Err(no_context()),
            None => (work.context.clone(), work.ignore.clone()),
            Some(j) => {
                let from = built[j]
                    .as_ref()
                    .expect("needed() builds a --from stage before it");
                match &from.fs {
                    Fs::Tree(t) => (t.clone(), Ignore::default()),
                    Fs::Vm(id) => {
                        let dir = work.next_path("from");
                        self.export_paths(work, id, &copy.sources, &dir).await?;
                        (dir, Ignore::default())
                    }
                }
            }
        };
        let dest = if copy.dest.starts_with('/') {
            copy.dest.clone()
        } else {
            let cwd = state.cwd.as_deref().unwrap_or("/").trim_end_matches('/');
            format!("{cwd}/{}", copy.dest)
        };
        let (mut owner, mut chown_by_name) = owner_of(copy)?;
        if let (Fs::Tree(t), Some(spec)) = (fs, &chown_by_name) {
            // No guest to run `chown` in: the names are looked up in the tree's own files.
            owner = tree::resolve_owner(t, spec, owner)?;
            chown_by_name = None;
        }
        let dest_is_dir = match fs {
            Fs::Vm(id) => self
                .stat(id, dest.trim_end_matches('/'))
                .await?
                .is_some_and(|e| e.is_dir),
            Fs::Tree(t) => t.join(dest.trim_start_matches('/')).is_dir(),
        };
        let tar = work.next_path("copy.tar");
        let (sources, add, d, t) = (copy.sources.clone(), copy.add, dest.clone(), tar.clone());
        let packed: Packed = blocking(move || {
            let rels = context::resolve_sources(&root, &sources, &ignore)?;
            context::pack(&root, &rels, &d, dest_is_dir, owner, add, &ignore, &t)
        })
        .await?;
        match fs {
            Fs::Tree(t) => {
                unpack_into(t, &tar).await?;
                for (aside, into) in packed.archives {
                    let (t, scratch) = (t.clone(), work.next_path("add"));
                    blocking(move || tree::unpack_archive(&t, &aside, &into, &scratch)).await?;
                }
            }
            Fs::Vm(id) => {
                let mut file = tokio::fs::File::open(&tar).await?;
                let opts = WriteOptions {
                    mode: Some(0o600),
                    ..Default::default()
                };
                self.upload(id, GUEST_COPY_TAR, &mut file, opts).await?;
                let env = BTreeMap::new();
                let unpack = format!(
                    "tar -xf {GUEST_COPY_TAR} -C /; rc=$?; rm -f {GUEST_COPY_TAR}; exit $rc"
                );
                self.run_command(id, sh(&unpack, &[]), &env, None, Some("0"))
                    .await?;
                for (aside, into) in &packed.archives {
                    let script = "mkdir -p \"$2\" && tar -xf \"$1\" -C \"$2\"; rc=$?; rm -f \"$1\"; exit $rc";
                    self.run_command(id, sh(script, &[aside, into]), &env, None, Some("0"))
                        .await?;
                }
                if let Some(spec) = chown_by_name {
                    if !packed.tops.is_empty() {
                        let mut argv = vec!["chown".to_owned(), "-R".into(), spec, "--".into()];
                        argv.extend(packed.tops.iter().cloned());
                        self.run_command(id, argv, &env, None, Some("0")).await?;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&tar);
        Ok(())
    }

    /// Copies `sources` (plain paths; for a pattern, the folder above its first wildcard) out
    /// of build VM `id` into folder `dest` on the host.
    async fn export_paths(
        &self,
        work: &mut Work,
        id: &str,
        sources: &[String],
        dest: &Path,
    ) -> Result<()> {
        let mut args = Vec::new();
        for s in sources {
            // A pattern is matched on the host (as for the context) in what is exported: the
            // folder above its first wildcard.
            let rel = s.trim_start_matches('/');
            let rel = if context::has_glob(rel) {
                let plain: Vec<&str> = rel
                    .split('/')
                    .take_while(|c| !context::has_glob(c))
                    .collect();
                plain.join("/")
            } else {
                rel.to_owned()
            };
            if rel.is_empty() && context::has_glob(s) {
                return Err(bad(format!(
                    "COPY --from: a pattern needs a folder before its first wildcard (`{s}`); \
                     the whole file system of a stage is not exported"
                )));
            }
            let rel = rel.as_str();
            args.push(if rel.is_empty() {
                ".".to_owned()
            } else {
                format!("./{rel}")
            });
        }
        let tar = work.next_path("from.tar");
        let argv = sh(
            "cd / && exec tar -cf - \"$@\"",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        self.stream_tar(id, argv, &tar).await?;
        unpack_into(dest, &tar).await?;
        let _ = std::fs::remove_file(&tar);
        Ok(())
    }

    /// Records a built stage's files as image `reference`.
    async fn record_built(
        self: &Arc<Self>,
        work: &mut Work,
        built: &Built,
        reference: &str,
        meta: ImageMeta,
    ) -> Result<ImageRecord> {
        // A stage built in a VM keeps its device nodes and setuid/setgid/sticky bits (in the
        // base disk only, never on the host); a tree assembled by COPY alone does not.
        let (tree, held) = match &built.fs {
            Fs::Tree(t) => (t.clone(), bandsox_image::unpack::HeldModes::default()),
            Fs::Vm(id) => {
                let tar = work.next_path("rootfs.tar");
                self.export_tree(id, &tar).await?;
                let tree = work.next_path("rootfs");
                let held =
                    unpack_image_tree(&tree, &tar, images::unpack_limit(self.storage())?).await?;
                let _ = std::fs::remove_file(&tar);
                (tree, held)
            }
        };
        for d in VIRTUAL_DIRS {
            std::fs::create_dir_all(tree.join(d))?;
        }
        let me = Arc::clone(self);
        let (reference, config) = (reference.to_owned(), built.config.clone());
        blocking(move || {
            images::record_tree(
                me.store(),
                me.storage(),
                &reference,
                &tree,
                &held,
                config,
                meta,
            )
        })
        .await
    }

    /// Runs one build command to completion; a non-zero exit is a build failure.
    async fn run_command(
        &self,
        id: &str,
        argv: Vec<String>,
        env: &BTreeMap<String, String>,
        cwd: Option<&str>,
        user: Option<&str>,
    ) -> Result<()> {
        let req = ExecRequest {
            argv: Some(argv),
            env: env.clone(),
            cwd: cwd.map(str::to_owned),
            user: user.map(str::to_owned),
            timeout_ms: Some(STEP_TIMEOUT_MS),
            ..Default::default()
        };
        let out = self.exec(id, req, None, 1 << 20).await?;
        if out.status.exit_code == Some(0) {
            return Ok(());
        }
        let mut text = out.stderr.clone();
        if text.is_empty() {
            text = out.stdout.clone();
        }
        let tail = &text[text.len().saturating_sub(ERROR_TAIL_BYTES)..];
        let why = if out.status.timed_out {
            "timed out".to_owned()
        } else {
            match (out.status.exit_code, out.status.signal) {
                (Some(c), _) => format!("exited with {c}"),
                (_, Some(s)) => format!("was killed by signal {s}"),
                _ => "failed".to_owned(),
            }
        };
        Err(CoreError::BuildFailed(format!(
            "{why}: {}",
            String::from_utf8_lossy(tail).trim_end()
        )))
    }

    /// Streams the guest's root tree as a tar into `dest` (kernel file systems left out).
    async fn export_tree(&self, id: &str, dest: &Path) -> Result<()> {
        // Top-level entries but the kernel file systems, as arguments: busybox tar has no
        // --exclude. The script is fixed text; nothing from the user reaches it.
        let skip = VIRTUAL_DIRS.join("|");
        let script = format!(
            "cd / && set -- && for e in .[!.]* ..?* *; do \
               [ -e \"$e\" ] || [ -L \"$e\" ] || continue; \
               case \"$e\" in {skip}) continue;; esac; set -- \"$@\" \"./$e\"; \
             done; exec tar -cf - \"$@\""
        );
        self.stream_tar(id, sh(&script, &[]), dest).await
    }

    /// Runs `argv` as root in build VM `id`, its standard output (a tar) into `dest`.
    async fn stream_tar(&self, id: &str, argv: Vec<String>, dest: &Path) -> Result<()> {
        let req = ExecRequest {
            argv: Some(argv),
            user: Some("0".into()),
            timeout_ms: Some(STEP_TIMEOUT_MS),
            ..Default::default()
        };
        let mut stream = self.exec_stream(id, req, None).await?;
        let mut out = tokio::fs::File::create(dest).await?;
        let mut err = Vec::new();
        while let Some(ev) = stream.next().await? {
            match ev {
                crate::guest::commands::ExecEvent::Stdout(b) => out.write_all(&b).await?,
                crate::guest::commands::ExecEvent::Stderr(b) if err.len() < ERROR_TAIL_BYTES => {
                    err.extend_from_slice(&b);
                }
                crate::guest::commands::ExecEvent::Exited(s) if s.exit_code != Some(0) => {
                    return Err(CoreError::BuildFailed(format!(
                        "copying files out of the build VM with `tar` failed (the image \
                         needs tar): {}",
                        String::from_utf8_lossy(&err).trim_end()
                    )));
                }
                _ => {}
            }
        }
        out.flush().await?;
        Ok(())
    }
}

fn no_context() -> CoreError {
    bad(
        "COPY/ADD need a build context: build a folder (`bandsox build DIR`), or send the \
         context as a tar (the `context` part of the form, or a tar body)"
            .into(),
    )
}

impl State {
    /// What a step already run (in a cached snapshot) sets for the steps after it.
    fn replay(&mut self, step: &Step) {
        match step {
            Step::Env(k, v) | Step::Arg(k, v) => {
                self.env.insert(k.clone(), v.clone());
            }
            Step::User(u) => self.user = Some(u.clone()),
            Step::Workdir(d) => self.cwd = Some(resolve_dir(self.cwd.as_deref(), d)),
            _ => {}
        }
    }
}

/// `/bin/sh -c script sh args…`: arguments reach the script as `$1…`, never as its text.
fn sh(script: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "/bin/sh".to_owned(),
        "-c".into(),
        script.to_owned(),
        "sh".into(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// `--chown`/`--chmod` as tar ownership; a user or group name is applied with `chown` in the
/// guest afterwards (its `/etc/passwd` decides).
fn owner_of(copy: &Copy) -> Result<(Owner, Option<String>)> {
    let mut owner = Owner {
        mode: copy.chmod,
        ..Owner::default()
    };
    let Some(spec) = &copy.chown else {
        return Ok((owner, None));
    };
    let (u, g) = spec.split_once(':').unwrap_or((spec, spec));
    match (u.parse::<u64>(), g.parse::<u64>()) {
        (Ok(uid), Ok(gid)) => {
            owner.uid = uid;
            owner.gid = gid;
            Ok((owner, None))
        }
        _ => {
            let valid = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            };
            if !valid(u) || !valid(g) {
                return Err(bad(format!("--chown=`{spec}` is not user[:group]")));
            }
            Ok((owner, Some(spec.clone())))
        }
    }
}

/// The Dockerfile at `path` inside the context (it cannot escape it).
fn read_dockerfile(context: &Path, path: &str) -> Result<String> {
    let rels = context::resolve_sources(context, &[path.to_owned()], &Ignore::default())
        .map_err(|_| bad(format!("the build context has no Dockerfile at `{path}`")))?;
    let file = context.join(&rels[0]);
    let len = std::fs::metadata(&file)?.len();
    if len > MAX_DOCKERFILE_BYTES as u64 || !file.is_file() {
        return Err(bad(format!(
            "`{path}` in the build context is not a Dockerfile of at most {MAX_DOCKERFILE_BYTES} bytes"
        )));
    }
    String::from_utf8(std::fs::read(&file)?)
        .map_err(|_| bad(format!("the Dockerfile `{path}` is not UTF-8")))
}

/// Unpacks tar `tar` (from a build VM or a `COPY`) into folder `dir`, created if missing,
/// with the safe unpacker image layers use.
async fn unpack_into(dir: &Path, tar: &Path) -> Result<()> {
    let (dir, tar) = (dir.to_path_buf(), tar.to_path_buf());
    blocking(move || {
        std::fs::create_dir_all(&dir)?;
        bandsox_image::unpack::apply_layer_file(&dir, &tar, None)?;
        Ok(())
    })
    .await
}

/// Unpacks a stage's root filesystem tar into `dir` (created) within `limit`; what must not
/// reach the host is returned for the base disk.
async fn unpack_image_tree(
    dir: &Path,
    tar: &Path,
    limit: images::UnpackLimit,
) -> Result<bandsox_image::unpack::HeldModes> {
    let (dir, tar) = (dir.to_path_buf(), tar.to_path_buf());
    blocking(move || {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let mut unpacker = bandsox_image::unpack::Unpacker::with_limit(limit.bytes);
        unpacker
            .apply_layer_file(&dir, &tar, None)
            .map_err(|e| limit.explain(e))?;
        Ok(unpacker.held)
    })
    .await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Io(std::io::Error::other(e)))?
}

fn step_error(n: usize, step: &Step, e: CoreError) -> CoreError {
    let what = match step {
        Step::Run(argv) => format!("RUN {}", argv.join(" ")),
        Step::Workdir(d) => format!("WORKDIR {d}"),
        Step::Copy(c) => format!(
            "{} {} {}",
            if c.add { "ADD" } else { "COPY" },
            c.sources.join(" "),
            c.dest
        ),
        _ => String::new(),
    };
    match e {
        CoreError::BuildFailed(m) => CoreError::BuildFailed(format!("step {} `{what}` {m}", n + 1)),
        CoreError::InvalidInput(m) if !what.is_empty() => {
            CoreError::InvalidInput(format!("step {} `{what}`: {m}", n + 1))
        }
        other => other,
    }
}

fn stage_error(file: &Dockerfile, i: usize, e: CoreError) -> CoreError {
    if file.stages.len() < 2 {
        return e;
    }
    let name = file.stages[i]
        .name
        .as_ref()
        .map_or_else(|| format!("stage {i}"), |n| format!("stage `{n}`"));
    match e {
        CoreError::BuildFailed(m) => CoreError::BuildFailed(format!("{name}: {m}")),
        CoreError::InvalidInput(m) => CoreError::InvalidInput(format!("{name}: {m}")),
        other => other,
    }
}
