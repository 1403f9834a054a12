//! Host side of the agent protocol: one connection to a guest agent, many concurrent streams.
//!
//! A reader task demultiplexes incoming frames by stream id; writers share the socket behind a
//! lock, one whole frame at a time. Flow control in both directions:
//! - guest -> host: the host returns credit as the caller consumes bytes, in batches of
//!   [`CREDIT_BATCH_BYTES`] (one credit frame per data frame cost a third of the throughput
//!   under TCG), so a guest that floods output waits instead of filling host memory. The
//!   reader holds the guest to that window: data beyond what the host granted on a channel,
//!   more than [`MAX_QUEUED_CONTROL`] unread control frames on a stream, or stdin credit past
//!   any window the host could have used closes the connection (a compromised guest PID 1
//!   cannot grow host memory);
//! - host -> guest: `Credit(Stdin)` frames from the guest fill a per-stream byte semaphore and
//!   [`AgentStream::send_data`] waits on it, so the host never has more than the window in
//!   flight. The semaphore closes when the stream's reply arrives or the connection drops, so a
//!   sender never waits for credit that cannot come.
//!
//! When the connection drops every open stream ends with [`CoreError::Agent`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bandsox_protocol::frame::{self, Channel, FrameKind};
use bandsox_protocol::{
    decode_json, Event, ExecRequest, ExitStatus, Frame, FrameDecoder, Hello, Reply, ReplyBody,
    Request, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Semaphore};

use bandsox_vmm::VmHandle;

use crate::error::{CoreError, Result};

/// How often the host repeats its hello while the guest is still booting.
const HELLO_INTERVAL: Duration = Duration::from_millis(200);

pub use bandsox_protocol::frame::CREDIT_BATCH_BYTES;

/// Unread frames other than non-empty data (events, EOFs, empty data) one stream may have
/// queued; an agent sends a handful per stream.
pub const MAX_QUEUED_CONTROL: u32 = 64;

/// Stdin window the guest may grant at most: it only gives back what it consumed, so its
/// grants never lift the window above [`frame::INITIAL_WINDOW`]; far above that is hostile.
const MAX_STDIN_WINDOW: usize = 64 * frame::INITIAL_WINDOW as usize;

/// What the host granted the guest on one stream, shared by the stream (which grants) and
/// the reader (which checks).
struct RecvWindow {
    /// Bytes granted per channel (the initial window plus every credit sent).
    granted: [std::sync::atomic::AtomicU64; 3],
    /// Control frames queued and not yet read.
    control: AtomicU32,
}

impl RecvWindow {
    fn new() -> Self {
        let w = || std::sync::atomic::AtomicU64::new(u64::from(frame::INITIAL_WINDOW));
        Self {
            granted: [w(), w(), w()],
            control: AtomicU32::new(0),
        }
    }
}

/// Where the reader task delivers one stream's frames.
struct Route {
    tx: mpsc::UnboundedSender<Frame>,
    /// Bytes the host may still send on `Stdin`.
    stdin_window: Arc<Semaphore>,
    window: Arc<RecvWindow>,
    /// Data bytes received per channel.
    received: [u64; 3],
}

type Routes = Arc<Mutex<HashMap<u32, Route>>>;

/// A connection to one guest agent. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` once [`AgentClient::close`] ran.
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// Tells the reader task to stop (close).
    stop: Arc<tokio::sync::Notify>,
    routes: Routes,
    next_stream: AtomicU32,
    closed: Arc<AtomicBool>,
    agent: Hello,
}

/// Output of a finished command.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes dropped beyond the caller's cap, per stream.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

