//! Host side of the agent protocol: one connection to a guest agent, many concurrent streams.
//!
//! A reader task demultiplexes incoming frames by stream id; writers share the socket behind a
//! lock, one whole frame at a time. Flow control in both directions:
//! - guest -> host: the host returns credit as the caller consumes bytes, in batches of
//!   [`CREDIT_BATCH_BYTES`] (one credit frame per data frame cost a third of the throughput
//!   under TCG), so a guest that floods output waits instead of filling host memory;
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

/// Where the reader task delivers one stream's frames.
struct Route {
    tx: mpsc::UnboundedSender<Frame>,
    /// Bytes the host may still send on `Stdin`.
    stdin_window: Arc<Semaphore>,
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
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Route {
                    tx,
                    stdin_window: Arc::clone(&stdin_window),
                },
            );
        let stream = AgentStream {
            id,
            rx,
            client: self.clone(),
            finished: false,
            stdin_window,
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
                    let routes = routes.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(route) = routes.get(&f.stream) else {
                        continue;
                    };
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
