//! Images from Dockerfiles, built inside a VM (no Docker daemon, no build context).
//!
//! `FROM` names an image bandsox can resolve (pulled on demand). Each `RUN` executes in a build
//! VM of that image with the environment, working directory and user the instructions before it
//! set. The finished root filesystem is then streamed out of the guest as a tar, unpacked on the
//! host with the same safe unpacker registry layers use (the guest is untrusted), and recorded
//! as a new image whose runtime config is the base image's, changed by `ENV`, `WORKDIR`, `USER`,
//! `CMD`, `ENTRYPOINT`, `EXPOSE` and `LABEL`.
//!
//! There is no build context: `COPY` and `ADD` are refused (BandSox sent the server's own temp
//! directory as context, which leaked host files into images). A tag never replaces an image
//! that was not built from a Dockerfile, and a cached build is reused only for the same text.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bandsox_protocol::ExecRequest;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{CoreError, Result};
use crate::images::{self, ImageMeta};
use crate::manager::{CreateVm, Manager};
use crate::store::ImageRecord;

/// Largest Dockerfile accepted.
pub const MAX_DOCKERFILE_BYTES: usize = 256 << 10;
/// Longest one `RUN` step may take.
const STEP_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// Output kept from a failed step for the error message.
const ERROR_TAIL_BYTES: usize = 2000;
/// Paths left out of the exported tree (kernel file systems the agent mounts at boot).
const VIRTUAL_DIRS: [&str; 3] = ["proc", "sys", "dev"];

/// A parsed single-stage Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    pub from: String,
    pub steps: Vec<Step>,
}

/// One instruction after `FROM`, with build arguments already substituted.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Program and arguments (shell form is wrapped in the current `SHELL`).
    Run(Vec<String>),
    Env(String, String),
    Workdir(String),
    User(String),
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    Expose(String),
    Label(String, String),
}