impl AgentClient {
    /// Connects to the agent socket and performs the hello handshake, retrying until
    /// `timeout` (the guest may still be booting; the socket may not exist yet).
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(CoreError::Agent(format!(
                        "cannot connect to {}: {e}",
                        socket.display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Self::handshake(stream, deadline).await
    }

    /// Opens the agent channel of a VMM handle ([`VmHandle::connect_agent`]: a plain Unix
    /// socket for QEMU, a vsock `CONNECT` for Firecracker) and performs the hello handshake,
    /// retrying until `timeout` while the guest agent is not listening yet.
    pub async fn connect_handle(handle: &dyn VmHandle, timeout: Duration) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match handle.connect_agent().await {
                Ok(s) => break s,
                Err(e)
                    if tokio::time::Instant::now() >= deadline
                        || handle.exit_status().is_some() =>
                {
                    return Err(CoreError::Agent(format!(
                        "cannot connect to the agent via {}: {e}",
                        handle.agent_socket().display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Self::handshake(stream, deadline).await
    }

    async fn handshake(stream: UnixStream, deadline: tokio::time::Instant) -> Result<Self> {
        let (mut reader, writer) = stream.into_split();
        let routes: Routes = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));

        // Handshake: repeat the hello on fresh stream ids until one is answered.
        let mut decoder = FrameDecoder::new();
        let mut writer = writer;
        let mut buf = vec![0u8; 64 << 10];
        let mut stream_id = 1u32;
        let hello = Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            software: format!("bandsox {}", env!("CARGO_PKG_VERSION")),
            capabilities: vec![],
        });
        let agent = 'handshake: loop {
            let mut out = Vec::new();
            frame::encode_json(&mut out, stream_id, FrameKind::Request, &hello)
                .map_err(|e| CoreError::Agent(e.to_string()))?;
            writer.write_all(&out).await?;
            stream_id += 1;
            let tick = tokio::time::Instant::now() + HELLO_INTERVAL;
            loop {
                let wait_until = tick.min(deadline);
                let n = match tokio::time::timeout_at(wait_until, reader.read(&mut buf)).await {
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        return Err(CoreError::Agent("no hello from the guest agent".into()))
                    }
                    Err(_) => continue 'handshake,
                    Ok(Ok(0)) => {
                        return Err(CoreError::Agent("agent socket closed by the VMM".into()))
                    }
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(e.into()),
                };
                decoder.push(&buf[..n]);
                loop {
                    let f = match decoder.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        // Bytes left in the channel by an earlier host (a raw benchmark
                        // connection, a frame cut by a restore): drop them; the hello is
                        // repeated and its reply arrives on a frame boundary.
                        Err(_) => {
                            decoder.reset();
                            break;
                        }
                    };
                    if f.kind != FrameKind::Reply {
                        continue;
                    }
                    match decode_json::<Reply>(&f.payload) {
                        Ok(Reply::Ok(ReplyBody::Hello(h))) => break 'handshake h,
                        Ok(Reply::Error(e)) => return Err(CoreError::Guest(e)),
                        _ => {}
                    }
                }
            }
        };
        if agent.version != PROTOCOL_VERSION {
            return Err(CoreError::Agent(format!(
                "guest agent speaks protocol {} but this host speaks {PROTOCOL_VERSION}; rebuild the initramfs with `bandsox init --force`",
                agent.version
            )));
        }

