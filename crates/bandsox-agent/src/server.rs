//! The protocol server: reads frames from a host connection, opens a stream per `Request`,
//! routes `Data`/`Eof`/`Credit`/`Cancel` frames to the stream they belong to, and writes every
//! outgoing frame through one lock so frames never interleave.
//!
//! When the connection ends (the host went away, a snapshot was restored) every running
//! operation is cancelled and frames still addressed to the old connection are dropped: the
//! outbox carries a connection generation and refuses writes from older ones.
//!
//! A `Hello` request also starts a new generation. The protocol sends it first on every fresh
//! connection, and a virtio-serial port cannot always show the agent a disconnect: after a
//! snapshot restore the "host closed" and "host connected" notices can arrive together, so
//! `read()` never returns 0. Streams opened before a `Hello` are therefore cancelled and their
//! frames dropped.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

use bandsox_protocol::frame::{self, CREDIT_BATCH_BYTES, DATA_CHUNK_LEN, INITIAL_WINDOW};
use bandsox_protocol::{
    Channel, ErrorBody, ErrorCode, Event, Frame, FrameKind, FrameReader, Hello, PayloadPool,
    RawMode, Reply, ReplyBody, Request, PROTOCOL_VERSION,
};

use crate::log::log;
use crate::transport::Connector;
use crate::util::{lock, panic_message};
use crate::{cmds, exec, files, sys, transport};

/// Optional features advertised in the hello reply.
pub const CAPABILITIES: &[&str] = &[
    "exec",
    "exec.stdin",
    "exec.timeout",
    "exec.user",
    "cancel",
    "set_time",
    "cmd",
    "pty",
    "files",
    "raw",
];

/// What a `Shutdown` request does after it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    /// Sync, kill everything, remount `/` read-only and power the VM off (PID 1).
    PowerOff,
    /// Exit the agent process (running outside a VM).
    Exit,
    /// Only answer (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Ignore,
}

/// Fixed settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Environment every program starts with; request `env` entries are added over it.
    pub base_env: Vec<(String, String)>,
    pub shutdown: ShutdownAction,
}

