//! `exec_python`: run Python code in the guest, optionally with packages in a throw-away venv.
//!
//! The venv is made with `uv venv` when the image has `uv`, else `python3 -m venv`; packages
//! are installed with `uv pip install` or the venv's pip. Package names are passed as argv
//! entries after `--`, never through a shell, and nothing is downloaded to bootstrap tools.

use std::collections::BTreeMap;

use bandsox_protocol::{ErrorCode, ExecRequest};
use serde::Serialize;

use super::files::WriteOptions;
use crate::error::{CoreError, Result};
use crate::manager::Manager;

/// Output kept per stream.
const CAP_BYTES: usize = 4 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct PythonRequest {
    pub code: String,
    /// Requirement specifiers or paths of wheels in the guest.
    pub packages: Vec<String>,
    pub cwd: String,
    /// Per step (venv, install, run).
    pub timeout_ms: u64,
    /// Keep the venv (its path is reported in `venv`).
    pub keep_venv: bool,
    pub env: BTreeMap<String, String>,
}

impl Default for PythonRequest {
    fn default() -> Self {
        Self {
            code: String::new(),
            packages: Vec::new(),
            cwd: "/tmp".into(),
            timeout_ms: 60_000,
            keep_venv: false,
            env: BTreeMap::new(),
        }
    }
}

/// BandSox's `exec_python_capture` shape (plus `venv`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PythonResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout then stderr.
    pub output: String,
    pub success: bool,
    pub error: Option<String>,
    /// The kept venv, when `keep_venv`.
    pub venv: Option<String>,
}

impl PythonResult {
    fn failed(error: String) -> Self {
        Self {
            exit_code: -1,
            error: Some(error),
            ..Self::default()
        }
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

impl Manager {
    async fn run_argv(
        &self,
        id: &str,
        args: Vec<String>,
        cwd: Option<String>,
        env: &BTreeMap<String, String>,
        timeout_ms: u64,
    ) -> Result<(i32, String, String)> {
        let req = ExecRequest {
            argv: Some(args),
            cwd,
            env: env.clone(),
            timeout_ms: Some(timeout_ms),
            ..Default::default()
        };
        let out = self.exec(id, req, None, CAP_BYTES).await?;
        let code = match (
            out.status.exit_code,
            out.status.signal,
            out.status.timed_out,
        ) {
            (_, _, true) => 124,
            (Some(c), _, _) => c,
            (None, Some(sig), _) => 128 + sig,
            _ => -1,
        };
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.timed_out {
            stderr.push_str(&format!("\ntimed out after {timeout_ms} ms\n"));
        }
        Ok((
            code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        ))
    }

    /// Runs `code` with `python3` in the guest. Guest-side failures (no python3, a package
    /// that does not install, an exception) are reported in the result, never as `Err`;
    /// `Err` means the VM or agent could not be reached.
    pub async fn exec_python(&self, id: &str, req: PythonRequest) -> Result<PythonResult> {
        for p in &req.packages {
            if p.is_empty() || p.starts_with('-') || p.contains('\0') {
                return Err(CoreError::InvalidInput(format!(
                    "invalid package `{}`: a requirement or a wheel path, not an option",
                    p.escape_debug()
                )));
            }
        }
        match self
            .run_argv(id, argv(&["python3", "-c", ""]), None, &req.env, req.timeout_ms)
            .await
        {
            Ok((0, _, _)) => {}
            Ok((code, _, err)) => {
                return Ok(PythonResult::failed(format!(
                    "python3 does not work in this image (exit {code}): {err}"
                )))
            }
            Err(CoreError::Guest(e)) if e.code == ErrorCode::NotFound => {
                return Ok(PythonResult::failed(
                    "python3 not found in the image: use an image with Python (e.g. python:3.12-slim)".into(),
                ))
            }
            Err(e) => return Err(e),
        }
        let tag: u64 = rand::random();
        let script = format!("/tmp/bandsox_exec_{tag:016x}.py");
        let venv = format!("/tmp/bandsox_venv_{tag:016x}");
        self.write_file(
            id,
            &script,
            req.code.as_bytes(),
            WriteOptions {
                mode: Some(0o600),
                create_parents: true,
                ..Default::default()
            },
        )
        .await?;
        let result = self.python_steps(id, &req, &script, &venv).await;
        let _ = self.remove(id, &script, false).await;
        let mut result = result?;
        if !req.packages.is_empty() {
            if req.keep_venv {
                result.venv = Some(venv);
            } else {
                let _ = self.remove(id, &venv, true).await;
            }
        }
        Ok(result)
    }

    async fn python_steps(
        &self,
        id: &str,
        req: &PythonRequest,
        script: &str,
        venv: &str,
    ) -> Result<PythonResult> {
        let t = req.timeout_ms;
        let python = if req.packages.is_empty() {
            "python3".to_owned()
        } else {
            let py = format!("{venv}/bin/python");
            let has_uv = matches!(
                self.run_argv(id, argv(&["uv", "--version"]), None, &req.env, t)
                    .await,
                Ok((0, _, _))
            );
            let (make, install): (Vec<String>, Vec<String>) = if has_uv {
                (
                    argv(&["uv", "venv", "--quiet", venv]),
                    argv(&["uv", "pip", "install", "--quiet", "--python", &py, "--"]),
                )
            } else {
                (
                    argv(&["python3", "-m", "venv", venv]),
                    argv(&[
                        &py,
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--",
                    ]),
                )
            };
            let (code, out, err) = self.run_argv(id, make, None, &req.env, t).await?;
            if code != 0 {
                let _ = self.remove(id, venv, true).await;
                return Ok(step_failed("creating the venv", code, out, err));
            }
            let mut install = install;
            install.extend(req.packages.iter().cloned());
            let (code, out, err) = self.run_argv(id, install, None, &req.env, t).await?;
            if code != 0 {
                let _ = self.remove(id, venv, true).await;
                return Ok(step_failed("installing packages", code, out, err));
            }
            py
        };
        let (exit_code, stdout, stderr) = self
            .run_argv(
                id,
                vec![python, script.to_owned()],
                Some(req.cwd.clone()),
                &req.env,
                t,
            )
            .await?;
        let success = exit_code == 0;
        Ok(PythonResult {
            exit_code,
            output: format!("{stdout}{stderr}"),
            error: (!success).then(|| {
                stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map_or_else(|| format!("exit code {exit_code}"), str::to_owned)
            }),
            stdout,
            stderr,
            success,
            venv: None,
        })
    }
}

fn step_failed(step: &str, code: i32, stdout: String, stderr: String) -> PythonResult {
    PythonResult {
        exit_code: code,
        output: format!("{stdout}{stderr}"),
        error: Some(format!("{step} failed (exit {code}): {}", stderr.trim())),
        stdout,
        stderr,
        success: false,
        venv: None,
    }
}
