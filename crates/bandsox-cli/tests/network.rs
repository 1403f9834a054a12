//! VM networking against a real server and real VMs: HTTP into guests (`/http` and the
//! reverse proxy on its own listener, sandboxed and without guest cookies), bad input, isolation (no guest reaches the host, another guest or
//! link-local), NATed egress to a stand-in "internet" namespace, clones of one networked
//! snapshot serving at once, and nothing of ours left after delete and `bandsox cleanup`
//! (while an interface the test made itself survives). Needs root, `ip`, `nft`, python3.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{answer, free_port, init, proxy_url, start_server, TestRoot, BIN};
use serde_json::{json, Value};

/// Test-owned names: never bandsox's prefixes.
const INET_NS: &str = "nettest-inet";
const INET_HOST_IF: &str = "nti0";
/// A TAP the test makes itself (BandSox's cleanup deleted every `tap*`; ours must not).
const DUMMY_IF: &str = "tapnettest0";

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

/// Removes the test's own namespace and interfaces (also on panic).
struct Lab;

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip netns pids {INET_NS} 2>/dev/null | xargs -r kill -9; ip netns del {INET_NS} 2>/dev/null; ip link del {INET_HOST_IF} 2>/dev/null; ip link del {DUMMY_IF} 2>/dev/null"
        ));
    }
}

fn post(url: &str, body: Value) -> (u16, Value) {
    answer(
        ureq::post(url)
            .timeout(Duration::from_secs(120))
            .send_json(body),
    )
}

/// Writes `script` to `path` in the VM and serves one connection on `port` with it
/// (`nc -l -e`: the script's stdin and stdout are the connection).
fn serve_script(vm: &str, path: &str, port: u16, script: &str) {
    let (st, _) = post(
        &format!("{vm}/write-file"),
        json!({"path": path, "content": script}),
    );
    assert_eq!(st, 200);
    let (code, out) = exec(
        vm,
        &format!("chmod +x {path} && (nc -l -p {port} -e {path} </dev/null >/dev/null 2>&1 &)"),
    );
    assert_eq!(code, 0, "{out}");
    std::thread::sleep(Duration::from_millis(300));
}

fn exec(vm: &str, command: &str) -> (i64, String) {
    let (st, r) = post(
        &format!("{vm}/exec"),
        json!({"command": command, "timeout": 60}),
    );
    assert_eq!(st, 200, "{r}");
    (
        r["exit_code"].as_i64().unwrap(),
        format!(
            "{}{}",
            r["stdout"].as_str().unwrap(),
            r["stderr"].as_str().unwrap()
        ),
    )
}

fn create(base: &str, networking: bool) -> String {
    let (st, r) = post(
        &format!("{base}/vms"),
        json!({"image": "bandsox/busybox", "enable_networking": networking}),
    );
    assert_eq!(st, 200, "{r}");
    r["id"].as_str().unwrap().to_owned()
}

