//! `bench/net`: HTTP into a guest through the API's reverse proxy
//! (`/api/vms/{id}/ports/8080/...`) next to a direct connection to the VM's host-side address
//! (the floor: the namespace's DNAT, the TAP and the guest's busybox httpd). Small-request
//! latency (goal proxy <= 1.3x direct) and a 100 MiB download (goal proxy >= 80% of direct).
//! busybox httpd closes every connection, so each request opens a new one on both paths.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bandsox_core::{CreateVm, Manager, ManagerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::median;

/// 100 MiB downloads per path.
const DOWNLOADS: usize = 7;

pub async fn run(runs: usize) -> Result<()> {
    crate::util::in_scratch("net", |work| async move {
        let storage = crate::util::prepare_storage(&work)?;
        let mgr = Manager::open(ManagerConfig::new(storage)).await?;
        let mut req = CreateVm::new("bandsox/busybox");
        // Cold boots: templates are measured by bench/create.
        req.template = Some(false);
        req.mem_mib = 256;
        let vm = mgr.create_vm(req).await?;
        let result = measure(&mgr, &vm.id, runs).await;
        let _ = mgr.delete_vm(&vm.id).await;
        result
    })
    .await
}

/// Sends `request`, reads the answer to EOF; returns the time and the body length.
async fn fetch(addr: SocketAddr, request: &str) -> Result<(Duration, usize)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut body = 0usize;
    let mut in_body = false;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if in_body {
            body += n;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                bail!("answer {:?}", String::from_utf8_lossy(&head[..i]));
            }
            body = head.len() - i - 4;
            in_body = true;
            head.clear();
        }
    }
    Ok((t.elapsed(), body))
}

async fn measure(mgr: &std::sync::Arc<Manager>, id: &str, runs: usize) -> Result<()> {
    let out = mgr
        .exec(
            id,
            bandsox_protocol::ExecRequest {
                command: Some(
                    "mkdir -p /www && echo ok > /www/small && \
                     dd if=/dev/zero of=/www/big bs=1M count=100 2>/dev/null && \
                     httpd -p 8080 -h /www"
                        .into(),
                ),
                timeout_ms: Some(300_000),
                ..Default::default()
            },
            None,
            1 << 16,
        )
        .await?;
    if out.status.exit_code != Some(0) {
        bail!(
            "guest setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let direct: SocketAddr = mgr.guest_endpoint(id, 8080).await?.into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = listener.local_addr()?;
    let app = bandsox_server::proxy_router(bandsox_server::AppState::new(mgr.clone()));
    tokio::spawn(bandsox_server::listen::serve_until(
        listener,
        app,
        bandsox_server::ConnLimits::default(),
        std::future::pending(),
    ));
    let direct_req = |p: &str| format!("GET /{p} HTTP/1.0\r\nHost: guest\r\n\r\n");
    let proxy_req = |p: &str| {
        format!("GET /api/vms/{id}/ports/8080/{p} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    };

    // Warm-up, then alternate direct and proxy.
    fetch(direct, &direct_req("small"))
        .await
        .context("direct")?;
    fetch(server, &proxy_req("small")).await.context("proxy")?;
    let (mut d_lat, mut p_lat) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        d_lat.push(fetch(direct, &direct_req("small")).await?.0);
        p_lat.push(fetch(server, &proxy_req("small")).await?.0);
    }
    let (mut d_tp, mut p_tp) = (Vec::new(), Vec::new());
    for _ in 0..DOWNLOADS {
        let (t, n) = fetch(direct, &direct_req("big")).await?;
        if n != 100 << 20 {
            bail!("direct download got {n} bytes");
        }
        d_tp.push(t);
        let (t, n) = fetch(server, &proxy_req("big")).await?;
        if n != 100 << 20 {
            bail!("proxied download got {n} bytes");
        }
        p_tp.push(t);
    }
    let (mgr_backend, accel) = mgr.backend();
    let (dl, pl) = (median(&mut d_lat), median(&mut p_lat));
    let (dt, pt) = (median(&mut d_tp), median(&mut p_tp));
    let mibs = |d: Duration| 100.0 / d.as_secs_f64();
    println!("backend {mgr_backend}, accel {accel}; {runs} small GETs and {DOWNLOADS} downloads of 100 MiB per path, alternating\n");
    println!("| measurement | direct | proxy | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| GET of 3 bytes, new connection each (median ms) | {:.2} | {:.2} | {:.2}x (goal <= 1.3x) |",
        dl.as_secs_f64() * 1000.0,
        pl.as_secs_f64() * 1000.0,
        pl.as_secs_f64() / dl.as_secs_f64()
    );
    println!(
        "| 100 MiB download (median MiB/s) | {:.1} | {:.1} | {:.0}% (goal >= 80%) |",
        mibs(dt),
        mibs(pt),
        100.0 * mibs(pt) / mibs(dt)
    );
    Ok(())
}
