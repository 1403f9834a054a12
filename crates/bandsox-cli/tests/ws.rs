//! WebSockets against a real server and VM: the terminal (BandSox's base64 text protocol and our
//! binary one, resize), the exec stream (output before exit), and WebSocket auth by subprotocol.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{free_port, init, start_server, TestRoot, BIN};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn connect(url: &str, protocols: &[&str]) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    let (ws, _) = tungstenite::connect(req)?;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    Ok(ws)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Reads terminal output until it contains `needle`.
fn read_until(ws: &mut Ws, needle: &str, decode: fn(Message) -> Vec<u8>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let msg = ws.read().unwrap();
        if msg.is_close() {
            break;
        }
        seen.extend(decode(msg));
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
    panic!("`{needle}` not seen in: {}", String::from_utf8_lossy(&seen));
}

fn from_b64(m: Message) -> Vec<u8> {
    match m {
        Message::Text(t) => base64::engine::general_purpose::STANDARD
            .decode(t.as_str())
            .unwrap(),
        _ => Vec::new(),
    }
}

fn from_binary(m: Message) -> Vec<u8> {
    match m {
        Message::Binary(b) => b.to_vec(),
        _ => Vec::new(),
    }
}

#[test]
fn terminal_exec_stream_and_ws_auth() {
    let root = TestRoot::new("bsxws");
    assert!(init(root.path()).status.success());
    let port = free_port();
    let server = start_server(root.path(), port);
    let http = format!("http://127.0.0.1:{port}/api");
    let ws_base = format!("ws://127.0.0.1:{port}/api");
    let r: serde_json::Value = ureq::post(&format!("{http}/vms"))
        .send_json(serde_json::json!({"image": "bandsox/busybox"}))
        .unwrap()
        .into_json()
        .unwrap();
    let id = r["id"].as_str().unwrap().to_owned();

    // BandSox's TypeScript SDK: subprotocol bandsox.terminal, base64 text frames both ways.
    let mut ws = connect(
        &format!("{ws_base}/vms/{id}/terminal?cols=80&rows=24"),
        &["bandsox.terminal"],
    )
    .unwrap();
    let input = |s: &str| {
        Message::Text(
            serde_json::json!({"type": "input", "data": b64(s)})
                .to_string()
                .into(),
        )
    };
    ws.send(input("echo hi-$((1+2))\n")).unwrap();
    read_until(&mut ws, "hi-3", from_b64);
    ws.send(Message::Text(
        serde_json::json!({"type": "resize", "cols": 100, "rows": 30})
            .to_string()
            .into(),
    ))
    .unwrap();
    ws.send(input("stty size\n")).unwrap();
    read_until(&mut ws, "30 100", from_b64);
    ws.close(None).unwrap();

    // Our binary variant: exact bytes.
    let mut ws = connect(
        &format!("{ws_base}/vms/{id}/terminal"),
        &["bandsox.terminal.binary"],
    )
    .unwrap();
    ws.send(Message::Binary(b"printf 'bin\\001\\n'\n".to_vec().into()))
        .unwrap();
    read_until(&mut ws, "bin\u{1}", from_binary);
    ws.close(None).unwrap();

    // Exec stream: output arrives while the command still runs, then the exit code.
    let mut ws = connect(&format!("{ws_base}/vms/{id}/exec-stream"), &[]).unwrap();
    let t = Instant::now();
    ws.send(Message::Text(
        r#"{"command": "echo a; sleep 1; echo b >&2; exit 4"}"#.into(),
    ))
    .unwrap();
    let mut events = Vec::new();
    loop {
        let Message::Text(t2) = ws.read().unwrap() else {
            break;
        };
        let v: serde_json::Value = serde_json::from_str(t2.as_str()).unwrap();
        events.push((t.elapsed(), v.clone()));
        if v["type"] == "exit" || v["type"] == "error" {
            break;
        }
    }
    let kinds: Vec<String> = events
        .iter()
        .map(|(_, v)| {
            format!(
                "{}:{}",
                v["type"].as_str().unwrap(),
                v["data"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(kinds, ["stdout:a\n", "stderr:b\n", "exit:"], "{events:?}");
    assert_eq!(events[2].1["exit_code"], 4);
    assert!(
        events[2].0 - events[0].0 >= Duration::from_millis(800),
        "stdout was not streamed: {events:?}"
    );
    // A VM that does not exist.
    let mut ws = connect(&format!("{ws_base}/vms/nope/exec-stream"), &[]).unwrap();
    let Message::Text(t) = ws.read().unwrap() else {
        panic!()
    };
    assert!(t.as_str().contains("VM not found"));

    ureq::delete(&format!("{http}/vms/{id}")).call().unwrap();
    drop(server);

    // With auth on, a WebSocket authenticates with the bandsox.auth.<base64url> subprotocol.
    let out = std::process::Command::new(BIN)
        .args(["auth", "init", "--storage"])
        .arg(root.path())
        .output()
        .unwrap();
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("API key")
                .map(|k| k.split_whitespace().next().unwrap().to_owned())
        })
        .unwrap();
    let _server = start_server(root.path(), port);
    let r = ureq::post(&format!("{http}/vms"))
        .set("Authorization", &format!("Bearer {key}"))
        .send_json(serde_json::json!({"image": "bandsox/busybox"}))
        .unwrap();
    let id = r.into_json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = connect(
        &format!("{ws_base}/vms/{id}/terminal"),
        &["bandsox.terminal"],
    );
    assert!(
        matches!(denied, Err(tungstenite::Error::Http(ref r)) if r.status() == 401),
        "{denied:?}"
    );
    let auth = format!(
        "bandsox.auth.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key)
    );
    let mut ws = connect(
        &format!("{ws_base}/vms/{id}/terminal"),
        &["bandsox.terminal", &auth],
    )
    .unwrap();
    ws.send(input("echo authed\n")).unwrap();
    read_until(&mut ws, "authed", from_b64);
    ws.close(None).unwrap();

    // A client that offers only the auth subprotocol (tungstenite fails a handshake whose
    // answer selects none of what it offered): the exec stream works.
    let mut ws = connect(&format!("{ws_base}/vms/{id}/exec-stream"), &[&auth]).unwrap();
    ws.send(Message::Text(r#"{"command":"echo streamed"}"#.into()))
        .unwrap();
    let Message::Text(t) = ws.read().unwrap() else {
        panic!()
    };
    assert!(t.as_str().contains("streamed"), "{t}");
    // `bandsox exec` with a key, exit code included.
    let out = std::process::Command::new(BIN)
        .args(["exec", &id, "--", "echo via-cli; exit 3"])
        .env("BANDSOX_URL", format!("http://127.0.0.1:{port}"))
        .env("BANDSOX_API_KEY", &key)
        .output()
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(3), "via-cli\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Sockets opened with a key stop working once it is revoked.
    let created: serde_json::Value = ureq::post(&format!("{http}/auth/keys"))
        .set("Authorization", &format!("Bearer {key}"))
        .send_json(serde_json::json!({"name": "short-lived"}))
        .unwrap()
        .into_json()
        .unwrap();
    let key2 = created["key"].as_str().unwrap().to_owned();
    let auth2 = format!(
        "bandsox.auth.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key2)
    );
    let mut sock = connect(
        &format!("{ws_base}/vms/{id}/socket"),
        &["bandsox.socket", &auth2],
    )
    .unwrap();
    let op = |n: u32| {
        Message::Text(
            serde_json::json!({"id": n, "method": "POST", "path": "/exec", "body": {"command": "echo op"}})
                .to_string()
                .into(),
        )
    };
    sock.send(op(1)).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(sock.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(first["status"], 200, "{first}");
    let mut term = connect(
        &format!("{ws_base}/vms/{id}/terminal"),
        &["bandsox.terminal", &auth2],
    )
    .unwrap();
    ureq::delete(&format!(
        "{http}/auth/keys/{}",
        created["key_id"].as_str().unwrap()
    ))
    .set("Authorization", &format!("Bearer {key}"))
    .call()
    .unwrap();
    let closed_with = |ws: &mut Ws| loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
            Ok(_) => {}
            Err(_) => return None,
        }
    };
    let _ = sock.send(op(2));
    assert_eq!(
        closed_with(&mut sock),
        Some(4001),
        "the socket outlived its key"
    );
    assert_eq!(
        closed_with(&mut term),
        Some(4001),
        "the terminal outlived its key"
    );
    let refused = connect(
        &format!("{ws_base}/vms/{id}/socket"),
        &["bandsox.socket", &auth2],
    );
    assert!(
        matches!(refused, Err(tungstenite::Error::Http(ref r)) if r.status() == 401),
        "{refused:?}"
    );
    ureq::delete(&format!("{http}/vms/{id}"))
        .set("Authorization", &format!("Bearer {key}"))
        .call()
        .unwrap();
}

/// Reads socket frames until every id in `want` has its final answer; returns them by id.
fn collect(ws: &mut Ws, want: usize) -> Vec<serde_json::Value> {
    let mut done = Vec::new();
    loop {
        let Message::Text(t) = ws.read().unwrap() else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        let last = v.get("status").is_some() || v["type"] == "exit" || v["type"] == "error";
        done.push(v);
        if !last {
            // Stream output: kept, but not an answer.
            done.last_mut().unwrap()["partial"] = true.into();
        }
        let answers = done.iter().filter(|v| v.get("partial").is_none()).count();
        if answers == want {
            break;
        }
    }
    done
}

#[test]
fn persistent_socket_runs_operations_concurrently() {
    let root = TestRoot::new("bsxsock");
    assert!(init(root.path()).status.success());
    let port = free_port();
    let _server = start_server(root.path(), port);
    let http = format!("http://127.0.0.1:{port}/api");
    let r: serde_json::Value = ureq::post(&format!("{http}/vms"))
        .send_json(serde_json::json!({"image": "bandsox/busybox"}))
        .unwrap()
        .into_json()
        .unwrap();
    let id = r["id"].as_str().unwrap().to_owned();
    let mut ws = connect(
        &format!("ws://127.0.0.1:{port}/api/vms/{id}/socket"),
        &["bandsox.socket"],
    )
    .unwrap();
    let send =
        |ws: &mut Ws, v: serde_json::Value| ws.send(Message::Text(v.to_string().into())).unwrap();

    // A file to read back (binary, every byte value) before the concurrent batch.
    let bytes: Vec<u8> = (0..=255u8).collect();
    send(
        &mut ws,
        serde_json::json!({"id": "w", "method": "POST", "path": "/write-file",
            "body": {"path": "/tmp/all.bin", "content": base64::engine::general_purpose::STANDARD.encode(&bytes), "encoding": "base64"}}),
    );
    let w = collect(&mut ws, 1);
    assert_eq!(
        (w[0]["id"].as_str(), w[0]["status"].as_u64()),
        (Some("w"), Some(200)),
        "{w:?}"
    );

    // Eight one-second commands, a streamed command and file operations at once.
    let t = Instant::now();
    for i in 0..8 {
        send(
            &mut ws,
            serde_json::json!({"id": i, "method": "POST", "path": "/exec", "body": {"command": format!("sleep 1; echo n{i}")}}),
        );
    }
    send(
        &mut ws,
        serde_json::json!({"id": "s", "stream": {"command": "echo s1; sleep 1; echo s2 >&2"}}),
    );
    send(
        &mut ws,
        serde_json::json!({"id": "stat", "method": "GET", "path": "/files/stat?path=/etc"}),
    );
    send(
        &mut ws,
        serde_json::json!({"id": "dl", "method": "GET", "path": "/download?path=/tmp/all.bin"}),
    );
    send(
        &mut ws,
        serde_json::json!({"id": "escape", "method": "POST", "path": "/../../snapshots/x/restore"}),
    );
    send(
        &mut ws,
        serde_json::json!({"id": "nope", "method": "GET", "path": "/no-such-operation"}),
    );
    ws.send(Message::Text("not json".into())).unwrap();
    let got = collect(&mut ws, 14);
    let elapsed = t.elapsed();
    let by_id = |id: serde_json::Value| -> Vec<&serde_json::Value> {
        got.iter().filter(|v| v["id"] == id).collect()
    };
    for i in 0..8 {
        let a = by_id(i.into());
        assert_eq!(a.len(), 1, "{got:?}");
        assert_eq!(a[0]["status"], 200, "{a:?}");
        assert_eq!(a[0]["body"]["stdout"], format!("n{i}\n"));
    }
    assert!(
        elapsed < Duration::from_secs(7),
        "eight 1 s commands took {elapsed:?}: not concurrent"
    );
    let s: Vec<String> = by_id("s".into())
        .iter()
        .map(|v| {
            format!(
                "{}:{}",
                v["type"].as_str().unwrap(),
                v["data"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(s, ["stdout:s1\n", "stderr:s2\n", "exit:"], "{got:?}");
    let stat = by_id("stat".into());
    assert_eq!(stat[0]["body"]["exists"], true, "{stat:?}");
    assert_eq!(stat[0]["body"]["entry"]["is_dir"], true, "{stat:?}");
    let dl = by_id("dl".into());
    assert_eq!(dl[0]["body"]["encoding"], "base64", "{dl:?}");
    let data = base64::engine::general_purpose::STANDARD
        .decode(dl[0]["body"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, bytes);
    let escape = by_id("escape".into());
    assert_eq!(escape[0]["status"], 400, "{escape:?}");
    let nope = by_id("nope".into());
    assert_eq!(
        (nope[0]["status"].as_u64(), nope[0]["body"]["code"].as_str()),
        (Some(404), Some("route_not_found")),
        "{nope:?}"
    );
    let bad = by_id(serde_json::Value::Null);
    assert_eq!(bad[0]["status"], 400, "{got:?}");
    ws.close(None).unwrap();

    // A socket to a VM that does not exist is closed with 4004.
    let mut ws = connect(&format!("ws://127.0.0.1:{port}/api/vms/nope/socket"), &[]).unwrap();
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4004),
        other => panic!("{other:?}"),
    }
    ureq::delete(&format!("{http}/vms/{id}")).call().unwrap();
}
