//! `bench/agent`: the agent protocol against the raw channel it runs on, in one VM.
//!
//! The floor is the same virtio-serial port used raw: `Request::Raw` makes the agent leave the
//! protocol on that connection (echo every byte / sink N bytes then ack / source N bytes) until
//! the host disconnects. Rows: ping vs raw echo, measured in alternating blocks so both see the
//! same host load; `exec true` vs raw echo + the guest-measured spawn-and-wait of `true`;
//! 100 MiB upload/download vs a raw stream of the same bytes into/out of the same file (the
//! agent's file I/O without the protocol), and vs the bare channel (no file at all); 1000 x
//! 4 KiB files in one batch vs one by one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bandsox_core::guest::WriteOptions;
use bandsox_core::{CreateVm, Manager, ManagerConfig};
use bandsox_protocol::frame::{self, FrameKind};
use bandsox_protocol::{
    decode_json, ExecRequest, FrameDecoder, Hello, RawMode, Reply, ReplyBody, Request,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::util;

const RTT_ITERS: usize = 300;
const RTT_BLOCKS: usize = 5;
const WARMUP: usize = 10;
const EXEC_ITERS: usize = 200;
const BULK_BYTES: u64 = 100 << 20;
const BULK_RUNS: usize = 3;
const SMALL_FILES: usize = 1000;

pub async fn run() -> Result<()> {
    util::in_scratch("agent", |work| async move { run_in(&work).await }).await
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn run_in(work: &Path) -> Result<()> {
    let storage = util::prepare_storage(work)?;
    let mgr = Manager::open(ManagerConfig::new(storage)).await?;
    let mut req = CreateVm::new("bandsox/busybox");
    // Cold boots: templates are measured by bench/create.
    req.template = Some(false);
    req.mem_mib = 512;
    let vm = mgr.create_vm(req).await?;
    let id = vm.id.clone();
    let result = measure(&mgr, &id).await;
    if result.is_err() {
        // The guest's side of a failure is in its console (the agent logs there).
        let console = work.join("storage/vms").join(&id).join("console.log");
        if let Ok(log) = std::fs::read_to_string(&console) {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("last lines of {}:", console.display());
            for l in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("  {l}");
            }
        }
    }
    let _ = mgr.delete_vm(&id).await;
    result
}

async fn measure(mgr: &Manager, id: &str) -> Result<()> {
    let (backend, accel) = mgr.backend();
    let socket = mgr.agent_socket(id)?;

    // Ping vs raw echo, in alternating blocks.
    let mut echo = Vec::with_capacity(RTT_ITERS);
    let mut ping = Vec::with_capacity(RTT_ITERS);
    for _ in 0..RTT_BLOCKS {
        mgr.agent(id).await?.close().await;
        let mut raw = raw_connect(&socket, RawMode::Echo).await?;
        let msg = [0x42u8; 32];
        let mut back = [0u8; 32];
        for i in 0..RTT_ITERS / RTT_BLOCKS + WARMUP {
            let t = Instant::now();
            raw.write_all(&msg).await?;
            raw.read_exact(&mut back).await?;
            if i >= WARMUP {
                echo.push(t.elapsed());
            }
        }
        drop(raw);
        // Echo ends when the guest sees the host hang up; a host that reconnects at once can
        // be echoed to instead (QEMU's chardev reconnects before the guest polls the hangup).
        tokio::time::sleep(Duration::from_millis(300)).await;
        resync(mgr, id).await?;
        let client = mgr.agent(id).await?;
        for i in 0..RTT_ITERS / RTT_BLOCKS + WARMUP {
            let t = Instant::now();
            client.ping(Duration::from_secs(10)).await?;
            if i >= WARMUP {
                ping.push(t.elapsed());
            }
        }
    }
    let client = mgr.agent(id).await?;

    // exec true.
    let mut exec = Vec::with_capacity(EXEC_ITERS);
    let mut spawn = Vec::with_capacity(EXEC_ITERS);
    for i in 0..EXEC_ITERS + 10 {
        let req = ExecRequest {
            argv: Some(vec!["true".into()]),
            ..Default::default()
        };
        let t = Instant::now();
        let out = client.exec(req, None, 1024).await?;
        if i >= 10 {
            exec.push(t.elapsed());
            spawn.push(Duration::from_micros(out.status.duration_us));
        }
    }

    // Bulk upload / download, to a tmpfs file (protocol and copies only) and to a file on the
    // VM's disk (ext4 over virtio-blk: adds the guest's disk I/O). Floors: the same bytes
    // streamed raw into / out of the same file, and the bare channel (no file).
    let chunk = vec![0x5au8; 64 << 10];
    let targets = [("/dev/shm/bulk.bin", "tmpfs"), ("/root/bulk.bin", "disk")];
    let mut up: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut down: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut raw_up_file: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut raw_down_file: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut raw_up = Vec::new();
    let mut raw_down = Vec::new();
    for _ in 0..BULK_RUNS {
        for (i, (path, _)) in targets.iter().enumerate() {
            let mut reader = Repeat {
                chunk: &chunk,
                left: BULK_BYTES,
            };
            let t = Instant::now();
            let n = mgr
                .upload(id, path, &mut reader.as_reader(), WriteOptions::default())
                .await?;
            up[i].push(t.elapsed());
            if n != BULK_BYTES {
                bail!("uploaded {n} bytes");
            }
            let mut sink = tokio::io::sink();
            let t = Instant::now();
            let n = mgr.download(id, path, &mut sink).await?;
            down[i].push(t.elapsed());
            if n != BULK_BYTES {
                bail!("downloaded {n} bytes");
            }
            let _ = mgr.remove(id, path, false).await;

            let mode = RawMode::SinkFile {
                bytes: BULK_BYTES,
                path: (*path).to_owned(),
            };
            raw_up_file[i].push(raw_upload(mgr, id, &socket, mode, &chunk).await?);
            let mode = RawMode::SourceFile {
                path: (*path).to_owned(),
            };
            raw_down_file[i].push(raw_download(mgr, id, &socket, mode).await?);
            let _ = mgr.remove(id, path, false).await;
        }
        let mode = RawMode::Sink { bytes: BULK_BYTES };
        raw_up.push(raw_upload(mgr, id, &socket, mode, &chunk).await?);
        let mode = RawMode::Source { bytes: BULK_BYTES };
        raw_down.push(raw_download(mgr, id, &socket, mode).await?);
    }

    // 1000 x 4 KiB files: one batch vs one by one.
    let files: Vec<(String, Vec<u8>, Option<u32>)> = (0..SMALL_FILES)
        .map(|i| (format!("/root/small/b/{i}"), vec![i as u8; 4096], None))
        .collect();
    mgr.mkdir(id, "/root/small/one", true, None).await?;
    let t = Instant::now();
    mgr.write_files(id, &files, true).await?;
    let batch = t.elapsed();
    let t = Instant::now();
    for (i, (_, bytes, _)) in files.iter().enumerate() {
        mgr.write_file(
            id,
            &format!("/root/small/one/{i}"),
            bytes,
            WriteOptions::default(),
        )
        .await?;
    }
    let one_by_one = t.elapsed();

    let rate = |d: &Duration| BULK_BYTES as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let med_rate = |v: &mut Vec<Duration>| rate(&util::median(v));
    let (echo_med, echo_p95) = (pct(&mut echo, 0.5), pct(&mut echo, 0.95));
    let (ping_med, ping_p95) = (pct(&mut ping, 0.5), pct(&mut ping, 0.95));
    let (exec_med, exec_p95) = (pct(&mut exec, 0.5), pct(&mut exec, 0.95));
    let spawn_med = pct(&mut spawn, 0.5);
    let exec_floor = echo_med + spawn_med;
    println!(
        "backend {backend}, accelerator {accel}; one VM (1 vCPU, 512 MiB), virtio-serial channel"
    );
    println!();
    println!(
        "| measurement | ours median | ours p95 | floor median | floor p95 | ratio (median) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| ping round trip ({RTT_ITERS}x) vs raw 32-byte echo | {} | {} | {} | {} | {:.2}x |",
        us(ping_med),
        us(ping_p95),
        us(echo_med),
        us(echo_p95),
        ping_med.as_secs_f64() / echo_med.as_secs_f64()
    );
    println!(
        "| `exec true` ({EXEC_ITERS}x) vs raw echo + guest spawn-and-wait ({}) | {} | {} | {} | – | {:.2}x |",
        us(spawn_med),
        us(exec_med),
        us(exec_p95),
        us(exec_floor),
        exec_med.as_secs_f64() / exec_floor.as_secs_f64()
    );
    let (ru, rd) = (med_rate(&mut raw_up), med_rate(&mut raw_down));
    let mut bare = Vec::new();
    for (i, (_, kind)) in targets.iter().enumerate() {
        let (u, d) = (med_rate(&mut up[i]), med_rate(&mut down[i]));
        let (fu, fd) = (
            med_rate(&mut raw_up_file[i]),
            med_rate(&mut raw_down_file[i]),
        );
        println!(
            "| 100 MiB upload to {kind} ({BULK_RUNS}x) vs raw stream into the same file | {u:.1} MiB/s | – | {fu:.1} MiB/s | – | {:.0} % of raw |",
            100.0 * u / fu
        );
        println!(
            "| 100 MiB download from {kind} ({BULK_RUNS}x) vs raw stream of the same file | {d:.1} MiB/s | – | {fd:.1} MiB/s | – | {:.0} % of raw |",
            100.0 * d / fd
        );
        bare.push(format!(
            "| {kind} | {:.0} % | {:.0} % |",
            100.0 * u / ru,
            100.0 * d / rd
        ));
    }
    println!(
        "| {SMALL_FILES} x 4 KiB files: one batch vs one by one | {:.3} s | – | {:.3} s | – | {:.1}x faster |",
        batch.as_secs_f64(),
        one_by_one.as_secs_f64(),
        one_by_one.as_secs_f64() / batch.as_secs_f64()
    );
    println!();
    println!(
        "Bare channel, no file: raw sink {ru:.1} MiB/s, raw source {rd:.1} MiB/s. Ours as a share of it:"
    );
    println!();
    println!("| file on | upload | download |");
    println!("|---|---|---|");
    for row in bare {
        println!("{row}");
    }
    Ok(())
}

/// Streams `BULK_BYTES` of `chunk` into a raw `Sink`/`SinkFile` connection; the time until the
/// agent's one-byte acknowledgement.
async fn raw_upload(
    mgr: &Manager,
    id: &str,
    socket: &Path,
    mode: RawMode,
    chunk: &[u8],
) -> Result<Duration> {
    mgr.agent(id).await?.close().await;
    let mut raw = raw_connect(socket, mode).await?;
    let t = Instant::now();
    let mut left = BULK_BYTES;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        raw.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    raw.read_exact(&mut ack).await?;
    let took = t.elapsed();
    drop(raw);
    resync(mgr, id).await?;
    Ok(took)
}

/// Reads `BULK_BYTES` from a raw `Source`/`SourceFile` connection.
async fn raw_download(mgr: &Manager, id: &str, socket: &Path, mode: RawMode) -> Result<Duration> {
    mgr.agent(id).await?.close().await;
    let mut raw = raw_connect(socket, mode).await?;
    let t = Instant::now();
    raw.write_all(b"g").await?;
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    while got < BULK_BYTES {
        let n = raw.read(&mut buf).await?;
        if n == 0 {
            bail!("raw source ended after {got} bytes");
        }
        got += n as u64;
    }
    let took = t.elapsed();
    drop(raw);
    resync(mgr, id).await?;
    Ok(took)
}

/// `left` bytes of `chunk` repeated.
struct Repeat<'a> {
    chunk: &'a [u8],
    left: u64,
}