fn info(base: &str, id: &str) -> Value {
    ureq::get(&format!("{base}/vms/{id}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap()
}

fn serve_page(vm: &str, text: &str) {
    let (code, out) = exec(
        vm,
        &format!("mkdir -p /www && echo {text} > /www/index.html && httpd -p 8080 -h /www"),
    );
    assert_eq!(code, 0, "{out}");
}

fn proxy_get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(30)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

/// An HTTP/1.0 GET from inside the guest with busybox `nc` (3 s timeout); the raw answer.
fn guest_get(vm: &str, host: &str, port: u16, path: &str) -> String {
    let (_, out) = exec(
        vm,
        &format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"),
    );
    out
}

/// A guest connection attempt that must fail.
fn unreachable_from(vm: &str, host: &str, port: u16) {
    let out = guest_get(vm, host, port, "/");
    assert!(!out.contains("HTTP/"), "guest reached {host}:{port}: {out}");
}

/// `bsxv*` interfaces on the host now. Another server on this host (another storage root) may
/// own some of them; the test compares against what was there before it started.
fn host_veths() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bsxv"))
        .collect()
}

/// This test's namespaces, the `bsxv*` interfaces that were not on the host before it
/// (`foreign`), and the host table.
fn ours_on_host(ids: &[&str], foreign: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    for id in ids {
        let ns = format!("bsx-{id}");
        if std::path::Path::new("/run/netns").join(&ns).exists() {
            left.push(ns);
        }
    }
    left.extend(host_veths().into_iter().filter(|n| !foreign.contains(n)));
    if sh("nft list table inet bandsox").status.success() {
        left.push("nft table inet bandsox".into());
    }
    left
}

#[test]
fn guest_http_isolation_egress_clones_and_cleanup() {
    let _lab = Lab;
    drop(Lab); // leftovers of an earlier failed run
    let foreign = host_veths();
    let root = TestRoot::new("bsxnet");
    assert!(init(root.path()).status.success());
    let port = free_port();
    let server = start_server(root.path(), port);
    let base = format!("http://127.0.0.1:{port}/api");
    // Guest ports are served by the proxy listener only.
    let proxy = proxy_url(&format!("http://127.0.0.1:{port}"));
    let proxy_port: u16 = proxy.rsplit(':').next().unwrap().parse().unwrap();
    let pbase = format!("{proxy}/api");

    // The stand-in internet: a namespace behind its own veth, serving HTTP on port 80.
    let setup = sh(&format!(
        "set -e; ip netns add {INET_NS}; ip link add {INET_HOST_IF} type veth peer name eth0 netns {INET_NS}; \
         ip addr add 198.51.100.1/24 dev {INET_HOST_IF}; ip link set {INET_HOST_IF} up; \
         ip -n {INET_NS} addr add 198.51.100.2/24 dev eth0; ip -n {INET_NS} link set eth0 up; ip -n {INET_NS} link set lo up; \
         mkdir -p /tmp/nettest-www && echo internet-ok > /tmp/nettest-www/index.html; \
         ip netns exec {INET_NS} python3 -m http.server 80 --bind 198.51.100.2 --directory /tmp/nettest-www >/dev/null 2>&1 &"
    ));
    assert!(setup.status.success(), "{setup:?}");
    // A host service on all addresses, which no guest may reach.
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let reached = reached.clone();
        std::thread::spawn(move || {
            for s in host_listener.incoming().flatten() {
                reached.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = std::io::Write::write_all(&mut &s, b"HTTP/1.0 200 OK\r\n\r\nhost\n");
            }
        });
    }

    let a = create(&base, true);
    let b = create(&base, true);
    let off = create(&base, false);
    let (vm_a, vm_b, vm_off) = (
        format!("{base}/vms/{a}"),
        format!("{base}/vms/{b}"),
        format!("{base}/vms/{off}"),
    );
    let (pvm_a, pvm_b) = (format!("{pbase}/vms/{a}"), format!("{pbase}/vms/{b}"));
    let ia = info(&base, &a)["network_config"].clone();
    let ib = info(&base, &b)["network_config"].clone();
    assert!(info(&base, &off)["network_config"].is_null());
    let (ip_a, ip_b) = (
        ia["guest_ip"].as_str().unwrap().to_owned(),
        ib["guest_ip"].as_str().unwrap().to_owned(),
    );
    assert_ne!(ip_a, ip_b);
    assert!(ip_a.starts_with("10.231."), "{ia}");
    // Every guest has the same internal address.
    for vm in [&vm_a, &vm_b] {
        let (_, out) = exec(vm, "ip -4 addr show eth0 || ifconfig eth0");
        assert!(out.contains("172.31.0.2"), "{out}");
        let (_, resolv) = exec(vm, "cat /etc/resolv.conf");
        assert!(resolv.contains("nameserver"), "{resolv}");
    }
    serve_page(&vm_a, "hello-a");
    serve_page(&vm_b, "hello-b");

    // /http, BandSox's shape.
    let (st, r) = post(
        &format!("{vm_a}/http"),
        json!({"port": 8080, "path": "/index.html"}),
    );
    assert_eq!((st, r["status_code"].as_u64()), (200, Some(200)), "{r}");
    assert_eq!(r["body"], "hello-a\n");
    // Binary-safe answer.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let (st, _) = post(
        &format!("{vm_a}/write-file"),
        json!({"path": "/www/bin", "content": b64, "encoding": "base64"}),
    );
    assert_eq!(st, 200);
    let (_, r) = post(
        &format!("{vm_a}/http"),
        json!({"port": 8080, "path": "/bin"}),
    );
    let got = base64::engine::general_purpose::STANDARD
        .decode(r["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, bytes);

    // The reverse proxy, on its own listener; the API listener points there.
    let (st, body) = proxy_get(&format!("{pvm_a}/ports/8080/index.html"));
    assert_eq!((st, body.as_str()), (200, "hello-a\n"));
    let (st, body) = proxy_get(&format!("{pvm_b}/ports/8080/"));
    assert_eq!((st, body.as_str()), (200, "hello-b\n"));
    let moved = ureq::builder()
        .redirects(0)
        .build()
        .get(&format!("{vm_a}/ports/8080/index.html"))
        .call()
        .unwrap();
    assert_eq!(moved.status(), 307);
    assert_eq!(
        moved.header("location"),
        Some(format!("{pvm_a}/ports/8080/index.html").as_str())
    );
    // Guest answers run sandboxed and cannot set cookies on the host name the API shares.
    let page = "#!/bin/sh\nwhile read -r l; do case \"$l\" in \"\"|\"$(printf '\\r')\") break;; esac; done\nprintf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/html\\r\\nSet-Cookie: bandsox_session=planted; Path=/\\r\\nClear-Site-Data: \"cookies\"\\r\\nX-Guest: yes\\r\\n\\r\\n<script>fetch(\"/api/vms\")</script>'\n";
    serve_script(&vm_a, "/cookie.sh", 9102, page);
    let r = ureq::get(&format!("{pvm_a}/ports/9102/")).call().unwrap();
    assert_eq!(r.header("x-guest"), Some("yes"));
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(r.header("clear-site-data"), None);
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.starts_with("sandbox") && !csp.contains("allow-same-origin"),
        "{csp}"
    );
    let r = ureq::get(&format!("{pvm_a}/ports/8080/bin"))
        .call()
        .unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut got).unwrap();
    assert_eq!(got, bytes);

    // An upgrade passes through the proxy: a guest server that answers 101 and then echoes.
    let script = "#!/bin/sh\nwhile read -r l; do case \"$l\" in \"\"|\"$(printf '\\r')\") break;; esac; done\nprintf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n'\nexec cat\n";
    serve_script(&vm_a, "/up.sh", 9100, script);
    {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET /api/vms/{a}/ports/9100/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        .unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 101"), "{line}");
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        s.write_all(b"ping through the proxy\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "ping through the proxy\n");
    }

    // A real WebSocket through the proxy. The guest server (busybox sh under `nc -e`) computes
    // Sec-WebSocket-Accept from the client's key, which tungstenite checks; it sends one text
    // frame, records the client's masked frame and closes. The test unmasks what it recorded.
    let script = r#"#!/bin/sh
key=""
while read -r l; do
  l=$(printf '%s' "$l" | tr -d '\r')
  [ -z "$l" ] && break
  case "$l" in [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=$(printf '%s' "${l#*:}" | tr -d ' ') ;; esac
done
hex=$(printf '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' "$key" | sha1sum | cut -d' ' -f1)
acc=$(printf "$(printf '%s' "$hex" | sed 's/../\\x&/g')" | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$acc"
printf '\201\005hello'
head -c 10 > /tmp/ws.bin
printf '\210\000'
"#;
    serve_script(&vm_a, "/ws.sh", 9101, script);
    {
        use tungstenite::Message;
        let url = format!("ws://127.0.0.1:{proxy_port}/api/vms/{a}/ports/9101/ws");
        let (mut ws, resp) = tungstenite::connect(url.as_str()).expect("WebSocket handshake");
        assert_eq!(resp.status().as_u16(), 101);
        match ws.read().unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), "hello"),
            other => panic!("expected the guest's text frame, got {other:?}"),
        }
        ws.send(Message::Text("ping".into())).unwrap();
        loop {
            match ws.read() {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    let (code, out) = exec(&vm_a, "od -An -v -tx1 /tmp/ws.bin");
    assert_eq!(code, 0, "{out}");
    let raw: Vec<u8> = out
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    // FIN + text, masked length 4, the mask, then the masked payload.
    assert_eq!(raw.len(), 10, "{out}");
    assert_eq!((raw[0], raw[1]), (0x81, 0x80 | 4));
    let unmasked: Vec<u8> = raw[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ raw[2 + i % 4])
        .collect();
    assert_eq!(unmasked, b"ping");

    // A large answer: /http refuses to buffer it, the proxy streams it whole.
    let (code, out) = exec(&vm_a, "dd if=/dev/zero of=/www/huge bs=1M count=70 2>&1");
    assert_eq!(code, 0, "{out}");
    let (st, r) = post(
        &format!("{vm_a}/http"),
        json!({"port": 8080, "path": "/huge"}),
    );
    assert_eq!(
        (st, r["code"].as_str()),
        (502, Some("response_too_large")),
        "{r}"
    );
    let resp = ureq::get(&format!("{pvm_a}/ports/8080/huge"))
        .call()
        .unwrap();
    let n = std::io::copy(&mut resp.into_reader(), &mut std::io::sink()).unwrap();
    assert_eq!(n, 70 << 20);

    // Bad input.
    for p in [0u32, 65536, 70000] {
        let (st, r) = post(&format!("{vm_a}/http"), json!({"port": p}));
        assert_eq!(
            (st, r["code"].as_str()),
            (422, Some("invalid_input")),
            "{r}"
        );
    }
    for path in [
        "ports/0/x",
        "ports/65536/x",
        "ports/8080/%2e%2e/etc/passwd",
        "ports/8080/a/%2E%2E%2Fb",
    ] {
        let (st, _) = proxy_get(&format!("{pvm_a}/{path}"));
        assert_eq!(st, 422, "{path}");
    }
    let (st, r) = post(&format!("{vm_a}/http"), json!({"port": 9999}));
    assert_eq!(
        (st, r["code"].as_str()),
        (502, Some("guest_unreachable")),
        "{r}"
    );
    // A guest that accepts and never answers: 504.
    exec(
        &vm_a,
        "(sleep 3600 | nc -l -p 9000) </dev/null >/dev/null 2>&1 &",
    );
    std::thread::sleep(Duration::from_millis(300));
    let (st, r) = post(&format!("{vm_a}/http"), json!({"port": 9000, "timeout": 1}));
    assert_eq!(
        (st, r["code"].as_str()),
        (504, Some("guest_timeout")),
        "{r}"
    );
    let (st, r) = post(&format!("{vm_off}/http"), json!({"port": 8080}));
    assert_eq!(st, 409, "{r}");

    // Isolation: no other guest, no host address or service, no link-local.
    // (The probe works: B reaches its own page.)
    assert!(guest_get(&vm_b, "127.0.0.1", 8080, "/index.html").contains("hello-b"));
    let (host_a, host_b) = (
        ia["host_ip"].as_str().unwrap().to_owned(),
        ib["host_ip"].as_str().unwrap().to_owned(),
    );
    unreachable_from(&vm_a, &ip_b, 8080);
    unreachable_from(&vm_a, &host_a, port);
    unreachable_from(&vm_a, &host_a, host_port);
    unreachable_from(&vm_a, &host_b, host_port);
    unreachable_from(&vm_a, "198.51.100.1", host_port);
    unreachable_from(&vm_a, "172.31.0.1", host_port);
    unreachable_from(&vm_a, "169.254.169.254", 80);
    let host_ips = sh("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1");
    for ip in String::from_utf8_lossy(&host_ips.stdout).split_whitespace() {
        if !ip.starts_with("10.231.") {
            unreachable_from(&vm_a, ip, host_port);
        }
    }
    assert!(
        !reached.load(std::sync::atomic::Ordering::SeqCst),
        "a guest reached the host"
    );

    // Egress through NAT; none without networking.
    let out = guest_get(&vm_a, "198.51.100.2", 80, "/index.html");
    assert!(out.contains("internet-ok"), "{out}");
    unreachable_from(&vm_off, "198.51.100.2", 80);

    // Two clones of one networked snapshot serve at once, each at its own address.
    let (st, snap) = post(&format!("{vm_a}/snapshot"), json!({"name": "net"}));
    assert_eq!(st, 200, "{snap}");
    let snap_id = snap["snapshot_id"]
        .as_str()
        .or(snap["id"].as_str())
        .unwrap()
        .to_owned();
    let clones: Vec<String> = (0..2)
        .map(|_| {
            let (st, r) = post(&format!("{base}/snapshots/{snap_id}/restore"), json!({}));
            assert_eq!(st, 200, "{r}");
            r["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let ips: Vec<String> = clones
        .iter()
        .map(|c| {
            info(&base, c)["network_config"]["guest_ip"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_ne!(ips[0], ips[1]);
    assert!(!ips.contains(&ip_a));
    let handles: Vec<_> = clones
        .iter()
        .map(|c| {
            let url = format!("{pbase}/vms/{c}/ports/8080/index.html");
            std::thread::spawn(move || proxy_get(&url))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), (200, "hello-a\n".to_owned()));
    }
    // The source still serves too.
    assert_eq!(proxy_get(&format!("{pvm_a}/ports/8080/index.html")).0, 200);

    // A clone restored with networking off keeps its NIC but has no way in or out.
    let (st, r) = post(
        &format!("{base}/snapshots/{snap_id}/restore"),
        json!({"enable_networking": false}),
    );
    assert_eq!(st, 200, "{r}");
    let dark = r["id"].as_str().unwrap().to_owned();
    let nc = info(&base, &dark)["network_config"].clone();
    assert_eq!(
        (nc["enabled"].as_bool(), nc["guest_ip"].is_null()),
        (Some(false), true),
        "{nc}"
    );
    let (st, _) = post(&format!("{base}/vms/{dark}/http"), json!({"port": 8080}));
    assert_eq!(st, 409);
    unreachable_from(&format!("{base}/vms/{dark}"), "198.51.100.2", 80);

    // Stop tears the namespace down; start brings it back with the same address.
    let (st, _) = post(&format!("{vm_b}/stop"), json!({}));
    assert_eq!(st, 200);
    assert!(!std::path::Path::new(&format!("/run/netns/bsx-{b}")).exists());
    let (st, _) = post(&format!("{vm_b}/start"), json!({}));
    assert_eq!(st, 200);
    assert_eq!(
        info(&base, &b)["network_config"]["guest_ip"],
        ib["guest_ip"]
    );
    serve_page(&vm_b, "hello-b-again");
    assert_eq!(
        proxy_get(&format!("{pvm_b}/ports/8080/index.html")),
        (200, "hello-b-again\n".to_owned())
    );

    // Delete everything: nothing of ours remains.
    let all: Vec<String> = [a.clone(), b.clone(), off.clone(), dark.clone()]
        .into_iter()
        .chain(clones.iter().cloned())
        .collect();
    for id in &all {
        let r = ureq::delete(&format!("{base}/vms/{id}")).call();
        assert!(r.is_ok(), "{r:?}");
    }
    let ids: Vec<&str> = all.iter().map(String::as_str).collect();
    let left: Vec<String> = ours_on_host(&ids, &foreign)
        .into_iter()
        .filter(|n| n != "nft table inet bandsox")
        .collect();
    assert!(left.is_empty(), "left after delete: {left:?}");

    // `bandsox cleanup` removes only ours: a fake leftover namespace and the host table go,
    // the test's dummy interface and namespace stay.
    drop(server);
    assert!(sh(&format!("ip tuntap add dev {DUMMY_IF} mode tap"))
        .status
        .success());
    assert!(sh("ip netns add bsx-0000dead").status.success());
    let out = Command::new(BIN)
        .args(["cleanup", "--storage"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bsx-0000dead"), "{text}");
    assert!(
        ours_on_host(&["0000dead"], &foreign).is_empty(),
        "{:?}",
        ours_on_host(&["0000dead"], &foreign)
    );
    assert!(std::path::Path::new("/sys/class/net")
        .join(DUMMY_IF)
        .exists());
    assert!(std::path::Path::new("/run/netns").join(INET_NS).exists());
}