impl Dockerfile {
    /// Parses the subset of the Dockerfile language a context-free build can honour.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_DOCKERFILE_BYTES {
            return Err(bad(format!(
                "the Dockerfile is larger than {MAX_DOCKERFILE_BYTES} bytes"
            )));
        }
        let mut from = None;
        let mut steps = Vec::new();
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let mut shell = vec!["/bin/sh".to_owned(), "-c".to_owned()];
        for (line_no, line) in logical_lines(text) {
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let rest = rest.trim();
            let at = |msg: String| bad(format!("line {line_no}: {msg}"));
            let instr = word.to_ascii_uppercase();
            if from.is_none() && instr != "FROM" && instr != "ARG" {
                return Err(at(format!("`{word}` before FROM")));
            }
            match instr.as_str() {
                "FROM" => {
                    if from.is_some() {
                        return Err(at(
                            "multi-stage builds (a second FROM) are not supported".into()
                        ));
                    }
                    let mut parts = rest.split_whitespace().filter(|p| !p.starts_with("--"));
                    let image = parts
                        .next()
                        .ok_or_else(|| at("FROM needs an image".into()))?;
                    from = Some(substitute(image, &vars));
                }
                "ARG" => {
                    let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                    check_name(k).map_err(at)?;
                    // An ARG without a default keeps any value an earlier ARG gave it.
                    if rest.contains('=') || !vars.contains_key(k) {
                        vars.insert(k.to_owned(), unquote(v));
                    }
                }
                "RUN" => {
                    let argv = exec_form(rest, &shell);
                    if rest.is_empty() || argv.is_empty() {
                        return Err(at("RUN needs a command".into()));
                    }
                    steps.push(Step::Run(argv));
                }
                "ENV" => {
                    for (k, v) in key_values(rest).map_err(at)? {
                        let v = substitute(&v, &vars);
                        vars.insert(k.clone(), v.clone());
                        steps.push(Step::Env(k, v));
                    }
                }
                "LABEL" => {
                    for (k, v) in key_values(rest).map_err(at)? {
                        steps.push(Step::Label(k, substitute(&v, &vars)));
                    }
                }
                "WORKDIR" => {
                    let dir = substitute(&unquote(rest), &vars);
                    if dir.is_empty() || dir.contains('\0') {
                        return Err(at("WORKDIR needs a path".into()));
                    }
                    steps.push(Step::Workdir(dir));
                }
                "USER" => {
                    let user = substitute(rest, &vars);
                    if user.is_empty() || user.contains(char::is_whitespace) {
                        return Err(at("USER needs one user name or uid".into()));
                    }
                    steps.push(Step::User(user));
                }
                "CMD" | "ENTRYPOINT" => {
                    let argv = exec_form(rest, &shell);
                    steps.push(if instr == "CMD" {
                        Step::Cmd(argv)
                    } else {
                        Step::Entrypoint(argv)
                    });
                }
                "EXPOSE" => {
                    for p in rest.split_whitespace() {
                        let p = substitute(p, &vars);
                        let (port, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                        if port.parse::<u16>().map_or(true, |n| n == 0)
                            || !matches!(proto, "tcp" | "udp" | "sctp")
                        {
                            return Err(at(format!("EXPOSE: `{p}` is not a port")));
                        }
                        steps.push(Step::Expose(format!("{port}/{proto}")));
                    }
                }
                "SHELL" => {
                    shell = json_array(rest)
                        .filter(|a| !a.is_empty())
                        .ok_or_else(|| at("SHELL needs a JSON array".into()))?;
                }
                "COPY" | "ADD" => {
                    return Err(at(format!(
                        "{instr} is not supported: builds have no context directory; \
                         create the VM, then upload files (or build the image elsewhere and \
                         `bandsox image import` it)"
                    )));
                }
                // Accepted and without effect on a VM image.
                "VOLUME" | "STOPSIGNAL" | "HEALTHCHECK" | "MAINTAINER" => {}
                "ONBUILD" => return Err(at("ONBUILD is not supported".into())),
                _ => return Err(at(format!("unknown instruction `{word}`"))),
            }
        }
        let from = from.ok_or_else(|| bad("the Dockerfile has no FROM".into()))?;
        if from.eq_ignore_ascii_case("scratch") {
            return Err(bad(
                "FROM scratch is not supported: RUN needs a base image with a shell".into(),
            ));
        }
        Ok(Self { from, steps })
    }

    /// The runtime config of the built image: `base` changed by the instructions.
    fn config(&self, base: &Value) -> Value {
        let mut c = if base.is_object() {
            base.clone()
        } else {
            json!({})
        };
        let mut env = images::image_env(base);
        for step in &self.steps {
            match step {
                Step::Env(k, v) => {
                    env.insert(k.clone(), v.clone());
                }
                Step::Workdir(d) => {
                    c["WorkingDir"] = json!(resolve_dir(c["WorkingDir"].as_str(), d));
                }
                Step::User(u) => c["User"] = json!(u),
                Step::Cmd(a) => c["Cmd"] = json!(a),
                Step::Entrypoint(a) => {
                    c["Entrypoint"] = json!(a);
                    // As Docker does: a new ENTRYPOINT drops the base image's CMD.
                    c["Cmd"] = Value::Null;
                }
                Step::Expose(p) => {
                    if !c["ExposedPorts"].is_object() {
                        c["ExposedPorts"] = json!({});
                    }
                    c["ExposedPorts"][p] = json!({});
                }
                Step::Label(k, v) => {
                    if !c["Labels"].is_object() {
                        c["Labels"] = json!({});
                    }
                    c["Labels"][k] = json!(v);
                }
                Step::Run(_) => {}
            }
        }
        c["Env"] = json!(env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>());
        c
    }
}

/// What to build and what to call it.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub dockerfile: String,
    /// Image reference to record; `bandsox-build-<id>` when absent.
    pub tag: Option<String>,
    /// Build again even when the tag holds a build of the same Dockerfile.
    pub force_rebuild: bool,
    /// Writable disk of the build VM.
    pub disk_size_mib: u64,
}

impl Manager {
    /// Builds (or reuses) the image a Dockerfile describes and records it under the tag.
    pub async fn build_image(self: &Arc<Self>, req: BuildRequest) -> Result<ImageRecord> {
        let file = Dockerfile::parse(&req.dockerfile)?;
        let tag = match req.tag {
            Some(t) => t,
            None => format!("bandsox-build-{}", crate::storage::new_id()),
        };
        images::validate_reference(&tag)?;
        let text_digest = format!("sha256:{}", hex::encode(Sha256::digest(&req.dockerfile)));
        if let Some(found) = images::find(self.store(), self.storage(), &tag)? {
            let meta = images::image_meta(self.storage(), &found.record.digest);
            let built_from = meta.as_ref().and_then(|m| m.dockerfile_digest.as_deref());
            match built_from {
                None => {
                    return Err(CoreError::Conflict(format!(
                        "image `{tag}` exists and was not built from a Dockerfile; \
                         choose another tag"
                    )))
                }
                Some(d) if d == text_digest && !req.force_rebuild => return Ok(found.record),
                Some(_) => {}
            }
        }

        let mut create = CreateVm::new(file.from.clone());
        create.disk_size_mib = req.disk_size_mib;
        create.mem_mib = 512;
        create.metadata = json!({ "bandsox.build": tag });
        let vm = self.create_vm(create).await?;
        let result = self.build_in(&vm.id, &file, &tag, &text_digest).await;
        if let Err(e) = self.delete_vm(&vm.id).await {
            tracing::warn!(vm = %vm.id, error = %e, "cannot delete a build VM");
        }
        result
    }

