//! `bench/api`: the HTTP server's own cost. `GET /api/vms` with 1 000 VM records (goal p99
//! <= 10 ms) next to `GET /api/version` (the floor: routing, auth guard, one small JSON), and
//! `POST /api/vms/{id}/exec` of `true` next to the same core call without HTTP (goal: <= 1 ms
//! added). The server runs in this process on a loopback port; requests go over one kept-alive
//! TCP connection with a minimal HTTP/1.1 client, so the client adds next to nothing.
//!
//! Observability: the same requests against a second listener of the same manager with
//! metrics and the access log off (goal: with them on <= 1.05x), interleaved. The access log
//! is really written (to a file in the scratch directory), as a server writes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bandsox_core::store::{TimeoutAction, VmRecord};
use bandsox_core::{CreateVm, Manager, ManagerConfig, VmStatus};
use bandsox_protocol::ExecRequest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const RECORDS: usize = 1000;

pub async fn run(iterations: usize) -> Result<()> {
    crate::util::in_scratch("api", |work| async move {
        let log = std::fs::File::create(work.join("access.log"))?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("bandsox::access=info"))
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(log))
            .try_init();
        let storage = crate::util::prepare_storage(&work)?;
        let mgr = Manager::open(ManagerConfig::new(storage)).await?;
        let result = measure(&mgr, iterations).await;
        for vm in mgr.list_vms()? {
            if vm.status != VmStatus::Stopped {
                let _ = mgr.delete_vm(&vm.id).await;
            }
        }
        result
    })
    .await
}

/// One HTTP/1.1 connection with keep-alive.
struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    async fn connect(addr: std::net::SocketAddr) -> Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self {
            io: BufReader::new(s),
        })
    }

    /// Sends a request and returns (status, body).
    async fn call(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let w = self.io.get_mut();
        w.write_all(head.as_bytes()).await?;
        w.write_all(body.as_bytes()).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut len = None;
        loop {
            line.clear();
            self.io.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut out = vec![0; len.context("response without Content-Length")?];
        self.io.read_exact(&mut out).await?;
        Ok((status, out))
    }

    /// Times `n` GETs of `path`, each of which must answer 200.
    async fn time_gets(&mut self, path: &str, n: usize) -> Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let (st, _) = self.call("GET", path, "").await?;
            out.push(t.elapsed());
            if st != 200 {
                bail!("GET {path} answered {st}");
            }
        }
        Ok(out)
    }
}

fn stopped_record(i: usize) -> VmRecord {
    let t = 1_700_000_000.0 + i as f64;
    VmRecord {
        id: format!("{i:032x}"),
        name: format!("bench-{i}"),
        image: "bandsox/busybox".into(),
        image_digest: "sha256:0".into(),
        status: VmStatus::Stopped,
        vcpu: 1,
        mem_mib: 128,
        disk_size_mib: 4096,
        created_at: t,
        updated_at: t,
        pid: None,
        error: None,
        metadata: serde_json::json!({"team": "bench", "n": i}),
        env_vars: [("LANG".to_owned(), "C.UTF-8".to_owned())].into(),
        restored_from: None,
        expires_at: None,
        timeout_action: TimeoutAction::Stop,
        vmm: "qemu".into(),
        stop_reason: None,
        stopped_at: None,
    }
}