/// Shared state of the server.
pub struct Agent {
    pub config: AgentConfig,
    outbox: Outbox,
    streams: Mutex<HashMap<u32, Arc<StreamCtl>>>,
    /// Buffers of large incoming payloads, recycled (see [`PayloadPool`]).
    pool: PayloadPool,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            outbox: Outbox::default(),
            streams: Mutex::new(HashMap::new()),
            pool: PayloadPool::default(),
        })
    }

    /// Serves connections from `connector` until it reports no more.
    pub fn serve(self: &Arc<Self>, connector: &mut dyn Connector) -> io::Result<()> {
        while let Some(conn) = connector.connect()? {
            let gen = self.outbox.attach(conn.writer, conn.channel_fd);
            self.session(conn.reader, gen);
            self.outbox.detach(gen);
            self.cancel_all();
        }
        Ok(())
    }

    /// Reads and dispatches frames until end of stream or a read error.
    fn session(self: &Arc<Self>, reader: Box<dyn Read + Send>, mut gen: u64) {
        let mut frames = FrameReader::with_pool(reader, self.pool.clone());
        loop {
            let frame = match frames.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    log!("corrupt frame from host ({e}); resetting the reader");
                    frames.reset();
                    continue;
                }
                Err(e) => {
                    log!("channel read failed: {e}");
                    return;
                }
            };
            if frame.kind == FrameKind::Request {
                // Parsed once, here: a `Raw` request takes over this reading loop.
                let request = parse_request(&frame.payload);
                if let Ok(Request::Raw { mode }) = request {
                    let tx = StreamTx {
                        agent: Arc::clone(self),
                        id: frame.stream,
                        gen,
                    };
                    self.raw(frames.get_mut(), mode, &tx);
                    return;
                }
                self.open_stream(&mut gen, frame.stream, request);
                continue;
            }
            self.dispatch(&mut gen, frame);
        }
    }

    /// Benchmark floor: answers `tx`'s `Raw` request, then uses the channel raw. `Echo` lasts
    /// until the host disconnects; the others end when their bytes are through. The session
    /// then ends: the host reconnects for frames.
    fn raw(&self, reader: &mut Box<dyn Read + Send>, mode: RawMode, tx: &StreamTx) {
        let gen = tx.gen;
        let mut buf = vec![0u8; frame::BULK_CHUNK_LEN];
        let mut read = |buf: &mut [u8]| loop {
            match reader.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.unwrap_or(0),
            }
        };
        // Files are opened before the answer, so a bad path is an error reply, not a hang.
        let file = match &mode {
            RawMode::SinkFile { path, .. } => std::fs::File::create(path).map(Some),
            RawMode::SourceFile { path } => std::fs::File::open(path).map(Some),
            _ => Ok(None),
        };
        let file = match file {
            Ok(f) => f,
            Err(e) => return tx.reply(&Reply::Error(io_error_body("raw file", &e))),
        };
        tx.reply(&Reply::Ok(ReplyBody::Done));
        match (mode, file) {
            (RawMode::Echo, _) => loop {
                let n = read(&mut buf);
                if n == 0 {
                    return;
                }
                self.outbox.send(gen, &buf[..n]);
            },
            (RawMode::Sink { bytes }, _) => {
                let mut left = bytes;
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = read(&mut buf[..want]);
                    if n == 0 {
                        return;
                    }
                    left -= n as u64;
                }
                self.outbox.send(gen, b"k");
            }
            (RawMode::SinkFile { bytes, .. }, Some(mut f)) => {
                let mut left = bytes;
                while left > 0 {
                    // Fill a chunk as the frame reader does, then write it.
                    let want = left.min(buf.len() as u64) as usize;
                    let mut got = 0;
                    while got < want {
                        let n = read(&mut buf[got..want]);
                        if n == 0 {
                            return;
                        }
                        got += n;
                    }
                    if let Err(e) = f.write_all(&buf[..want]) {
                        log!("raw sink: {e}");
                        return;
                    }
                    left -= want as u64;
                }
                self.outbox.send(gen, b"k");
            }
            (RawMode::Source { bytes }, _) => {
                if read(&mut buf[..1]) == 0 {
                    return;
                }
                buf.fill(0x5a);
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    self.outbox.send(gen, &buf[..n]);
                    left -= n as u64;
                }
            }
            (RawMode::SourceFile { .. }, Some(f)) => {
                if read(&mut buf[..1]) == 0 {
                    return;
                }
                if let Err(e) = self.raw_source_file(gen, &f) {
                    log!("raw source: {e}");
                }
            }
            (RawMode::SinkFile { .. } | RawMode::SourceFile { .. }, None) => {}
        }
    }

    /// Writes all of `f` to the channel from a mapping of it, a window at a time and in
    /// [`frame::BULK_CHUNK_LEN`] pieces: a download without frames.
    fn raw_source_file(&self, gen: u64, f: &std::fs::File) -> io::Result<()> {
        let size = f.metadata()?.len();
        let mut at = 0u64;
        while at < size {
            let len = (size - at).min(files::MAP_WINDOW_BYTES);
            let map = sys::FileMap::new(f.as_fd(), at, len as usize)?;
            let mut off = 0;
            while off < map.len() {
                let n = (map.len() - off).min(frame::BULK_CHUNK_LEN);
                self.outbox.send_from_map(gen, &[], &map, off, n)?;
                off += n;
            }
            at += len;
        }
        Ok(())
    }

    fn dispatch(self: &Arc<Self>, gen: &mut u64, frame: Frame) {
        let id = frame.stream;
        match frame.kind {
            FrameKind::Request => {
                let request = parse_request(&frame.payload);
                self.open_stream(gen, id, request);
            }
            FrameKind::Data => match frame.channel_payload().map(|(c, _)| c) {
                Ok(Channel::Stdin) => {
                    if let Some(ctl) = self.stream(id) {
                        ctl.push_stdin(StdinMsg::Data(DataBuf {
                            frame: frame.payload,
                            pool: self.pool.clone(),
                        }));
                    }
                }
                Ok(_) => {}
                Err(e) => log!("stream {id}: bad data frame: {e}"),
            },
            FrameKind::Eof => match frame.channel_payload() {
                Ok((Channel::Stdin, _)) => {
                    if let Some(ctl) = self.stream(id) {
                        ctl.push_stdin(StdinMsg::Eof);
                    }
                }
                Ok(_) => {}
                Err(e) => log!("stream {id}: bad eof frame: {e}"),
            },
            FrameKind::Credit => match frame.credit() {
                Ok((channel, bytes)) => {
                    if let Some(ctl) = self.stream(id) {
                        ctl.grant(channel, bytes);
                    }
                }
                Err(e) => log!("stream {id}: bad credit frame: {e}"),
            },
            FrameKind::Cancel => {
                if let Some(ctl) = self.stream(id) {
                    ctl.cancel();
                }
            }
            FrameKind::Reply | FrameKind::Event => {
                log!("stream {id}: ignoring {:?} frame from the host", frame.kind);
            }
        }
    }

    fn stream(&self, id: u32) -> Option<Arc<StreamCtl>> {
        lock(&self.streams).get(&id).cloned()
    }

    fn open_stream(self: &Arc<Self>, gen: &mut u64, id: u32, request: Result<Request, ErrorBody>) {
        if matches!(request, Ok(Request::Hello(_))) {
            // A new host connection: forget everything opened before it.
            *gen = self.outbox.renew(*gen);
            self.cancel_all();
        }
        let tx = StreamTx {
            agent: Arc::clone(self),
            id,
            gen: *gen,
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => return tx.reply(&Reply::Error(e)),
        };
        // Requests that cannot block are answered on the reading thread.
        let request = match request {
            Request::Hello(_) => {
                return tx.reply(&Reply::Ok(ReplyBody::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    software: format!("bandsox-agent {}", env!("CARGO_PKG_VERSION")),
                    capabilities: CAPABILITIES.iter().map(|&c| c.to_owned()).collect(),
                })))
            }
            Request::Ping => return tx.reply(&Reply::Ok(ReplyBody::Pong)),
            Request::SetTime { unix_ns } => {
                return tx.reply(&match sys::set_realtime_ns(unix_ns) {
                    Ok(()) => Reply::Ok(ReplyBody::Done),
                    Err(e) => Reply::Error(io_error_body("set the clock", &e)),
                })
            }
            Request::AddEntropy { bytes } => {
                return tx.reply(&match sys::add_entropy(&bytes) {
                    Ok(()) => Reply::Ok(ReplyBody::Done),
                    Err(e) => Reply::Error(io_error_body("add entropy", &e)),
                })
            }
            Request::SetIdentity {
                hostname,
                machine_id,
            } => return tx.reply(&crate::boot::set_identity(&hostname, &machine_id)),
            other => other,
        };

        let (events_tx, events_rx) = mpsc::channel();
        let (stdin_tx, stdin_rx) = mpsc::channel();
        let ctl = Arc::new(StreamCtl::new(stdin_tx, events_tx.clone()));
        {
            let mut streams = lock(&self.streams);
            if streams.contains_key(&id) {
                drop(streams);
                return tx.reply(&Reply::Error(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("stream {id} is already open"),
                )));
            }
            streams.insert(id, Arc::clone(&ctl));
        }
        let handler = Handler {
            tx: tx.clone(),
            ctl: Arc::clone(&ctl),
            events_tx,
            events_rx,
            stdin_rx,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("stream-{id}"))
            .spawn(move || handler.run(request));
        if let Err(e) = spawned {
            self.remove_stream(id, &ctl);
            tx.reply(&Reply::Error(ErrorBody::new(
                ErrorCode::Internal,
                format!("cannot start a handler thread: {e}"),
            )));
        }
    }

    fn remove_stream(&self, id: u32, ctl: &Arc<StreamCtl>) {
        let mut streams = lock(&self.streams);
        if streams.get(&id).is_some_and(|c| Arc::ptr_eq(c, ctl)) {
            streams.remove(&id);
        }
    }

    /// Cancels every open stream (the host connection is gone).
    fn cancel_all(&self) {
        let streams: Vec<_> = lock(&self.streams).drain().map(|(_, c)| c).collect();
        for ctl in streams {
            ctl.cancel();
        }
    }
}