    /// Runs the steps in build VM `id`, exports its tree and records the image.
    async fn build_in(
        self: &Arc<Self>,
        id: &str,
        file: &Dockerfile,
        tag: &str,
        text_digest: &str,
    ) -> Result<ImageRecord> {
        let base_digest = self.get_vm(id)?.image_digest.clone();
        let base = images::image_config(self.store(), self.storage(), &base_digest);
        let mut env = BTreeMap::new();
        let mut cwd: Option<String> = None;
        let mut user: Option<String> = None;
        for (n, step) in file.steps.iter().enumerate() {
            match step {
                Step::Env(k, v) => {
                    env.insert(k.clone(), v.clone());
                }
                Step::Workdir(d) => {
                    let dir = resolve_dir(cwd.as_deref(), d);
                    self.run_step(
                        id,
                        vec!["mkdir".into(), "-p".into(), dir.clone()],
                        &env,
                        None,
                        Some("0"),
                    )
                    .await
                    .map_err(|e| step_error(n, &format!("WORKDIR {d}"), e))?;
                    cwd = Some(dir);
                }
                Step::User(u) => user = Some(u.clone()),
                Step::Run(argv) => {
                    self.run_step(id, argv.clone(), &env, cwd.as_deref(), user.as_deref())
                        .await
                        .map_err(|e| step_error(n, &format!("RUN {}", argv.join(" ")), e))?;
                }
                _ => {}
            }
        }
        let scratch = images::scratch_dir(self.storage())?;
        let result = async {
            let tar = scratch.join("rootfs.tar");
            self.export_tree(id, &tar).await?;
            let tree = scratch.join("tree");
            let (tar2, tree2) = (tar.clone(), tree.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                std::fs::create_dir_all(&tree2)?;
                bandsox_image::unpack::apply_layer_file(&tree2, &tar2, None)?;
                for d in VIRTUAL_DIRS {
                    std::fs::create_dir_all(tree2.join(d))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| CoreError::Io(std::io::Error::other(e)))??;
            let _ = std::fs::remove_file(&tar);
            let meta = ImageMeta {
                source: "dockerfile".into(),
                dockerfile_digest: Some(text_digest.to_owned()),
                ..Default::default()
            };
            let me = Arc::clone(self);
            let (tag, config) = (tag.to_owned(), file.config(&base));
            tokio::task::spawn_blocking(move || {
                images::record_tree(me.store(), me.storage(), &tag, &tree, config, meta)
            })
            .await
            .map_err(|e| CoreError::Io(std::io::Error::other(e)))?
        }
        .await;
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    /// Runs one build command to completion; a non-zero exit is a build failure.
    async fn run_step(
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
        let req = ExecRequest {
            argv: Some(vec!["/bin/sh".into(), "-c".into(), script]),
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
                        "exporting the file system with `tar` failed (the image needs tar): {}",
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

fn bad(msg: String) -> CoreError {
    CoreError::InvalidInput(msg)
}

fn step_error(n: usize, what: &str, e: CoreError) -> CoreError {
    match e {
        CoreError::BuildFailed(m) => CoreError::BuildFailed(format!("step {} `{what}` {m}", n + 1)),
        other => other,
    }
}

/// `WORKDIR` relative to the current one, as Docker resolves it.
fn resolve_dir(current: Option<&str>, dir: &str) -> String {
    if dir.starts_with('/') {
        return dir.to_owned();
    }
    let cur = current.filter(|s| !s.is_empty()).unwrap_or("/");
    format!("{}/{dir}", cur.trim_end_matches('/'))
}

/// Lines joined over `\` continuations, without comments and blank lines, with line numbers.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && cur.is_empty()) {
            continue;
        }
        if cur.is_empty() {
            start = i + 1;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                out.push((start, std::mem::take(&mut cur).trim().to_owned()));
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push((start, cur.trim().to_owned()));
    }
    out
}

/// The argv of `RUN`/`CMD`/`ENTRYPOINT`: the exec form `["a", "b"]`, else the text run by
/// the current `SHELL`.
fn exec_form(s: &str, shell: &[String]) -> Vec<String> {
    json_array(s).unwrap_or_else(|| shell.iter().cloned().chain([s.to_owned()]).collect())
}

/// The exec form `["a", "b"]`, if `s` is one.
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str(s).ok()
}

fn check_name(k: &str) -> std::result::Result<(), String> {
    let starts_ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    if !starts_ok || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{k}` is not a valid variable name"));
    }
    Ok(())
}

/// `k=v k2="v 2"` pairs, or the legacy one-pair form `k v w`.
fn key_values(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let first = s.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (k, v) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
        check_name(k)?;
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    let mut out = Vec::new();
    for word in split_words(s)? {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value"))?;
        check_name(k.trim_matches('"'))?;
        out.push((k.trim_matches('"').to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Splits on whitespace outside double quotes, removing the quotes and `\` escapes.
fn split_words(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' => {
                cur.extend(chars.next());
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s)
        .to_owned()
}

/// `$NAME` and `${NAME}` from build arguments and earlier `ENV`s; unknown names become empty.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => (inner, after.len()),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(vars.get(name).map(String::as_str).unwrap_or_default());
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_supported_instructions() {
        let f = Dockerfile::parse(
            "# comment\nARG BASE=bandsox/busybox\nFROM ${BASE} AS build\n\
             ENV A=1 B=\"two words\"\nENV LEGACY some value\nWORKDIR /app\nWORKDIR sub\n\
             RUN echo $A && \\\n    echo done\nRUN [\"/bin/echo\", \"hi\"]\nUSER nobody\n\
             EXPOSE 8080 53/udp\nLABEL k=v\nCMD [\"sh\"]\n",
        )
        .unwrap();
        assert_eq!(f.from, "bandsox/busybox");
        assert_eq!(
            f.steps,
            vec![
                Step::Env("A".into(), "1".into()),
                Step::Env("B".into(), "two words".into()),
                Step::Env("LEGACY".into(), "some value".into()),
                Step::Workdir("/app".into()),
                Step::Workdir("sub".into()),
                Step::Run(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo $A &&  echo done".into()
                ]),
                Step::Run(vec!["/bin/echo".into(), "hi".into()]),
                Step::User("nobody".into()),
                Step::Expose("8080/tcp".into()),
                Step::Expose("53/udp".into()),
                Step::Label("k".into(), "v".into()),
                Step::Cmd(vec!["sh".into()]),
            ]
        );
        let c = f.config(&json!({"Env": ["PATH=/bin", "A=0"], "Cmd": ["old"]}));
        assert_eq!(
            c["Env"],
            json!(["A=1", "B=two words", "LEGACY=some value", "PATH=/bin"])
        );
        assert_eq!(c["WorkingDir"], "/app/sub");
        assert_eq!(c["User"], "nobody");
        assert_eq!(c["Cmd"], json!(["sh"]));
        assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}, "53/udp": {}}));
        assert_eq!(c["Labels"], json!({"k": "v"}));
    }

    #[test]
    fn refuses_what_it_cannot_build() {
        for (text, needle) in [
            ("RUN true", "before FROM"),
            ("FROM a\nFROM b", "multi-stage"),
            ("FROM a\nCOPY . /x", "no context"),
            ("FROM a\nADD http://x /y", "no context"),
            ("FROM scratch", "scratch"),
            ("FROM a\nFROBNICATE", "unknown instruction"),
            ("FROM a\nEXPOSE 0", "not a port"),
            ("FROM a\nEXPOSE 70000", "not a port"),
            ("FROM a\nENV 1x=2", "not a valid variable"),
            ("FROM a\nENV A=\"open", "unterminated"),
            ("# nothing", "no FROM"),
        ] {
            let e = Dockerfile::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let huge = format!("FROM a\nRUN {}", "x".repeat(MAX_DOCKERFILE_BYTES));
        assert!(Dockerfile::parse(&huge).is_err());
    }

    #[test]
    fn entrypoint_drops_the_base_cmd() {
        let f = Dockerfile::parse("FROM a\nENTRYPOINT [\"/x\"]").unwrap();
        let c = f.config(&json!({"Cmd": ["sh"]}));
        assert_eq!(c["Entrypoint"], json!(["/x"]));
        assert!(c["Cmd"].is_null());
    }
}
