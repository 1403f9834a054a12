//! A minimal HTTP/1.1 client for Firecracker's API socket: one request per connection, a
//! timeout on every call, and Firecracker's `{"fault_message": ...}` error bodies mapped into
//! [`VmmError::Control`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::VmmError;

/// Largest response body accepted (Firecracker's answers are a few KiB at most).
const MAX_RESPONSE: usize = 1 << 20;

/// A Firecracker API endpoint (the `--api-sock` path as seen from the host).
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

/// One answer: status code and (possibly empty) JSON body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Option<Value>,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until the API socket accepts connections (the VMM is up), for at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), VmmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(_) => return Ok(()),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => {
                    tracing::debug!(socket = %self.socket.display(), error = %e, "API socket not ready");
                    return Err(VmmError::Timeout {
                        operation: "API socket to appear",
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
            }
        }
    }

    /// Sends one request; a 2xx answer is `Ok`, anything else an error carrying Firecracker's
    /// `fault_message`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        operation: &'static str,
    ) -> Result<Response, VmmError> {
        let timeout_ms = self.timeout.as_millis() as u64;
        let resp = tokio::time::timeout(self.timeout, self.raw(method, path, body))
            .await
            .map_err(|_| VmmError::Timeout {
                operation,
                timeout_ms,
            })??;
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        let fault = resp
            .body
            .as_ref()
            .and_then(|b| b.get("fault_message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| match &resp.body {
                Some(b) => b.to_string(),
                None => "no detail".into(),
            });
        Err(VmmError::Control(format!(
            "{method} {path}: Firecracker answered {}: {fault}",
            resp.status
        )))
    }

    pub async fn put(
        &self,
        path: &str,
        body: &Value,
        operation: &'static str,
    ) -> Result<(), VmmError> {
        self.call("PUT", path, Some(body), operation)
            .await
            .map(drop)
    }

    pub async fn patch(
        &self,
        path: &str,
        body: &Value,
        operation: &'static str,
    ) -> Result<(), VmmError> {
        self.call("PATCH", path, Some(body), operation)
            .await
            .map(drop)
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, VmmError> {
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| VmmError::Control(format!("connect {}: {e}", self.socket.display())))?;
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| VmmError::Control(e.to_string()))?,
            None => Vec::new(),
        };
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(&payload);
        stream.write_all(&bytes).await?;
        read_response(&mut stream).await
    }
}

/// Reads one HTTP/1.1 response: status line, headers, `Content-Length` bytes of body.
async fn read_response(stream: &mut UnixStream) -> Result<Response, VmmError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(VmmError::Control("oversized API response header".into()));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(VmmError::Control(
                "API connection closed before a response".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| VmmError::Control("API response header is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| VmmError::Control(format!("bad API status line `{status_line}`")))?;
    let mut length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v
                    .trim()
                    .parse()
                    .map_err(|_| VmmError::Control("bad Content-Length".into()))?;
            }
        }
    }
    if length > MAX_RESPONSE {
        return Err(VmmError::Control("oversized API response".into()));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(VmmError::Control("API response body cut short".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
        )
    };
    Ok(Response { status, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