/// Parses a request payload; unknown operations and malformed JSON become error bodies.
pub fn parse_request(payload: &[u8]) -> Result<Request, ErrorBody> {
    serde_json::from_slice::<Request>(payload).map_err(|e| {
        let op = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("op")?.as_str().map(str::to_owned));
        match op {
            Some(op) if !Request::OPS.contains(&op.as_str()) => ErrorBody::new(
                ErrorCode::Unsupported,
                format!("unsupported operation `{op}`"),
            ),
            _ => ErrorBody::new(ErrorCode::BadRequest, format!("malformed request: {e}")),
        }
    })
}

/// Maps an I/O error to a wire error body.
pub fn io_error_body(what: &str, e: &io::Error) -> ErrorBody {
    let code = match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        io::ErrorKind::InvalidInput => ErrorCode::BadRequest,
        _ => ErrorCode::Io,
    };
    ErrorBody::new(code, format!("{what}: {e}"))
}

/// Serialised writer shared by all streams of all connections.
#[derive(Default)]
struct Outbox {
    inner: Mutex<OutboxInner>,
}

#[derive(Default)]
struct OutboxInner {
    writer: Option<Box<dyn Write + Send>>,
    /// The descriptor `writer` writes to, when file data may be written from a mapping.
    channel_fd: Option<Arc<OwnedFd>>,
    gen: u64,
    /// Generation whose writes failed: its frames are dropped, a newer one tries again (the
    /// same virtio-serial fd works again once a host reconnects).
    failed_gen: Option<u64>,
}

