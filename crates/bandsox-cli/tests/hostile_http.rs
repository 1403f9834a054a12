//! Hostile browsers and clients against a real server, with auth off and on (no VM needed:
//! every refusal happens before a handler runs): cross-site writes and WebSocket upgrades,
//! form body types, capped bodies with flat memory, slow and too many connections, tokens in
//! URLs, error shapes, cookie flags, security headers and the login limiter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{answer, auth_init, free_port, init, start_server_with, TestRoot};

const FAKE_VM: &str = "0f0f0f0f-0000-4000-8000-000000000000";

/// One raw HTTP/1.1 exchange; the status line's code and the whole answer.
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// A WebSocket handshake to `path`; the status of the answer (101 when it upgraded).
fn handshake(port: u16, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn post(url: &str) -> ureq::Request {
    ureq::post(url)
}

/// The cross-site checks that hold in both modes; `auth` adds the header of a credential.
fn cross_site_checks(port: u16, auth: Option<(&str, &str)>) {
    let url = format!("http://127.0.0.1:{port}");
    let with = |r: ureq::Request| match auth {
        Some((k, v)) => r.set(k, v),
        None => r,
    };
    let stop = format!("{url}/api/vms/{FAKE_VM}/stop");
    // Another origin cannot stop, pause or resume anything (text/plain or none).
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let (st, p) = answer(with(post(&stop)).set("Origin", origin).call());
        assert_eq!(
            (st, p["code"].as_str()),
            (403, Some("cross_origin")),
            "{origin}: {p}"
        );
    }
    let (st, p) = answer(
        with(post(&stop))
            .set("Origin", "http://evil.example")
            .set("Content-Type", "text/plain")
            .send_string("x"),
    );
    assert_eq!(st, 403, "{p}");
    // A browser that leaves Origin out still says where it comes from.
    let (st, _) = answer(with(post(&stop)).set("Sec-Fetch-Site", "cross-site").call());
    assert_eq!(st, 403);
    // Form body types are refused even without any browser mark.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let (st, p) = answer(with(post(&stop)).set("Content-Type", ct).send_string("a=b"));
        assert_eq!(
            (st, p["code"].as_str()),
            (415, Some("unsupported_media_type")),
            "{ct}: {p}"
        );
    }
    // The own origin, and clients without marks, reach the handler (which knows no such VM).
    let (st, p) = answer(with(post(&stop)).set("Origin", &url).call());
    assert_eq!((st, p["code"].as_str()), (404, Some("vm_not_found")), "{p}");
    let (st, _) = answer(with(post(&stop)).call());
    assert_eq!(st, 404);
    // A cross-site multipart form cannot build an image; a text/plain import is refused.
    let form = "--b\r\nContent-Disposition: form-data; name=\"dockerfile\"; filename=\"D\"\r\n\r\nFROM bandsox/busybox\nRUN touch /pwned\r\n--b--\r\n";
    let (st, _) = answer(
        with(post(&format!("{url}/api/vms/from-dockerfile")))
            .set("Origin", "http://evil.example")
            .set("Content-Type", "multipart/form-data; boundary=b")
            .send_string(form),
    );
    assert_eq!(st, 403);
    let (st, p) = answer(
        with(post(&format!("{url}/api/images/import?reference=x/y")))
            .set("Content-Type", "text/plain")
            .send_string("tar"),
    );
    assert_eq!(
        (st, p["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{p}"
    );
    // WebSocket upgrades from another origin are refused before they upgrade.
    let mut evil = vec![("Origin", "http://evil.example")];
    evil.extend(auth);
    for op in ["exec-stream", "terminal", "socket"] {
        let path = format!("/api/vms/{FAKE_VM}/{op}");
        assert_eq!(handshake(port, &path, &evil), 403, "{op}");
        let own_origin = format!("http://127.0.0.1:{port}");
        let mut own = vec![("Origin", own_origin.as_str())];
        own.extend(auth);
        assert_eq!(
            handshake(port, &path, &own),
            101,
            "{op} from the own origin"
        );
    }
}

#[test]
fn cross_site_requests_are_refused_with_and_without_auth() {
    let root = TestRoot::new("bsxhostile");
    let storage = root.path().join("s");
    assert!(init(&storage).status.success());
    let port = free_port();
    let proxy = ["--proxy-port", "0"];

    let server = start_server_with(&storage, port, &proxy);
    cross_site_checks(port, None);
    drop(server);

    let (password, key) = auth_init(&storage);
    let _server = start_server_with(&storage, port, &proxy);
    let url = format!("http://127.0.0.1:{port}");
    let bearer = format!("Bearer {key}");
    cross_site_checks(port, Some(("Authorization", &bearer)));
    let login = post(&format!("{url}/api/auth/login"))
        .send_json(serde_json::json!({"password": password}))
        .unwrap();
    let token = login.into_json::<serde_json::Value>().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie = format!("bandsox_session={token}");
    cross_site_checks(port, Some(("Cookie", &cookie)));
    // A login from another origin (login CSRF) is refused too.
    let (st, _) = answer(
        post(&format!("{url}/api/auth/login"))
            .set("Origin", "http://evil.example")
            .send_json(serde_json::json!({"password": password})),
    );
    assert_eq!(st, 403);
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn bodies_are_capped_and_slow_or_many_clients_dropped() {
    let root = TestRoot::new("bsxbodies");
    let storage = root.path().join("s");
    assert!(init(&storage).status.success());
    let port = free_port();
    let flags = [
        "--proxy-port",
        "0",
        "--header-timeout-ms",
        "1000",
        "--body-timeout-ms",
        "1000",
        "--max-connections",
        "8",
    ];
    let server = start_server_with(&storage, port, &flags);
    let pid = server.child.id();
    let before = rss_kib(pid);

    // 300 MB of declared JSON: 413 before any of it is read.
    let t = Instant::now();
    let (st, answer_text) = raw(
        port,
        &format!(
            "POST /api/vms/{FAKE_VM}/write-file HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 300000000\r\nConnection: close\r\n\r\n{{\"path\":\"/x\",\"content\":\""
        ),
    );
    assert_eq!(st, 413, "{answer_text}");
    assert!(
        answer_text.contains("application/problem+json"),
        "{answer_text}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // A chunked body of unknown length stops at the cap: four at once, memory stays flat.
    let senders: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let head = format!(
                    "POST /api/vms/{FAKE_VM}/write-file HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                     Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                );
                s.write_all(head.as_bytes()).unwrap();
                let chunk = vec![b'a'; 1 << 20];
                let mut sent = 0usize;
                while sent < 200 << 20 {
                    let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    if s.write_all(&frame).is_err() {
                        break; // the server stopped reading: it answered and closed
                    }
                    sent += chunk.len();
                }
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                (sent, String::from_utf8_lossy(&out).into_owned())
            })
        })
        .collect();
    for t in senders {
        let (sent, out) = t.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(sent < 200 << 20, "the server read all {sent} bytes");
    }
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    assert!(grown_mib < 400, "the server grew by {grown_mib} MiB");

    // A client that never finishes its headers is dropped within the timeout.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /api/vms HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 256];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let got = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(n == 0 || got.starts_with("HTTP/1.1 408"), "{got}");

    // A body that stalls gets 408.
    let (st, out) = raw(
        port,
        &format!(
            "POST /api/vms/{FAKE_VM}/exec HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\nConnection: close\r\n\r\n{{\"command\""
        ),
    );
    assert_eq!(st, 408, "{out}");

    // Beyond the connection cap, new connections are closed at once; the server still answers
    // once they go.
    // The slow client's connection must be gone first; each held one is known accepted (it
    // was answered and stays open), else one of them, not `extra`, would be the refused one.
    drop(slow);
    let held: Vec<TcpStream> = (0..8).map(|_| accepted(port)).collect();
    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .write_all(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .ok();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let (st, _) = answer(ureq::get(&format!("http://127.0.0.1:{port}/api/version")).call());
    assert_eq!(st, 200);
}

#[test]
fn errors_headers_tokens_and_cookies() {
    let root = TestRoot::new("bsxerrors");
    let storage = root.path().join("s");
    assert!(init(&storage).status.success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = start_server_with(&storage, port, &["--proxy-port", "0"]);

    // Errors that axum answers by itself are problem+json too.
    let problem = |r: Result<ureq::Response, ureq::Error>| match r {
        Err(ureq::Error::Status(st, resp)) => {
            assert_eq!(resp.content_type(), "application/problem+json");
            let p: serde_json::Value = resp.into_json().unwrap();
            assert!(p["code"].is_string() && p["detail"].is_string(), "{p}");
            (st, p)
        }
        other => panic!("{other:?}"),
    };
    let (st, _) = problem(ureq::get(&format!("{url}/api/vms?limit=abc")).call());
    assert_eq!(st, 400);
    let (st, _) = problem(ureq::get(&format!("{url}/api/vms/{FAKE_VM}/terminal")).call());
    assert!(st == 400 || st == 426, "{st}");
    let (st, _) = problem(
        post(&format!("{url}/api/vms/{FAKE_VM}/upload"))
            .set("Content-Type", "multipart/form-data")
            .send_string("garbage"),
    );
    assert_eq!(st, 400);
    let (st, _) = problem(
        post(&format!("{url}/api/vms/{FAKE_VM}/commands/c1/kill"))
            .set("Content-Type", "application/json")
            .send_string("{not json"),
    );
    assert_eq!(st, 400);

    // Answers are data: never sniffed, framed or run.
    let r = ureq::get(&format!("{url}/api/vms")).call().unwrap();
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let csp = r.header("content-security-policy").unwrap().to_owned();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
    // The version names the proxy listener, another port than the API's.
    let v: serde_json::Value = ureq::get(&format!("{url}/api/version"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let proxy = v["proxy_url"].as_str().unwrap();
    assert!(
        proxy.starts_with("http://127.0.0.1:") && proxy != url,
        "{v}"
    );
    // On the API listener, the proxy's paths point there.
    let r = ureq::builder()
        .redirects(0)
        .build()
        .get(&format!("{url}/api/vms/{FAKE_VM}/ports/8080/a?b=1"))
        .call();
    let (st, loc) = match r {
        Ok(r) => (r.status(), r.header("location").map(str::to_owned)),
        Err(ureq::Error::Status(st, r)) => (st, r.header("location").map(str::to_owned)),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(st, 307);
    assert_eq!(
        loc.as_deref(),
        Some(format!("{proxy}/api/vms/{FAKE_VM}/ports/8080/a?b=1").as_str())
    );
    drop(server);

    // With auth on: `?token=` only opens WebSockets; the cookie is Secure only behind https.
    let (password, key) = auth_init(&storage);
    let server = start_server_with(&storage, port, &["--proxy-port", "0"]);
    let (st, _) = raw(
        port,
        &format!("GET /api/vms?token={key} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n"),
    );
    assert_eq!(st, 401);
    let (st, p) = answer(ureq::get(&format!("{url}/api/vms")).call());
    assert_eq!(st, 401);
    assert!(
        p["detail"].as_str().unwrap().contains("none was sent"),
        "{p}"
    );
    assert!(
        p["hint"].as_str().unwrap().contains("BANDSOX_API_KEY"),
        "{p}"
    );
    let (st, p) = answer(
        ureq::get(&format!("{url}/api/vms"))
            .set("Authorization", "Bearer bsx_wrong")
            .call(),
    );
    assert_eq!(st, 401);
    assert!(p["detail"].as_str().unwrap().contains("not valid"), "{p}");
    let login = || {
        post(&format!("{url}/api/auth/login"))
            .set("X-Forwarded-Proto", "https")
            .send_json(serde_json::json!({"password": password}))
            .unwrap()
            .header("set-cookie")
            .unwrap()
            .to_owned()
    };
    assert!(!login().contains("Secure"), "a client header chose Secure");
    drop(server);
    let _server = start_server_with(
        &storage,
        port,
        &[
            "--proxy-port",
            "0",
            "--public-url",
            "https://box.example.com",
        ],
    );
    assert!(login().contains("; Secure"));
    // The public origin counts as our own.
    let (st, _) = answer(
        post(&format!("{url}/api/vms/{FAKE_VM}/stop"))
            .set("Authorization", &format!("Bearer {key}"))
            .set("Origin", "https://box.example.com")
            .call(),
    );
    assert_eq!(st, 404);
}

/// A keep-alive connection the server has accepted and answered (retried while earlier
/// connections are still being released).
fn accepted(port: u16) -> TcpStream {
    for _ in 0..50 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 64];
        if matches!(c.read(&mut buf), Ok(n) if n > 0) {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server accepted no connection");
}

/// Leases a server's failed creates left in the host-wide claims directory.
fn claims_naming(storage: &std::path::Path) -> Vec<String> {
    let needle = storage.display().to_string();
    std::fs::read_dir("/run/bandsox-net/leases")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|c| c.contains(&needle)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Creates that cannot succeed fail with their reason and leave nothing behind: a NUL in an
/// env value (422 before anything exists), a VMM that exits at boot (503 `boot_failed` with
/// the VMM's words, at once, its lease claim released); errors carry no host path and no
/// 5 KB id.
#[test]
fn failed_creates_say_why_and_leave_nothing() {
    let root = TestRoot::new("bsxfail");
    let storage = root.path().join("s");
    assert!(init(&storage).status.success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = start_server_with(&storage, port, &["--proxy-port", "0"]);
    let host_path = storage.display().to_string();
    let create = |body: serde_json::Value| {
        answer(
            ureq::post(&format!("{url}/api/vms"))
                .timeout(Duration::from_secs(120))
                .send_json(body),
        )
    };
    let nothing_left = || {
        let (st, list) = answer(ureq::get(&format!("{url}/api/vms")).call());
        assert_eq!(st, 200);
        assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
        assert_eq!(std::fs::read_dir(storage.join("vms")).unwrap().count(), 0);
        assert_eq!(claims_naming(&storage), Vec::<String>::new());
    };

    let (st, p) = create(serde_json::json!({
        "image": "bandsox/busybox", "env_vars": {"A": "x\u{0}y"}
    }));
    assert_eq!(st, 422, "{p}");
    assert_eq!(p["code"], "invalid_input");
    assert!(p["detail"].as_str().unwrap().contains("NUL"), "{p}");
    nothing_left();

    // More memory than any test host has: QEMU refuses it and exits at once.
    let t = Instant::now();
    let (st, p) = create(serde_json::json!({
        "image": "bandsox/busybox", "mem_mib": 65536, "enable_networking": true
    }));
    let took = t.elapsed();
    assert_eq!(st, 503, "{p}");
    assert_eq!(p["code"], "boot_failed");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("memory"),
        "the VMM's reason is lost: {detail}"
    );
    assert!(!detail.contains(&host_path), "{detail}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    nothing_left();

    // A 5 KB id is not echoed back whole.
    let long = "a".repeat(5000);
    let (st, p) = answer(ureq::get(&format!("{url}/api/vms/{long}")).call());
    assert!(st == 404 || st == 422, "{st}");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.len() < 300, "{} bytes: {detail}", detail.len());
    let (st, p) = answer(
        ureq::post(&format!("{url}/api/vms/{long}/exec"))
            .send_json(serde_json::json!({"command": "true"})),
    );
    assert!(st == 404 || st == 422, "{st}");
    assert!(p.to_string().len() < 600, "{p}");
}