        // Frames that arrived after the hello reply (answers to repeated hellos) are dropped:
        // their streams are not routed.
        let stop = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(read_loop(
            reader,
            decoder,
            routes.clone(),
            closed.clone(),
            stop.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                writer: tokio::sync::Mutex::new(Some(writer)),
                stop,
                routes,
                next_stream: AtomicU32::new(stream_id + 1),
                closed,
                agent,
            }),
        })
    }

    /// What the agent said about itself in the handshake.
    pub fn agent_info(&self) -> &Hello {
        &self.inner.agent
    }

    /// True once the connection has dropped.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Opens a stream by sending `req`.
    pub async fn open(&self, req: &Request) -> Result<AgentStream> {
        if self.is_closed() {
            return Err(CoreError::Agent(
                "connection to the guest agent is closed".into(),
            ));
        }
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let stdin_window = Arc::new(Semaphore::new(frame::INITIAL_WINDOW as usize));
        let window = Arc::new(RecvWindow::new());
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Route {
                    tx,
                    stdin_window: Arc::clone(&stdin_window),
                    window: Arc::clone(&window),
                    received: [0; 3],
                },
            );
        let stream = AgentStream {
            id,
            rx,
            client: self.clone(),
            finished: false,
            stdin_window,
            window,
            pending_credit: [0; 3],
        };
        let mut out = Vec::new();
        frame::encode_json(&mut out, id, FrameKind::Request, req)
            .map_err(|e| CoreError::Agent(e.to_string()))?;
        self.send_raw(&out).await?;
        Ok(stream)
    }

    /// Holds the connection's writer: while the guard lives no frame is being written, so
    /// pausing or saving the VM cannot cut a frame in half.
    pub async fn write_lock(&self) -> impl Drop + '_ {
        self.inner.writer.lock().await
    }

    async fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        let mut w = self.inner.writer.lock().await;
        let Some(w) = w.as_mut() else {
            return Err(CoreError::Agent(
                "connection to the guest agent is closed".into(),
            ));
        };
        w.write_all(bytes)
            .await
            .map_err(|e| CoreError::Agent(format!("write to guest agent: {e}")))
    }

    /// Closes the connection (every clone sees it closed). Blocking operations in flight fail
    /// and are cancelled in the guest; durable commands keep running.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.writer.lock().await.take();
        self.inner.stop.notify_one();
        // Wait until the reader task let go of the socket, so a new connection can follow.
        for _ in 0..100 {
            if self
                .inner
                .routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
                && Arc::strong_count(&self.inner.stop) == 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a request that answers with a single reply.
    pub async fn call(&self, req: &Request, timeout: Duration) -> Result<ReplyBody> {
        let mut stream = self.open(req).await?;
        let fut = async {
            loop {
                match stream.next().await? {
                    StreamItem::Reply(body) => return Ok(body),
                    StreamItem::Event(_) | StreamItem::Data(..) | StreamItem::Eof(_) => {}
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| CoreError::Agent(format!("no reply within {} ms", timeout.as_millis())))?
    }

    /// Round trip of a ping.
    pub async fn ping(&self, timeout: Duration) -> Result<()> {
        match self.call(&Request::Ping, timeout).await? {
            ReplyBody::Pong => Ok(()),
            other => Err(CoreError::Agent(format!(
                "unexpected reply to ping: {other:?}"
            ))),
        }
    }

    /// Runs a command to completion, keeping at most `cap_bytes` of each output stream.
    /// `stdin` is sent (and closed) when given.
    pub async fn exec(
        &self,
        req: ExecRequest,
        stdin: Option<Vec<u8>>,
        cap_bytes: usize,
    ) -> Result<ExecOutput> {
        let timeout_ms = req.timeout_ms;
        let mut req = req;
        req.stdin = stdin.is_some();
        let mut stream = self.open(&Request::Exec(req)).await?;
        let sender = stream.sender();
        // Input is sent while output is read: a program may write before it reads. One that
        // exits without reading all of its input ends the stream first; its reply is what
        // matters then.
        let send = async move {
            if let Some(data) = stdin {
                if sender.send_data(Channel::Stdin, &data).await.is_ok() {
                    let _ = sender.send_eof(Channel::Stdin).await;
                }
            }
        };
        let mut out = ExecOutput::default();
        let fut = async {
            loop {
                match stream.next().await? {
                    StreamItem::Data(Channel::Stdout, bytes) => {
                        keep(&mut out.stdout, &mut out.stdout_dropped, &bytes, cap_bytes);
                    }
                    StreamItem::Data(Channel::Stderr, bytes) => {
                        keep(&mut out.stderr, &mut out.stderr_dropped, &bytes, cap_bytes);
                    }
                    StreamItem::Reply(ReplyBody::Exited(status)) => {
                        out.status = status;
                        return Ok(());
                    }
                    StreamItem::Reply(other) => {
                        return Err(CoreError::Agent(format!(
                            "unexpected reply to exec: {other:?}"
                        )))
                    }
                    _ => {}
                }
            }
        };
        let fut = async {
            let (r, ()) = tokio::join!(fut, send);
            r
        };
        // The agent enforces the timeout itself; this bound only catches a wedged agent.
        match timeout_ms {
            Some(ms) => {
                let bound = Duration::from_millis(ms) + Duration::from_secs(10);
                tokio::time::timeout(bound, fut)
                    .await
                    .map_err(|_| CoreError::ExecTimeout {
                        timeout_s: ms.div_ceil(1000),
                    })??
            }
            None => fut.await?,
        }
        Ok(out)
    }
}

fn keep(buf: &mut Vec<u8>, dropped: &mut u64, bytes: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    let take = room.min(bytes.len());
    buf.extend_from_slice(&bytes[..take]);
    *dropped += (bytes.len() - take) as u64;
}

/// One item received on a stream.
#[derive(Debug)]
pub enum StreamItem {
    Event(Event),
    Data(Channel, Vec<u8>),
    Eof(Channel),
    Reply(ReplyBody),
}

/// An open stream. Dropping it before its reply cancels the operation in the guest.
pub struct AgentStream {
    id: u32,
    rx: mpsc::UnboundedReceiver<Frame>,
    client: AgentClient,
    finished: bool,
    stdin_window: Arc<Semaphore>,
    window: Arc<RecvWindow>,
    /// Consumed but not yet credited bytes per channel.
    pending_credit: [u32; 3],
}

impl AgentStream {
    /// Next item; data is credited back to the guest as it is handed out.
    pub async fn next(&mut self) -> Result<StreamItem> {
        loop {
            let Some(f) = self.rx.recv().await else {
                self.finished = true;
                return Err(CoreError::Agent(
                    "connection to the guest agent dropped".into(),
                ));
            };
            if is_control(&f) {
                self.window.control.fetch_sub(1, Ordering::AcqRel);
            }
            match f.kind {
                FrameKind::Reply => {
                    self.finished = true;
                    return match decode_json::<Reply>(&f.payload) {
                        Ok(Reply::Ok(body)) => Ok(StreamItem::Reply(body)),
                        Ok(Reply::Error(e)) => Err(CoreError::Guest(e)),
                        Err(e) => Err(CoreError::Agent(format!("bad reply: {e}"))),
                    };
                }
                FrameKind::Event => match decode_json::<Event>(&f.payload) {
                    Ok(ev) => return Ok(StreamItem::Event(ev)),
                    // Events this host does not know are skipped.
                    Err(_) => continue,
                },
                FrameKind::Data => {
                    let (ch, bytes) = f
                        .channel_payload()
                        .map_err(|e| CoreError::Agent(e.to_string()))?;
                    let n = bytes.len() as u32;
                    let item = StreamItem::Data(ch, bytes.to_vec());
                    let pending = &mut self.pending_credit[ch as usize];
                    *pending += n;
                    if *pending >= CREDIT_BATCH_BYTES {
                        let mut credit = Vec::new();
                        frame::encode_credit(&mut credit, self.id, ch, *pending);
                        // Recorded before it is sent: the guest may use it at once.
                        self.window.granted[ch as usize]
                            .fetch_add(u64::from(*pending), Ordering::AcqRel);
                        *pending = 0;
                        self.client.send_raw(&credit).await?;
                    }
                    return Ok(item);
                }
                FrameKind::Eof => {
                    let (ch, _) = f
                        .channel_payload()
                        .map_err(|e| CoreError::Agent(e.to_string()))?;
                    return Ok(StreamItem::Eof(ch));
                }
                _ => continue,
            }
        }
    }

    /// The stream id (diagnostics).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends bytes on a channel (stdin); see [`StreamSender::send_data`].
    pub async fn send_data(&self, ch: Channel, bytes: &[u8]) -> Result<()> {
        self.sender().send_data(ch, bytes).await
    }

    /// Closes a channel (stdin EOF).
    pub async fn send_eof(&self, ch: Channel) -> Result<()> {
        self.sender().send_eof(ch).await
    }

    /// A handle that sends on this stream while another task reads it.
    pub fn sender(&self) -> StreamSender {
        StreamSender {
            id: self.id,
            client: self.client.clone(),
            stdin_window: Arc::clone(&self.stdin_window),
        }
    }
}

/// The sending half of an [`AgentStream`].
#[derive(Clone)]
pub struct StreamSender {
    id: u32,
    client: AgentClient,
    stdin_window: Arc<Semaphore>,
}

impl StreamSender {
    /// Sends bytes on a channel (stdin), in frames of at most [`frame::BULK_CHUNK_LEN`], each
    /// only once the guest's window allows it. Fails when the stream has ended (its reply
    /// arrived: read it with [`AgentStream::next`]) or the connection dropped.
    pub async fn send_data(&self, ch: Channel, bytes: &[u8]) -> Result<()> {
        let mut out = Vec::with_capacity(frame::BULK_CHUNK_LEN.min(bytes.len()) + 16);
        for chunk in bytes.chunks(frame::BULK_CHUNK_LEN) {
            if ch == Channel::Stdin {
                self.stdin_window
                    .acquire_many(chunk.len() as u32)
                    .await
                    .map_err(|_| {
                        CoreError::Agent("the stream ended before all input was sent".into())
                    })?
                    .forget();
            }
            out.clear();
            frame::encode_data(&mut out, self.id, ch, chunk);
            self.client.send_raw(&out).await?;
        }
        Ok(())
    }

    /// Closes a channel (stdin EOF).
    pub async fn send_eof(&self, ch: Channel) -> Result<()> {
        let mut out = Vec::new();
        frame::encode_eof(&mut out, self.id, ch);
        self.client.send_raw(&out).await
    }
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        self.client
            .inner
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if !self.finished && !self.client.is_closed() {
            let client = self.client.clone();
            let id = self.id;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut out = Vec::new();
                    frame::encode_frame(&mut out, id, FrameKind::Cancel, &[]);
                    let _ = client.send_raw(&out).await;
                });
            }
        }
    }
}