impl Outbox {
    fn attach(&self, writer: Box<dyn Write + Send>, channel_fd: Option<Arc<OwnedFd>>) -> u64 {
        let mut inner = lock(&self.inner);
        inner.gen += 1;
        inner.writer = Some(writer);
        inner.channel_fd = channel_fd;
        inner.gen
    }

    /// True when generation `gen` is live and has a channel descriptor (see `channel_fd`).
    fn has_channel_fd(&self, gen: u64) -> bool {
        let inner = lock(&self.inner);
        inner.gen == gen && inner.channel_fd.is_some()
    }

    /// Starts a new generation on the same writer; frames of older ones are dropped.
    fn renew(&self, gen: u64) -> u64 {
        let mut inner = lock(&self.inner);
        if inner.gen == gen {
            inner.gen += 1;
        }
        inner.gen
    }

    fn detach(&self, gen: u64) {
        let mut inner = lock(&self.inner);
        if inner.gen == gen {
            inner.writer = None;
            inner.channel_fd = None;
        }
    }

    /// Writes whole frames for generation `gen`; dropped if that generation is gone or broken.
    fn send(&self, gen: u64, bytes: &[u8]) {
        let mut inner = lock(&self.inner);
        if inner.gen != gen || inner.failed_gen == Some(gen) {
            return;
        }
        let Some(w) = inner.writer.as_mut() else {
            return;
        };
        if let Err(e) = w.write_all(bytes).and_then(|()| w.flush()) {
            log!("channel write failed ({e}); dropping output until the host reconnects");
            inner.failed_gen = Some(gen);
        }
    }

    /// Writes `header` and then `map[offset..offset + n]` as one frame for generation `gen`.
    /// The channel's `write(2)` copies the file's pages straight into its buffers: one copy,
    /// as for any bytes a raw writer sends. Returns an error only when the file shrank under
    /// the mapping; the frame is then completed with zeros, so the channel stays in step.
    fn send_from_map(
        &self,
        gen: u64,
        header: &[u8],
        map: &sys::FileMap,
        offset: usize,
        n: usize,
    ) -> io::Result<()> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        if inner.gen != gen || inner.failed_gen == Some(gen) {
            return Ok(());
        }
        let (Some(w), Some(fd)) = (inner.writer.as_mut(), inner.channel_fd.as_ref()) else {
            return Ok(());
        };
        match write_from_map(w, fd.as_fd(), header, map, offset, n) {
            Ok(None) => Ok(()),
            Ok(Some(source)) => Err(source),
            Err(e) => {
                log!("channel write failed ({e}); dropping output until the host reconnects");
                inner.failed_gen = Some(gen);
                Ok(())
            }
        }
    }
}