/// Serves `state`'s API on a free loopback port, in this process.
async fn serve(state: bandsox_server::AppState) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(bandsox_server::listen::serve_until(
        listener,
        bandsox_server::router(state),
        bandsox_server::ConnLimits::default(),
        std::future::pending(),
    ));
    Ok(addr)
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure(mgr: &Arc<Manager>, n: usize) -> Result<()> {
    // The VM first (creation counts VMs against the limit), then the 1 000 stopped records.
    let vm = mgr
        .create_vm(CreateVm {
            template: Some(false),
            ..CreateVm::new("bandsox/busybox")
        })
        .await?;
    for i in 0..RECORDS - 1 {
        mgr.store().insert_vm(&stopped_record(i))?;
    }
    let addr = serve(bandsox_server::AppState::new(mgr.clone())).await?;
    let mut quiet_state = bandsox_server::AppState::new(mgr.clone());
    quiet_state.observer = Arc::new(bandsox_server::observe::Observer::off());
    let quiet_addr = serve(quiet_state).await?;
    let mut c = Conn::connect(addr).await?;
    let mut quiet = Conn::connect(quiet_addr).await?;

    // Warm up, and check the answers are what we think they are.
    let (st, body) = c.call("GET", "/api/vms", "").await?;
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    if st != 200 || listed.len() != RECORDS {
        bail!("GET /api/vms answered {st} with {} VMs", listed.len());
    }
    let exec_path = format!("/api/vms/{}/exec", vm.id);
    let exec_body = r#"{"command":"true","timeout":30}"#;
    let (st, body) = c.call("POST", &exec_path, exec_body).await?;
    if st != 200 {
        bail!("exec answered {st}: {}", String::from_utf8_lossy(&body));
    }

    // The same GETs with observability on and off, in alternating blocks of 10.
    let (mut version, mut version_quiet, mut list, mut list_quiet) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n.div_ceil(10) {
        version.extend(c.time_gets("/api/version", 10).await?);
        version_quiet.extend(quiet.time_gets("/api/version", 10).await?);
        list.extend(c.time_gets("/api/vms", 10).await?);
        list_quiet.extend(quiet.time_gets("/api/vms", 10).await?);
    }
    let mut store_list = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let all = mgr.list_vms()?;
        store_list.push(t.elapsed());
        if all.len() != RECORDS {
            bail!("list_vms returned {} records", all.len());
        }
    }

    // Exec: the core call and the HTTP call, interleaved so both see the same guest.
    let core_req = || ExecRequest {
        command: Some("true".into()),
        timeout_ms: Some(30_000),
        ..Default::default()
    };
    let (mut core, mut http, mut http_quiet) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for _ in 0..n {
        let t = Instant::now();
        let out = mgr.exec(&vm.id, core_req(), None, 64 << 20).await?;
        core.push(t.elapsed());
        if out.status.exit_code != Some(0) {
            bail!("core exec failed: {:?}", out.status);
        }
        let t = Instant::now();
        let (st, _) = c.call("POST", &exec_path, exec_body).await?;
        http.push(t.elapsed());
        if st != 200 {
            bail!("HTTP exec answered {st}");
        }
        let t = Instant::now();
        let (st, _) = quiet.call("POST", &exec_path, exec_body).await?;
        http_quiet.push(t.elapsed());
        if st != 200 {
            bail!("HTTP exec answered {st}");
        }
    }
    mgr.delete_vm(&vm.id).await?;

    let (backend, accel) = mgr.backend();
    println!("bench/api: backend {backend} ({accel}), {n} requests each, {RECORDS} VM records");
    println!();
    println!("| measurement | median ms | p95 ms | p99 ms |");
    println!("| --- | --- | --- | --- |");
    for (name, v) in [
        ("GET /api/version (floor)", &mut version),
        ("list of 1000 records: core call (SQLite)", &mut store_list),
        ("GET /api/vms, 1000 records", &mut list),
        ("exec `true`: core call", &mut core),
        ("exec `true`: POST /api/vms/{id}/exec", &mut http),
    ] {
        let (p50, p95, p99) = (quantile(v, 0.5), quantile(v, 0.95), quantile(v, 0.99));
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            ms(p50),
            ms(p95),
            ms(p99)
        );
    }
    println!();
    println!("Metrics and access log on vs off (same manager, interleaved):");
    println!();
    println!("| request | on: median ms | off: median ms | on / off (goal <= 1.05x) |");
    println!("| --- | --- | --- | --- |");
    for (name, on, off) in [
        ("GET /api/version", &mut version, &mut version_quiet),
        ("GET /api/vms, 1000 records", &mut list, &mut list_quiet),
        ("POST /api/vms/{id}/exec `true`", &mut http, &mut http_quiet),
    ] {
        let (a, b) = (ms(quantile(on, 0.5)), ms(quantile(off, 0.5)));
        println!("| {name} | {a:.3} | {b:.3} | {:.3}x |", a / b);
    }
    let list_p99 = ms(quantile(&mut list, 0.99));
    let added = ms(quantile(&mut http, 0.5)) - ms(quantile(&mut core, 0.5));
    println!();
    println!("| goal | measured | met |");
    println!("| --- | --- | --- |");
    println!(
        "| GET /api/vms p99 <= 10 ms | {list_p99:.2} ms | {} |",
        if list_p99 <= 10.0 { "yes" } else { "no" }
    );
    println!(
        "| server overhead on exec (median HTTP - median core) <= 1 ms | {added:.2} ms | {} |",
        if added <= 1.0 { "yes" } else { "no" }
    );
    Ok(())
}
