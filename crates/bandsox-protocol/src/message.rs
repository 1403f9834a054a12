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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "op", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
    /// Mix these random bytes into the guest kernel's RNG and credit them as entropy (sent
    /// after every restore, so clones of one snapshot do not share their random state).
    AddEntropy { bytes: Vec<u8> },
    /// Give a restored clone its own identity: set the hostname (also written to
    /// `/etc/hostname`) and write `machine_id` (32 lowercase hex digits) to `/etc/machine-id`.
    SetIdentity {
        hostname: String,
        machine_id: String,
    },

    // ---- durable background commands and PTY sessions (see `CmdStartRequest`) ----
    /// Start a durable background command (or a PTY session): answered at once with
    /// [`ReplyBody::CmdStarted`]. It keeps running when the host disconnects.
    CmdStart(CmdStartRequest),
    /// Replay a command's output from absolute offsets, then (with `follow`) stream new output
    /// until it exits. Data frames on `Stdout`/`Stderr` (PTY output is on `Stdout`), preceded by
    /// an [`Event::LogStart`] and answered with [`ReplyBody::CmdLogs`].
    CmdLogs(CmdLogsRequest),
    /// Wait until a command exits (or `timeout_ms` passes); answered with [`ReplyBody::Cmd`].
    CmdWait {
        cmd_id: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Send a signal (name like `TERM`/`SIGKILL` or a number) to the command's process group.
    CmdKill { cmd_id: String, signal: String },
    /// Write the host's `Stdin` data frames (until `Eof`) to the command's stdin (a PTY's
    /// input); with `close`, close its stdin afterwards. Answered with `Done`.
    CmdStdin {
        cmd_id: String,
        #[serde(default)]
        close: bool,
    },
    /// Resize a PTY session.
    CmdResize {
        cmd_id: String,
        cols: u16,
        rows: u16,
    },
    /// All known commands, running and finished; answered with [`ReplyBody::Cmds`].
    CmdList,

    // ---- files (paths are absolute; see docs/AGENT.md) ----
    /// Stream a file's bytes as `Stdout` data frames; answered with [`ReplyBody::FileRead`].
    FileRead(FileReadRequest),
    /// Read a text window by lines; answered with [`ReplyBody::Text`].
    FileReadText(FileReadTextRequest),
    /// Write the host's `Stdin` data frames (until `Eof`) to a file; answered with
    /// [`ReplyBody::Written`].
    FileWrite(FileWriteRequest),
    /// Write many files from one data stream (their bytes concatenated in order).
    FileWriteBatch(FileWriteBatchRequest),
    /// Directory listing; answered with [`ReplyBody::Entries`].
    FileList { path: String },
    /// Metadata of a path; a missing path is not an error ([`ReplyBody::Stat`] with `entry: null`).
    FileStat { path: String },
    /// Create a directory (and its parents with `parents`).
    FileMkdir {
        path: String,
        #[serde(default)]
        parents: bool,
        #[serde(default)]
        mode: Option<u32>,
    },
    /// Remove a file, or a directory (`recursive` for a non-empty one).
    FileRemove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Rename `from` to `to` (replacing a file at `to`).
    FileRename { from: String, to: String },
    /// Replace `old` (which must occur exactly once) with `new` in a UTF-8 file.
    FileEdit {
        path: String,
        old: String,
        new: String,
    },

    // ---- measurement ----
    /// Benchmark floor: the agent leaves the protocol and uses the raw channel (see
    /// [`RawMode`]: `echo` until the host disconnects, `sink`/`source` until their bytes are
    /// through). Answered with `Done`, then raw bytes only.
    Raw { mode: RawMode },
}

impl Request {
    /// The wire name (`op`) of every operation, derived from the variants themselves.
    pub const OPS: &'static [&'static str] = <Self as strum::VariantNames>::VARIANTS;
}

/// What the agent does with the raw channel after a [`Request::Raw`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RawMode {
    /// Write every byte read straight back.
    Echo,
    /// Read and discard `bytes` bytes, then write one byte.
    Sink { bytes: u64 },
    /// Write `bytes` bytes (after reading one byte from the host as the start signal).
    Source { bytes: u64 },
    /// Like `Sink`, but write the bytes into the file `path` (created or truncated), in the
    /// chunks an upload uses: the floor of an upload to that file.
    SinkFile { bytes: u64, path: String },
    /// Like `Source`, but send the whole file `path` the way a download does (from a mapping
    /// of it): the floor of a download of that file.
    SourceFile { path: String },
}