/// Writes `header` and `map[offset..offset + n]` to the channel (`w`, whose descriptor is
/// `fd`). `Err` is a channel failure; `Ok(Some(e))` means the mapped file shrank and the rest
/// of the frame was sent as zeros.
fn write_from_map(
    w: &mut Box<dyn Write + Send>,
    fd: BorrowedFd<'_>,
    header: &[u8],
    map: &sys::FileMap,
    offset: usize,
    n: usize,
) -> io::Result<Option<io::Error>> {
    w.write_all(header)?;
    let mut done = 0;
    while done < n {
        match sys::write_from_map(fd, map, offset + done, n - done) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => done += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => transport::wait_writable(fd)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                let zeros = [0u8; 4096];
                while done < n {
                    let k = (n - done).min(zeros.len());
                    w.write_all(&zeros[..k])?;
                    done += k;
                }
                return Ok(Some(io::Error::other("the file shrank while it was read")));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Sends frames on one stream.
#[derive(Clone)]
pub struct StreamTx {
    agent: Arc<Agent>,
    id: u32,
    gen: u64,
}

impl StreamTx {
    fn send_encoded(
        &self,
        kind: FrameKind,
        encoded: Result<(), bandsox_protocol::ProtocolError>,
        out: &[u8],
    ) {
        match encoded {
            Ok(()) => self.agent.outbox.send(self.gen, out),
            Err(e) => log!("stream {}: cannot encode {kind:?}: {e}", self.id),
        }
    }

    pub fn reply(&self, reply: &Reply) {
        let mut out = Vec::new();
        let r = frame::encode_json(&mut out, self.id, FrameKind::Reply, reply);
        self.send_encoded(FrameKind::Reply, r, &out);
    }

    pub fn event(&self, event: &Event) {
        let mut out = Vec::new();
        let r = frame::encode_json(&mut out, self.id, FrameKind::Event, event);
        self.send_encoded(FrameKind::Event, r, &out);
    }

    /// Sends `bytes` (at most [`DATA_CHUNK_LEN`]) on `channel`; `scratch` is a reusable buffer.
    pub fn data(&self, channel: Channel, bytes: &[u8], scratch: &mut Vec<u8>) {
        debug_assert!(bytes.len() <= DATA_CHUNK_LEN);
        scratch.clear();
        frame::encode_data(scratch, self.id, channel, bytes);
        self.agent.outbox.send(self.gen, scratch);
    }

    /// Sends up to `max` bytes (at most [`frame::BULK_CHUNK_LEN`]) that `fill` reads straight into the
    /// frame (no copy). Returns what `fill` returned; nothing is sent for `Ok(0)` or an error.
    pub fn data_from(
        &self,
        channel: Channel,
        max: usize,
        scratch: &mut Vec<u8>,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        debug_assert!(max <= frame::BULK_CHUNK_LEN);
        let end = frame::DATA_HEADER_LEN + max;
        if scratch.len() < end {
            scratch.resize(end, 0);
        }
        let n = fill(&mut scratch[frame::DATA_HEADER_LEN..end])?;
        if n > 0 {
            let mut header = [0u8; frame::DATA_HEADER_LEN];
            frame::write_data_header(&mut header, self.id, channel, n);
            scratch[..frame::DATA_HEADER_LEN].copy_from_slice(&header);
            self.agent
                .outbox
                .send(self.gen, &scratch[..frame::DATA_HEADER_LEN + n]);
        }
        Ok(n)
    }

    /// True when [`Self::data_from_map`] can be used on this stream.
    pub fn has_channel_fd(&self) -> bool {
        self.agent.outbox.has_channel_fd(self.gen)
    }

    /// Sends `map[offset..offset + n]` (at most [`frame::BULK_CHUNK_LEN`]) as one data frame on
    /// `channel`. Fails only when the mapped file shrank (see [`Outbox::send_from_map`]).
    pub fn data_from_map(
        &self,
        channel: Channel,
        map: &sys::FileMap,
        offset: usize,
        n: usize,
    ) -> io::Result<()> {
        debug_assert!(n <= frame::BULK_CHUNK_LEN);
        let mut header = [0u8; frame::DATA_HEADER_LEN];
        frame::write_data_header(&mut header, self.id, channel, n);
        self.agent
            .outbox
            .send_from_map(self.gen, &header, map, offset, n)
    }

    pub fn eof(&self, channel: Channel) {
        let mut out = Vec::with_capacity(16);
        frame::encode_eof(&mut out, self.id, channel);
        self.agent.outbox.send(self.gen, &out);
    }

    pub fn credit(&self, channel: Channel, bytes: u32) {
        let mut out = Vec::with_capacity(16);
        frame::encode_credit(&mut out, self.id, channel, bytes);
        self.agent.outbox.send(self.gen, &out);
    }

    pub fn base_env(&self) -> &[(String, String)] {
        &self.agent.config.base_env
    }
}

/// Input for an exec's stdin pump.
pub enum StdinMsg {
    Data(DataBuf),
    Eof,
}

/// The bytes of a `Data` frame, handed over without copying: its payload minus the channel
/// byte. The buffer goes back to the reader's pool when dropped.
pub struct DataBuf {
    frame: Vec<u8>,
    pool: PayloadPool,
}

impl std::ops::Deref for DataBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.frame.get(1..).unwrap_or_default()
    }
}