impl<'a> Repeat<'a> {
    fn as_reader(&mut self) -> impl tokio::io::AsyncRead + Unpin + '_ {
        let chunk = self.chunk;
        let left = &mut self.left;
        RepeatReader { chunk, left }
    }
}

struct RepeatReader<'a> {
    chunk: &'a [u8],
    left: &'a mut u64,
}

impl tokio::io::AsyncRead for RepeatReader<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(*self.left)
            .min(self.chunk.len() as u64) as usize;
        buf.put_slice(&self.chunk[..n]);
        *self.left -= n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

/// After a raw connection: the agent cannot tell where raw bytes end and a new host begins
/// if the host reconnects at once, so reconnect through the client (which repeats its hello
/// until answered), ping, and close it again.
async fn resync(mgr: &Manager, id: &str) -> Result<()> {
    let c = mgr.agent(id).await?;
    c.ping(Duration::from_secs(10)).await?;
    c.close().await;
    Ok(())
}

/// Stream id of the raw request: far from the ids a client counts up from 1. Replies to the
/// previous connection's requests can still arrive on this one (a client repeats its hello
/// until answered, and the repeats are answered late); one of them must not be taken for the
/// raw reply, or the raw bytes that follow are misread (this once made the echo floor 3 µs).
const RAW_STREAM: u32 = 0x7fff_0000;