/// A durable background command or PTY session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CmdStartRequest {
    /// What to run; `stdin` says whether the command gets a stdin pipe (else `/dev/null`).
    /// With `pty`, `argv`/`command` may both be absent: the image's shell runs.
    pub exec: ExecRequest,
    /// Run under a pseudo-terminal of this size (stdin is then always open).
    pub pty: Option<PtySize>,
}

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// Log replay / follow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CmdLogsRequest {
    pub cmd_id: String,
    /// Absolute stdout offset to start at (clamped to the oldest byte still kept).
    pub stdout_from: u64,
    pub stderr_from: u64,
    /// Keep streaming new output until the command exits; otherwise stop at the current end.
    pub follow: bool,
}

/// Byte read of a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileReadRequest {
    pub path: String,
    /// Start at this byte.
    pub offset: u64,
    /// Send at most this many bytes; the reply says `truncated` when the file had more.
    pub max_bytes: Option<u64>,
}

/// Line-window read of a text file. Bytes that are not UTF-8 become U+FFFD.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileReadTextRequest {
    pub path: String,
    /// Lines to skip from the start.
    pub offset_lines: u64,
    /// At most this many lines (0 = all).
    pub limit_lines: u64,
    /// Prefix each line with its 1-based number and a tab (`N\t`), once.
    pub line_numbers: bool,
    /// Stop after this many bytes of content (`truncated: true`); default 1 MiB.
    pub max_bytes: Option<u64>,
}

/// File write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileWriteRequest {
    pub path: String,
    /// Permission bits; default: kept for an existing file, 0o644 for a new one.
    pub mode: Option<u32>,
    /// Append instead of replacing.
    pub append: bool,
    /// Create missing parent directories.
    pub create_parents: bool,
}

/// Batch file write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileWriteBatchRequest {
    pub files: Vec<BatchFile>,
    pub create_parents: bool,
}

/// One file of a batch: its bytes are the next `size` bytes of the data stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchFile {
    pub path: String,
    pub size: u64,
    pub mode: Option<u32>,
}

/// A directory entry or the metadata of one path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileEntry {
    /// File name; bytes that are not UTF-8 appear as U+FFFD.
    pub name: String,
    pub path: String,
    pub size: u64,
    pub is_dir: bool,
    pub is_file: bool,
    pub is_symlink: bool,
    /// Permission bits and file type (`st_mode`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// State of a durable command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CmdInfo {
    pub cmd_id: String,
    pub pid: u32,
    /// `argv` or `command` as given.
    pub command: Vec<String>,
    pub pty: bool,
    /// True while the process runs.
    pub running: bool,
    /// Set once it exited.
    pub status: Option<ExitStatus>,
    /// Absolute end offsets (total bytes produced) of stdout and stderr.
    pub stdout_end: u64,
    pub stderr_end: u64,
    /// Oldest absolute offsets still in the ring buffers.
    pub stdout_start: u64,
    pub stderr_start: u64,
    /// Milliseconds since the epoch.
    pub started_at_ms: u64,
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
    /// Run as this user: a name from the image's `/etc/passwd` or a numeric uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
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
    CmdStarted {
        cmd_id: String,
        pid: u32,
    },
    CmdLogs {
        /// Where the sent data ended.
        stdout_offset: u64,
        stderr_offset: u64,
        /// The command's state at the end (exited when following ended by exit).
        info: CmdInfo,
    },
    Cmd(CmdInfo),
    Cmds {
        commands: Vec<CmdInfo>,
    },
    FileRead {
        /// Size of the file.
        size: u64,
        /// Bytes sent.
        sent_bytes: u64,
        /// The file had more bytes than `max_bytes` allowed.
        truncated: bool,
        /// MIME type when the content is a known image format (magic bytes).
        mime: Option<String>,
    },
    Text {
        content: String,
        /// Lines in the file (counted to the end even when windowed).
        total_lines: u64,
        /// Content stopped at `max_bytes`.
        truncated: bool,
    },
    Written {
        files: u64,
        bytes: u64,
    },
    Entries {
        entries: Vec<FileEntry>,
        /// More entries existed than one reply carries.
        truncated: bool,
    },
    Stat {
        entry: Option<FileEntry>,
    },
}