impl Drop for DataBuf {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.frame));
    }
}

/// Credit for consumed stdin bytes, granted in batches of [`CREDIT_BATCH_BYTES`] (a credit frame
/// per data frame is a channel write per frame).
pub struct StdinCredit<'a> {
    tx: &'a StreamTx,
    pending: u32,
}

impl<'a> StdinCredit<'a> {
    pub fn new(tx: &'a StreamTx) -> Self {
        Self { tx, pending: 0 }
    }

    /// Records `n` consumed bytes; grants them once a batch is full.
    pub fn consumed(&mut self, n: usize) {
        self.pending = self
            .pending
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.pending >= CREDIT_BATCH_BYTES {
            self.tx.credit(Channel::Stdin, self.pending);
            self.pending = 0;
        }
    }
}

/// What an exec's main thread waits for.
pub enum ExecEvent {
    /// Raw wait status of the spawned process.
    Exited(i32),
    /// The host cancelled, or the connection dropped.
    Cancel,
}

/// Control block of one open stream: flow-control windows and cancellation.
pub struct StreamCtl {
    state: Mutex<CtlState>,
    cond: Condvar,
}

struct CtlState {
    /// Bytes the agent may still send, per channel (indexed by `Channel as usize`).
    windows: [u64; 3],
    cancelled: bool,
    stdin: Option<Sender<StdinMsg>>,
    events: Sender<ExecEvent>,
}

impl StreamCtl {
    fn new(stdin: Sender<StdinMsg>, events: Sender<ExecEvent>) -> Self {
        Self {
            state: Mutex::new(CtlState {
                windows: [u64::from(INITIAL_WINDOW); 3],
                cancelled: false,
                stdin: Some(stdin),
                events,
            }),
            cond: Condvar::new(),
        }
    }

    fn grant(&self, channel: Channel, bytes: u32) {
        let mut st = lock(&self.state);
        let w = &mut st.windows[channel as usize];
        *w = w.saturating_add(u64::from(bytes));
        self.cond.notify_all();
    }

    fn cancel(&self) {
        let mut st = lock(&self.state);
        st.cancelled = true;
        st.stdin = None;
        let _ = st.events.send(ExecEvent::Cancel);
        self.cond.notify_all();
    }

    fn push_stdin(&self, msg: StdinMsg) {
        let mut st = lock(&self.state);
        let eof = matches!(msg, StdinMsg::Eof);
        if let Some(tx) = &st.stdin {
            let _ = tx.send(msg);
        }
        if eof {
            st.stdin = None;
        }
    }