/// Connects to the agent socket, says hello, switches the connection to raw `mode`.
async fn raw_connect(socket: &Path, mode: RawMode) -> Result<UnixStream> {
    let what = format!("{mode:?}");
    raw_connect_inner(socket, mode)
        .await
        .with_context(|| format!("switching a connection to raw {what}"))
}

async fn raw_connect_inner(socket: &Path, mode: RawMode) -> Result<UnixStream> {
    let mut s = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect {}", socket.display()))?;
    let mut out = Vec::new();
    let hello = Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        software: "bandsox-bench".into(),
        capabilities: vec![],
    });
    frame::encode_json(&mut out, RAW_STREAM - 1, FrameKind::Request, &hello)?;
    frame::encode_json(
        &mut out,
        RAW_STREAM,
        FrameKind::Request,
        &Request::Raw { mode },
    )?;
    s.write_all(&out).await?;
    // Read frames until the Raw request's reply: after it, the connection is raw.
    let mut decoder = FrameDecoder::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if Instant::now() > deadline {
            bail!("no reply to the raw request");
        }
        // One byte at a time, so no raw byte is read into the decoder.
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut byte))
            .await
            .context("no byte from the agent in 20 s")??;
        if n == 0 {
            bail!("agent socket closed");
        }
        decoder.push(&byte);
        if let Some(f) = decoder.next_frame()? {
            if f.stream == RAW_STREAM && f.kind == FrameKind::Reply {
                match decode_json::<Reply>(&f.payload)? {
                    Reply::Ok(ReplyBody::Done) => return Ok(s),
                    Reply::Ok(other) => bail!("unexpected reply to the raw request: {other:?}"),
                    Reply::Error(e) => bail!("raw mode refused: {}", e.message),
                }
            }
        }
    }
}
