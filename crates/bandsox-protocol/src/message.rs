//! The JSON messages carried by `Request`, `Reply` and `Event` frames.
//!
//! Every struct ignores unknown fields, and every optional field has a default, so a newer peer
//! can add fields without breaking an older one. Unknown operations are answered with
//! [`ErrorCode::Unsupported`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version spoken by this build. The host refuses an agent whose major version differs.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port the agent serves on under QEMU.
pub const SERIAL_PORT_NAME: &str = "org.bandsox.agent";

/// vsock port the agent listens on when the VM has a vsock device (Firecracker).
pub const VSOCK_PORT: u32 = 1024;

/// A host -> guest request. It opens a stream; the agent answers with zero or more events and
/// data frames and exactly one [`Reply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First message on a fresh connection.
    Hello(Hello),
    /// Liveness check; answered with [`ReplyBody::Pong`].
    Ping,
    /// Run a program. Its output arrives as `Data` frames on `Stdout`/`Stderr`, flow-controlled
    /// by `Credit` frames from the host, then a [`ReplyBody::Exited`].
    Exec(ExecRequest),
    /// Sync filesystems and power the VM off. Answered before the power-off happens.
    Shutdown,
    /// Set the guest wall clock (after a restore).
    SetTime { unix_ns: u64 },
}

/// Version handshake, sent by both sides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Free-form build string (`bandsox-agent 0.1.0`).
    #[serde(default)]
    pub software: String,
    /// Optional capabilities the sender supports, by name.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// What to run and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecRequest {
    /// Program and arguments, run without a shell. Exactly one of `argv` and `command`.
    pub argv: Option<Vec<String>>,
    /// A shell command line, run with `/bin/sh -c`.
    pub command: Option<String>,
    /// Extra environment, added over the agent's base environment.
    pub env: BTreeMap<String, String>,
    /// Working directory; the image's default when absent.
    pub cwd: Option<String>,
    /// When true the host sends stdin as `Data` frames on `Stdin` and ends it with `Eof`;
    /// otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Kill the whole process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
}

/// The final message of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(ReplyBody),
    Error(ErrorBody),
}

/// Successful results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyBody {
    Hello(Hello),
    Pong,
    Exited(ExitStatus),
    Done,
}

/// How a program ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitStatus {
    /// Exit code when the program exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// True when the agent killed it because `timeout_ms` elapsed.
    pub timed_out: bool,
    /// Wall time from spawn to exit, measured in the guest.
    pub duration_us: u64,
}

/// Intermediate notices on an open stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The program was spawned.
    Started { pid: u32 },
}

/// An error crossing the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Closed set of error codes. Codes a peer does not know decode as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or contradicts itself.
    BadRequest,
    /// The operation is not known to this agent.
    Unsupported,
    /// A path or program does not exist.
    NotFound,
    /// Permission denied inside the guest.
    PermissionDenied,
    /// The program could not be started.
    SpawnFailed,
    /// An I/O error inside the guest.
    Io,
    /// The agent failed internally (a handler panicked).
    Internal,
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape_v1() {
        let req = Request::Exec(ExecRequest {
            command: Some("echo hi".into()),
            timeout_ms: Some(1000),
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"op":"exec","argv":null,"command":"echo hi","env":{},"cwd":null,"stdin":false,"timeout_ms":1000}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Ping).unwrap(),
            r#"{"op":"ping"}"#
        );
    }

    #[test]
    fn reply_wire_shape_v1() {
        let r = Reply::Ok(ReplyBody::Exited(ExitStatus {
            exit_code: Some(3),
            ..Default::default()
        }));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":{"type":"exited","exit_code":3,"signal":null,"timed_out":false,"duration_us":0}}"#
        );
        let e = Reply::Error(ErrorBody::new(ErrorCode::NotFound, "no such file"));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":{"code":"not_found","message":"no such file"}}"#
        );
    }

    #[test]
    fn unknown_fields_and_codes_are_tolerated() {
        let r: Request =
            serde_json::from_str(r#"{"op":"exec","command":"true","future_field":[1,2]}"#).unwrap();
        assert!(matches!(
            r,
            Request::Exec(ExecRequest {
                command: Some(_),
                ..
            })
        ));
        let e: ErrorBody =
            serde_json::from_str(r#"{"code":"quota_exceeded","message":"m","extra":1}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Unknown);
    }
}