    /// Stops accepting stdin (the program is gone); the stdin pump then ends.
    pub fn close_stdin(&self) {
        lock(&self.state).stdin = None;
    }

    pub fn is_cancelled(&self) -> bool {
        lock(&self.state).cancelled
    }

    /// Blocks until `channel` has send window; `None` when the stream is cancelled.
    pub fn wait_window(&self, channel: Channel) -> Option<u64> {
        let mut st = lock(&self.state);
        loop {
            if st.cancelled {
                return None;
            }
            let w = st.windows[channel as usize];
            if w > 0 {
                return Some(w);
            }
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Current send window of `channel` (0 when cancelled).
    pub fn window_now(&self, channel: Channel) -> u64 {
        let st = lock(&self.state);
        if st.cancelled {
            0
        } else {
            st.windows[channel as usize]
        }
    }

    /// Waits up to `timeout` for a credit grant or cancellation.
    pub fn wait_credit(&self, timeout: std::time::Duration) {
        let st = lock(&self.state);
        if !st.cancelled {
            let _ = self.cond.wait_timeout(st, timeout);
        }
    }

    /// Records `bytes` sent on `channel`.
    pub fn consume(&self, channel: Channel, bytes: usize) {
        let mut st = lock(&self.state);
        let w = &mut st.windows[channel as usize];
        *w = w.saturating_sub(bytes as u64);
    }
}

/// Everything a handler thread owns.
pub struct Handler {
    pub tx: StreamTx,
    pub ctl: Arc<StreamCtl>,
    /// For registering the spawned process's exit with the reaper.
    pub events_tx: Sender<ExecEvent>,
    pub events_rx: Receiver<ExecEvent>,
    pub stdin_rx: Receiver<StdinMsg>,
}

impl Handler {
    fn run(self, request: Request) {
        let tx = self.tx.clone();
        let ctl = Arc::clone(&self.ctl);
        let shutdown = matches!(request, Request::Shutdown);
        let result = catch_unwind(AssertUnwindSafe(move || match request {
            Request::Exec(req) => exec::run(req, self),
            Request::Shutdown => Reply::Ok(ReplyBody::Done),
            Request::CmdStart(req) => cmds::start(req, &self),
            Request::CmdLogs(req) => cmds::logs(req, &self),
            Request::CmdWait { cmd_id, timeout_ms } => cmds::wait(&cmd_id, timeout_ms, &self),
            Request::CmdKill { cmd_id, signal } => cmds::kill(&cmd_id, &signal),
            Request::CmdStdin { cmd_id, close } => cmds::stdin(&cmd_id, close, self),
            Request::CmdResize { cmd_id, cols, rows } => cmds::resize(&cmd_id, cols, rows),
            Request::CmdList => cmds::list(),
            Request::FileRead(req) => files::read(req, &self),
            Request::FileReadText(req) => files::read_text(req),
            Request::FileWrite(req) => files::write(req, &self),
            Request::FileWriteBatch(req) => files::write_batch(req, &self),
            Request::FileList { path } => files::list(&path),
            Request::FileStat { path } => files::stat(&path),
            Request::FileMkdir {
                path,
                parents,
                mode,
            } => files::mkdir(&path, parents, mode),
            Request::FileRemove { path, recursive } => files::remove(&path, recursive),
            Request::FileRename { from, to } => files::rename(&from, &to),
            Request::FileEdit { path, old, new } => files::edit(&path, &old, &new),
            other => Reply::Error(ErrorBody::new(
                ErrorCode::Unsupported,
                format!("{other:?} is not handled on a stream thread"),
            )),
        }));
        let reply = result.unwrap_or_else(|payload| {
            let msg = panic_message(payload.as_ref());
            log!("stream {}: handler panicked: {msg}", tx.id);
            Reply::Error(ErrorBody::new(
                ErrorCode::Internal,
                format!("agent handler panicked: {msg}"),
            ))
        });
        tx.reply(&reply);
        tx.agent.remove_stream(tx.id, &ctl);
        if shutdown {
            crate::shutdown(tx.agent.config.shutdown);
        }
    }
}
