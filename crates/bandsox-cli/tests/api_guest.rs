//! The guest endpoints over real HTTP against a real server and VM: BandSox's file endpoints,
//! our file extensions, exec-python's shape, and durable commands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use base64::Engine;
use common::{answer as status, free_port, init, start_server, TestRoot};
use serde_json::{json, Value};

fn post(url: &str, body: Value) -> Value {
    ureq::post(url)
        .send_json(body)
        .unwrap()
        .into_json()
        .unwrap()
}

fn get(url: &str) -> Value {
    ureq::get(url).call().unwrap().into_json().unwrap()
}

#[test]
fn files_python_and_commands_over_http() {
    let root = TestRoot::new("bsxapi");
    assert!(init(root.path()).status.success());
    let port = free_port();
    let _server = start_server(root.path(), port);
    let base = format!("http://127.0.0.1:{port}/api");
    let id = post(&format!("{base}/vms"), json!({"image": "bandsox/busybox"}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let vm = format!("{base}/vms/{id}");

    // write-file (utf-8, creates parents), append-file, read-file.
    let r = post(
        &format!("{vm}/write-file"),
        json!({"path": "/work/a/hello.txt", "content": "hello\n"}),
    );
    assert_eq!(r, json!({"status": "written", "path": "/work/a/hello.txt"}));
    let r = post(
        &format!("{vm}/append-file"),
        json!({"path": "/work/a/hello.txt", "content": "world\n"}),
    );
    assert_eq!(r["status"], "appended");
    let r = get(&format!("{vm}/read-file?path=/work/a/hello.txt"));
    assert_eq!(
        (r["path"].as_str(), r["content"].as_str()),
        (Some("/work/a/hello.txt"), Some("hello\nworld\n"))
    );
    let r = get(&format!(
        "{vm}/read-file?path=/work/a/hello.txt&offset=1&limit=1&show_line_numbers=true"
    ));
    assert_eq!(r["content"], "2\tworld\n");

    // base64 with every byte value; download streams the exact bytes.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    post(
        &format!("{vm}/write-file"),
        json!({"path": "/work/bin.dat", "content": b64, "encoding": "base64"}),
    );
    let resp = ureq::get(&format!("{vm}/download?path=/work/bin.dat"))
        .call()
        .unwrap();
    assert!(resp
        .header("content-disposition")
        .unwrap()
        .contains("bin.dat"));
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut got).unwrap();
    assert_eq!(got, bytes);
    let (code, p) = status(
        ureq::post(&format!("{vm}/write-file"))
            .send_json(json!({"path": "/x", "content": "!!", "encoding": "base64"})),
    );
    assert_eq!((code, p["code"].as_str()), (400, Some("invalid_base64")));

    // Multipart upload, streamed.
    let boundary = "bsxboundary";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"remote_path\"\r\n\r\n/work/up.bin\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"up.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r: Value = ureq::post(&format!("{vm}/upload"))
        .set(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send_bytes(&body)
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(
        (r["status"].as_str(), r["size"].as_u64()),
        (Some("uploaded"), Some(70_000))
    );
    let out = post(
        &format!("{vm}/exec"),
        json!({"command": "cmp /work/up.bin /work/bin.dat && echo same"}),
    );
    assert_eq!(out["stdout"], "same\n");

    // Listing, info, stat; a missing path is 404 for info and `exists: false` for stat.
    let r = get(&format!("{vm}/files?path=/work"));
    let mut names: Vec<&str> = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "bin.dat", "up.bin"]);
    let r = get(&format!("{vm}/file-info?path=/work/bin.dat"));
    assert_eq!(
        (r["info"]["size"].as_u64(), r["info"]["mode"].as_str()),
        (Some(70_000), Some("644"))
    );
    assert_eq!(
        status(ureq::get(&format!("{vm}/file-info?path=/nope")).call()).0,
        404
    );
    assert_eq!(get(&format!("{vm}/files/stat?path=/nope"))["exists"], false);

    // mkdir, batch write with modes, edit (exactly one match), rename, remove.
    post(&format!("{vm}/files/mkdir"), json!({"path": "/work/d/e"}));
    post(
        &format!("{vm}/files/write-batch"),
        json!({"files": [
            {"path": "/work/d/e/run.sh", "content": "#!/bin/sh\necho ran\n", "mode": 493},
            {"path": "/work/d/conf", "content": "x=1\ny=2\n"},
        ]}),
    );
    assert_eq!(
        post(
            &format!("{vm}/exec"),
            json!({"command": "/work/d/e/run.sh"})
        )["stdout"],
        "ran\n"
    );
    post(
        &format!("{vm}/files/edit"),
        json!({"path": "/work/d/conf", "old_text": "y=2", "new_text": "y=3"}),
    );
    let (code, _) = status(
        ureq::post(&format!("{vm}/files/edit"))
            .send_json(json!({"path": "/work/d/conf", "old_text": "=", "new_text": "-"})),
    );
    assert_eq!(code, 422, "an edit with two matches must fail");
    post(
        &format!("{vm}/files/rename"),
        json!({"from": "/work/d/conf", "to": "/work/conf2"}),
    );
    assert_eq!(
        get(&format!("{vm}/read-file?path=/work/conf2"))["content"],
        "x=1\ny=3\n"
    );
    post(
        &format!("{vm}/files/remove"),
        json!({"path": "/work/d", "recursive": true}),
    );
    assert_eq!(
        get(&format!("{vm}/files/stat?path=/work/d"))["exists"],
        false
    );

    // exec-python on an image without Python: BandSox's result shape with a clear error.
    let (code, r) =
        status(ureq::post(&format!("{vm}/exec-python")).send_json(json!({"code": "print(1)"})));
    if code == 200 {
        assert_eq!(r["success"], false, "{r}");
        assert!(
            r["error"].as_str().unwrap_or_default().contains("python"),
            "{r}"
        );
        for k in ["exit_code", "stdout", "stderr", "output"] {
            assert!(r.get(k).is_some(), "missing {k}: {r}");
        }
    } else {
        assert!(
            r["detail"].as_str().unwrap().contains("python"),
            "{code} {r}"
        );
    }

    // Durable commands: start, logs by offset, wait, stdin, kill of a process group.
    let c = post(
        &format!("{vm}/commands"),
        json!({"command": "echo one; sleep 0.3; echo two"}),
    );
    let cmd = c["cmd_id"].as_str().unwrap().to_owned();
    let done = post(&format!("{vm}/commands/{cmd}/wait"), json!({"timeout": 30}));
    assert_eq!(done["status"]["exit_code"], 0, "{done}");
    let l = get(&format!("{vm}/commands/{cmd}/logs"));
    assert_eq!(l["stdout"], "one\ntwo\n");
    let l = get(&format!("{vm}/commands/{cmd}/logs?stdout_from=4"));
    assert_eq!(
        (l["stdout"].as_str(), l["stdout_offset"].as_u64()),
        (Some("two\n"), Some(8))
    );
    let c = post(
        &format!("{vm}/commands"),
        json!({"command": "cat", "stdin": true}),
    );
    let cat = c["cmd_id"].as_str().unwrap().to_owned();
    post(
        &format!("{vm}/commands/{cat}/stdin"),
        json!({"data": "piped\n", "close": true}),
    );
    post(&format!("{vm}/commands/{cat}/wait"), json!({"timeout": 30}));
    assert_eq!(
        get(&format!("{vm}/commands/{cat}/logs"))["stdout"],
        "piped\n"
    );
    let c = post(
        &format!("{vm}/commands"),
        json!({"command": "sleep 1000 & sleep 1000"}),
    );
    let sl = c["cmd_id"].as_str().unwrap().to_owned();
    post(
        &format!("{vm}/commands/{sl}/kill"),
        json!({"signal": "KILL"}),
    );
    let info = post(&format!("{vm}/commands/{sl}/wait"), json!({"timeout": 30}));
    assert_eq!(info["running"], false);
    let ps = post(
        &format!("{vm}/exec"),
        json!({"command": "ps | grep '[s]leep 1000' || echo none"}),
    );
    assert_eq!(ps["stdout"], "none\n");
    let list = get(&format!("{vm}/commands"));
    assert!(list.as_array().unwrap().len() >= 3);
    let (code, p) = status(ureq::post(&format!("{vm}/commands/nope/kill")).send_json(json!({})));
    assert_eq!(code, 404, "{p}");

    ureq::delete(&vm).call().unwrap();
}
