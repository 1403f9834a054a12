//! A small blocking HTTP client for the bandsox API, turning problem+json answers into
//! one-line errors with hints.

use std::time::Duration;

use bandsox_api::Problem;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An error the CLI prints as `error: ...` / `hint: ...` before exiting with `exit_code`.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub hint: Option<String>,
    pub exit_code: u8,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            exit_code: 1,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::new(format!("{e:#}"))
    }
}

/// Client of one server.
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(url: &str) -> Self {
        Self {
            base: url.trim_end_matches('/').to_owned(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .middleware(BearerAuth(api_key()))
                .build(),
        }
    }

    /// The server's base URL (`http://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A transport error: the server cannot be reached. Only the innermost cause is shown
    /// ("Connection refused (os error 111)"), not the whole chain of wrappers.
    pub fn unreachable(&self, e: &(dyn std::error::Error + 'static)) -> CliError {
        let mut cause: &dyn std::error::Error = e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        CliError {
            message: format!("cannot reach the bandsox server at {}: {cause}", self.base),
            hint: Some("start it with `bandsox serve`, or point --url / BANDSOX_URL at it".into()),
            exit_code: 5,
        }
    }

    /// The URL of `path` on the server; a server URL that is not `http://` or `https://` is a
    /// usage error.
    pub fn url(&self, path: &str) -> Result<String, CliError> {
        let ok = ["http://", "https://"]
            .iter()
            .any(|s| self.base.len() > s.len() && self.base[..s.len()].eq_ignore_ascii_case(s));
        if !ok {
            return Err(CliError {
                message: format!(
                    "the server URL `{}` is not an http:// or https:// URL",
                    self.base
                ),
                hint: Some(format!(
                    "pass --url http://{} (or set BANDSOX_URL)",
                    self.base
                        .split_once("://")
                        .map_or(self.base.as_str(), |(_, r)| r)
                )),
                exit_code: 2,
            });
        }
        Ok(format!("{}{path}", self.base))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let req = self.agent.get(&self.url(path)?);
        self.finish(req.call())
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, CliError> {
        let req = self.agent.post(&self.url(path)?).timeout(timeout);
        self.finish(req.send_json(body))
    }

    /// POSTs a streamed body with the given content type.
    pub fn send_reader<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: impl std::io::Read,
    ) -> Result<T, CliError> {
        self.send_reader_for(path, content_type, body, Duration::from_secs(3600))
    }

    /// [`Client::send_reader`] with a timeout of its own.
    pub fn send_reader_for<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: impl std::io::Read,
        timeout: Duration,
    ) -> Result<T, CliError> {
        let req = self
            .agent
            .post(&self.url(path)?)
            .set("Content-Type", content_type)
            .timeout(timeout);
        self.finish(req.send(body))
    }

    /// GETs a body as a reader (for downloads).
    pub fn get_reader(&self, path: &str) -> Result<impl std::io::Read + Send, CliError> {
        let req = self
            .agent
            .get(&self.url(path)?)
            .timeout(Duration::from_secs(3600));
        req.call()
            .map(|r| r.into_reader())
            .map_err(|e| self.error_of(e))
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let req = self
            .agent
            .put(&self.url(path)?)
            .timeout(Duration::from_secs(60));
        self.finish(req.send_json(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let req = self
            .agent
            .delete(&self.url(path)?)
            .timeout(Duration::from_secs(120));
        self.finish(req.call())
    }

    fn finish<T: DeserializeOwned>(
        &self,
        res: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, CliError> {
        res.map_err(|e| self.error_of(e))?
            .into_json()
            .map_err(|e| CliError::new(format!("unreadable answer from {}: {e}", self.base)))
    }

    fn error_of(&self, e: ureq::Error) -> CliError {
        match e {
            ureq::Error::Status(status, r) => {
                let body = r.into_string().unwrap_or_default();
                problem_error(status, &body)
            }
            ureq::Error::Transport(t) => self.unreachable(&t),
        }
    }
}

pub(crate) fn problem_error(status: u16, body: &str) -> CliError {
    let exit_code = match status {
        404 => 3,
        409 => 4,
        401 | 403 => 6,
        _ => 1,
    };
    match serde_json::from_str::<Problem>(body) {
        Ok(p) => CliError {
            message: p.detail,
            hint: p.hint,
            exit_code,
        },
        Err(_) => CliError {
            message: format!(
                "server answered {status}: {}",
                body.chars().take(200).collect::<String>()
            ),
            hint: None,
            exit_code,
        },
    }
}

/// `~/.bandsox/credentials` (of `$SUDO_USER` when run under sudo).
pub fn credentials_path() -> Option<std::path::PathBuf> {
    let home = match std::env::var("SUDO_USER") {
        Ok(u) if !u.is_empty() && u != "root" => {
            Some(std::path::PathBuf::from(format!("/home/{u}")))
        }
        _ => std::env::var_os("HOME").map(std::path::PathBuf::from),
    }?;
    Some(home.join(".bandsox/credentials"))
}

/// The API key from `BANDSOX_API_KEY`, else from the credentials file.
pub(crate) fn api_key() -> Option<String> {
    if let Some(k) = bandsox_config::get(bandsox_config::API_KEY) {
        return Some(k);
    }
    let raw = std::fs::read(credentials_path()?).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("api_key")?.as_str().map(str::to_owned)
}

/// Adds `Authorization: Bearer <key>` to every request when a key is configured.
struct BearerAuth(Option<String>);

impl ureq::Middleware for BearerAuth {
    fn handle(
        &self,
        request: ureq::Request,
        next: ureq::MiddlewareNext,
    ) -> Result<ureq::Response, ureq::Error> {
        match &self.0 {
            Some(k) => next.handle(request.set("Authorization", &format!("Bearer {k}"))),
            None => next.handle(request),
        }
    }
}

/// Percent-encodes a path segment (ids are validated by the server; this keeps odd input from
/// changing the route).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