/// How a program ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// First event of a `CmdLogs` stream: the absolute offsets the data starts at (later than
    /// requested when older bytes left the ring buffer).
    LogStart {
        stdout_offset: u64,
        stderr_offset: u64,
    },
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
    /// A path is relative, empty or contains NUL.
    InvalidPath,
    /// A directory where a file was expected.
    IsADirectory,
    /// A file (or other non-directory) where a directory was expected.
    NotADirectory,
    /// The target exists (e.g. `mkdir` without `parents` of an existing path).
    AlreadyExists,
    /// A directory to remove is not empty (and `recursive` was not given).
    NotEmpty,
    /// `FileEdit`: the text to replace does not occur.
    NoMatch,
    /// `FileEdit`: the text to replace occurs more than once.
    MultipleMatches,
    /// A file is not valid UTF-8 where text is required.
    NotUtf8,
    /// No durable command has this id.
    UnknownCommand,
    /// The command has exited (input, resize).
    Exited,
    /// The user is not in the image's `/etc/passwd`.
    UnknownUser,
    /// The signal name or number is not known.
    UnknownSignal,
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
    fn variant_names_are_the_wire_op_names() {
        // Every name strum lists is one serde knows (a missing field, never an unknown variant).
        assert_eq!(Request::OPS.len(), 25);
        for op in Request::OPS {
            let err = serde_json::from_value::<Request>(serde_json::json!({ "op": op }))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.contains("unknown variant"), "{op}: {err}");
        }
        assert!(Request::OPS.contains(&"add_entropy"));
    }

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
        assert_eq!(
            serde_json::to_string(&Request::AddEntropy {
                bytes: vec![1, 255]
            })
            .unwrap(),
            r#"{"op":"add_entropy","bytes":[1,255]}"#
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

    /// Version 1 additions (commands, PTY, files): frozen like the rest.
    #[test]
    fn command_and_file_wire_shape_v1() {
        let shapes: Vec<(Request, &str)> = vec![
            (
                Request::CmdStart(CmdStartRequest {
                    exec: ExecRequest {
                        argv: Some(vec!["sh".into()]),
                        user: Some("nobody".into()),
                        ..Default::default()
                    },
                    pty: Some(PtySize { cols: 80, rows: 24 }),
                }),
                r#"{"op":"cmd_start","exec":{"argv":["sh"],"command":null,"env":{},"cwd":null,"stdin":false,"timeout_ms":null,"user":"nobody"},"pty":{"cols":80,"rows":24}}"#,
            ),
            (
                Request::CmdLogs(CmdLogsRequest {
                    cmd_id: "cmd-1".into(),
                    stdout_from: 5,
                    stderr_from: 0,
                    follow: true,
                }),
                r#"{"op":"cmd_logs","cmd_id":"cmd-1","stdout_from":5,"stderr_from":0,"follow":true}"#,
            ),
            (
                Request::CmdKill {
                    cmd_id: "cmd-1".into(),
                    signal: "TERM".into(),
                },
                r#"{"op":"cmd_kill","cmd_id":"cmd-1","signal":"TERM"}"#,
            ),
            (
                Request::FileWrite(FileWriteRequest {
                    path: "/a".into(),
                    mode: Some(0o600),
                    append: false,
                    create_parents: true,
                }),
                r#"{"op":"file_write","path":"/a","mode":384,"append":false,"create_parents":true}"#,
            ),
            (
                Request::FileEdit {
                    path: "/a".into(),
                    old: "x".into(),
                    new: "y".into(),
                },
                r#"{"op":"file_edit","path":"/a","old":"x","new":"y"}"#,
            ),
            (
                Request::Raw {
                    mode: RawMode::Sink { bytes: 10 },
                },
                r#"{"op":"raw","mode":{"kind":"sink","bytes":10}}"#,
            ),
            (
                Request::Raw {
                    mode: RawMode::SourceFile {
                        path: "/tmp/f".into(),
                    },
                },
                r#"{"op":"raw","mode":{"kind":"source_file","path":"/tmp/f"}}"#,
            ),
        ];
        for (req, json) in shapes {
            assert_eq!(serde_json::to_string(&req).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), req);
        }
        let r = Reply::Ok(ReplyBody::CmdStarted {
            cmd_id: "cmd-1".into(),
            pid: 7,
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":{"type":"cmd_started","cmd_id":"cmd-1","pid":7}}"#
        );
        let e = ErrorBody::new(ErrorCode::MultipleMatches, "m");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"multiple_matches","message":"m"}"#
        );
        assert_eq!(
            serde_json::to_string(&Event::LogStart {
                stdout_offset: 1,
                stderr_offset: 2
            })
            .unwrap(),
            r#"{"type":"log_start","stdout_offset":1,"stderr_offset":2}"#
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