/// Frames the flow-control window does not cover, counted against [`MAX_QUEUED_CONTROL`]:
/// everything queued for the stream but non-empty data (credit is used by the reader).
fn is_control(f: &Frame) -> bool {
    match f.kind {
        FrameKind::Data => f.payload.len() <= 1,
        FrameKind::Credit => false,
        _ => true,
    }
}

/// Accounts one incoming frame against what the host granted its stream; `Err` says how the
/// guest broke the protocol.
fn check_window(route: &mut Route, f: &Frame) -> std::result::Result<(), String> {
    if is_control(f) {
        let queued = route.window.control.fetch_add(1, Ordering::AcqRel) + 1;
        if queued > MAX_QUEUED_CONTROL {
            return Err(format!("{queued} unread control frames"));
        }
        return Ok(());
    }
    match f.kind {
        FrameKind::Data => {
            let Ok((ch, bytes)) = f.channel_payload() else {
                return Err("a data frame on an unknown channel".into());
            };
            let i = ch as usize;
            route.received[i] += bytes.len() as u64;
            let granted = route.window.granted[i].load(Ordering::Acquire);
            if route.received[i] > granted {
                return Err(format!(
                    "{} bytes on {ch:?} for a window of {granted}",
                    route.received[i]
                ));
            }
        }
        FrameKind::Credit => {
            if let Ok((Channel::Stdin, n)) = f.credit() {
                if route.stdin_window.available_permits() + n as usize > MAX_STDIN_WINDOW {
                    return Err(format!("stdin credit of {n} bytes past any window"));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Shuts the connection down both ways: the guest's writes fail at once instead of filling
/// a socket nobody reads, and the host's writes fail instead of waiting.
fn cut_off(reader: &tokio::net::unix::OwnedReadHalf) {
    use std::os::fd::AsRawFd;
    let stream: &UnixStream = reader.as_ref();
    // SAFETY: shutdown(2) on a descriptor the stream keeps open; no memory is involved.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR) };
}

async fn read_loop(
    mut reader: tokio::net::unix::OwnedReadHalf,
    mut decoder: FrameDecoder,
    routes: Routes,
    closed: Arc<AtomicBool>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut buf = vec![0u8; 256 << 10];
    'outer: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(route) = routes.get_mut(&f.stream) else {
                        continue;
                    };
                    if let Err(why) = check_window(route, &f) {
                        tracing::warn!(
                            stream = f.stream,
                            "guest agent broke flow control ({why}); closing connection"
                        );
                        cut_off(&reader);
                        break 'outer;
                    }
                    match f.kind {
                        FrameKind::Credit => {
                            if let Ok((Channel::Stdin, n)) = f.credit() {
                                route.stdin_window.add_permits(n as usize);
                            }
                        }
                        FrameKind::Reply => {
                            route.stdin_window.close();
                            let _ = route.tx.send(f);
                        }
                        _ => {
                            let _ = route.tx.send(f);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "corrupt frame from guest agent; closing connection");
                    cut_off(&reader);
                    break 'outer;
                }
            }
        }
        tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => decoder.push(&buf[..n]),
            },
            () = stop.notified() => break,
        }
    }
    drop(reader);
    closed.store(true, Ordering::Release);
    // Dropping the senders ends every open stream with an error.
    let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
    for route in routes.values() {
        route.stdin_window.close();
    }
    routes.clear();
    drop(routes);
    drop(stop);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bandsox_protocol::frame::INITIAL_WINDOW;

    /// A fake guest on the other end of a socket pair: answers the hello, waits for the
    /// first request after it, then runs `then` on the socket and that request's stream id.
    async fn fake_guest<F, Fut>(then: F) -> (AgentClient, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(UnixStream, u32) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let task = tokio::spawn(async move {
            let mut dec = FrameDecoder::new();
            let mut buf = vec![0u8; 64 << 10];
            let id = 'found: loop {
                let n = guest.read(&mut buf).await.unwrap();
                assert!(n > 0, "host closed before a request");
                dec.push(&buf[..n]);
                while let Some(f) = dec.next_frame().unwrap() {
                    if f.kind != FrameKind::Request {
                        continue;
                    }
                    // Every hello is answered (the host repeats it while it waits).
                    if let Ok(Request::Hello(_)) = decode_json::<Request>(&f.payload) {
                        let reply = Reply::Ok(ReplyBody::Hello(Hello {
                            version: PROTOCOL_VERSION,
                            software: "fake".into(),
                            capabilities: vec![],
                        }));
                        let mut out = Vec::new();
                        frame::encode_json(&mut out, f.stream, FrameKind::Reply, &reply).unwrap();
                        guest.write_all(&out).await.unwrap();
                    } else {
                        break 'found f.stream;
                    }
                }
            };
            then(guest, id).await;
        });
        let client =
            AgentClient::handshake(host, tokio::time::Instant::now() + Duration::from_secs(5))
                .await
                .unwrap();
        (client, task)
    }

    /// Sends `total` bytes of stdout on `id` in 64 KiB frames, ignoring credit.
    async fn flood(guest: &mut UnixStream, id: u32, total: usize) {
        let chunk = vec![7u8; 64 << 10];
        let mut out = Vec::new();
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            out.clear();
            frame::encode_data(&mut out, id, Channel::Stdout, &chunk[..n]);
            if guest.write_all(&out).await.is_err() {
                return; // the host closed the connection
            }
            sent += n;
        }
    }

    /// Reads (credit) until the host closes the connection.
    async fn drain(guest: &mut UnixStream) {
        let mut b = vec![0u8; 4096];
        while matches!(guest.read(&mut b).await, Ok(n) if n > 0) {}
    }

    async fn wait_closed(client: &AgentClient) -> bool {
        for _ in 0..200 {
            if client.is_closed() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_guest_within_its_window_is_served() {
        let (client, guest) = fake_guest(|mut g, id| async move {
            flood(&mut g, id, INITIAL_WINDOW as usize).await;
            drain(&mut g).await;
        })
        .await;
        let mut stream = client.open(&Request::Ping).await.unwrap();
        // Unread, a full window waits in the host; the connection stays up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!client.is_closed());
        let mut got = 0;
        while got < INITIAL_WINDOW as usize {
            match stream.next().await.unwrap() {
                StreamItem::Data(Channel::Stdout, b) => got += b.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(!client.is_closed());
        client.close().await;
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn a_guest_beyond_its_window_is_cut_off() {
        // 4 MiB for a 1 MiB window the host never extends (it reads nothing).
        let (client, guest) = fake_guest(|mut g, id| async move {
            flood(&mut g, id, 4 * INITIAL_WINDOW as usize).await;
            // Stays connected: only the host may end it.
            drain(&mut g).await;
        })
        .await;
        let mut stream = client.open(&Request::Ping).await.unwrap();
        assert!(wait_closed(&client).await, "the connection stayed open");
        // What was queued is at most the window; then the stream ends with an error.
        let mut got = 0;
        let err = loop {
            match stream.next().await {
                Ok(StreamItem::Data(_, b)) => got += b.len(),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => break e,
            }
        };
        assert!(got <= INITIAL_WINDOW as usize, "{got} bytes queued");
        assert!(matches!(err, CoreError::Agent(_)), "{err}");
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn credit_extends_the_window() {
        // The host reads as it goes, so it grants credit and 4 MiB is fine.
        let (client, guest) = fake_guest(|mut g, id| async move {
            let (mut r, mut w) = g.split();
            // Send only within the granted window: wait for credit after each MiB.
            let mut dec = FrameDecoder::new();
            let mut granted = u64::from(INITIAL_WINDOW);
            let mut sent = 0u64;
            let mut buf = vec![0u8; 4096];
            let chunk = vec![1u8; 64 << 10];
            while sent < 4 * u64::from(INITIAL_WINDOW) {
                while sent + chunk.len() as u64 > granted {
                    let n = r.read(&mut buf).await.unwrap();
                    assert!(n > 0, "host closed early");
                    dec.push(&buf[..n]);
                    while let Some(f) = dec.next_frame().unwrap() {
                        if let Ok((Channel::Stdout, n)) = f.credit() {
                            granted += u64::from(n);
                        }
                    }
                }
                let mut out = Vec::new();
                frame::encode_data(&mut out, id, Channel::Stdout, &chunk);
                w.write_all(&out).await.unwrap();
                sent += chunk.len() as u64;
            }
            let mut out = Vec::new();
            frame::encode_json(&mut out, id, FrameKind::Reply, &Reply::Ok(ReplyBody::Done))
                .unwrap();
            w.write_all(&out).await.unwrap();
            drain(&mut g).await;
        })
        .await;
        let mut stream = client.open(&Request::Ping).await.unwrap();
        let mut got = 0;
        loop {
            match stream.next().await.unwrap() {
                StreamItem::Data(_, b) => got += b.len(),
                StreamItem::Reply(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 4 * INITIAL_WINDOW as usize);
        assert!(!client.is_closed());
        client.close().await;
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn a_flood_of_events_is_cut_off() {
        let (client, guest) = fake_guest(|mut g, id| async move {
            let mut out = Vec::new();
            for _ in 0..10_000 {
                frame::encode_json(&mut out, id, FrameKind::Event, &Event::Started { pid: 1 })
                    .unwrap();
            }
            let _ = g.write_all(&out).await;
            drain(&mut g).await;
        })
        .await;
        let _stream = client.open(&Request::Ping).await.unwrap();
        assert!(wait_closed(&client).await, "the connection stayed open");
        guest.await.unwrap();
    }
}
