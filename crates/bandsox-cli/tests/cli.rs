//! End to end: `bandsox init`, `bandsox serve` and the client commands against a real server
//! running real VMs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{bandsox, free_port, init, start_server, text, BIN};

#[test]
fn init_serve_create_exec_stop_delete() {
    let dir = common::TestRoot::new("bsxcli");
    let storage = dir.path();

    let out = init(storage);
    assert!(out.status.success(), "init failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("bandsox/busybox built"),
        "{}",
        text(&out.stdout)
    );
    // A second init is a no-op.
    let out = init(storage);
    assert!(out.status.success());
    let again = text(&out.stdout);
    assert!(
        again.contains("already current") && again.contains("already present"),
        "{again}"
    );

    let port = free_port();
    let _server = start_server(storage, port);
    let url = format!("http://127.0.0.1:{port}");

    let out = bandsox(&url, &["create", "bandsox/busybox"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 36, "id: {id}");

    let out = bandsox(&url, &["exec", &id, "--", "uname", "-a"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(" 6.1."), "{}", text(&out.stdout));

    let out = bandsox(&url, &["exec", &id, "--", "echo hi; exit 3"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(3), "hi\n".into())
    );

    let out = bandsox(
        &url,
        &[
            "exec",
            &id,
            "--env",
            "A=1",
            "--cwd",
            "/tmp",
            "--",
            "echo $A; pwd; echo e >&2",
        ],
    );
    assert_eq!(text(&out.stdout), "1\n/tmp\n");
    assert_eq!(text(&out.stderr), "e\n");

    let out = bandsox(&url, &["vm", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "running");

    // The API answers unknown VMs with problem+json, and BandSox's `detail`.
    let err = ureq::get(&format!("{url}/api/vms/no-such-vm"))
        .call()
        .unwrap_err();
    let ureq::Error::Status(404, resp) = err else {
        panic!("expected 404, got {err:?}")
    };
    assert_eq!(resp.content_type(), "application/problem+json");
    let p: serde_json::Value = resp.into_json().unwrap();
    assert_eq!(p["code"], "vm_not_found");
    assert!(p["detail"].as_str().unwrap().contains("no-such-vm"));
    let out = bandsox(&url, &["exec", "no-such-vm", "--", "true"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );

    // A malformed body is a 4xx problem, not a crash.
    let err = ureq::post(&format!("{url}/api/vms"))
        .send_string("{not json")
        .unwrap_err();
    assert!(
        matches!(err, ureq::Error::Status(400 | 415 | 422, _)),
        "{err:?}"
    );

    // cp: a directory tree to the guest and back, byte for byte.
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    let bin: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    std::fs::write(src.join("sub/b.bin"), &bin).unwrap();
    let out = bandsox(
        &url,
        &["cp", src.to_str().unwrap(), &format!("{id}:/work/tree")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = bandsox(
        &url,
        &[
            "exec",
            &id,
            "--",
            "cat /work/tree/a.txt; wc -c < /work/tree/sub/b.bin",
        ],
    );
    assert_eq!(text(&out.stdout), "alpha\n300000\n");
    let back = dir.path().join("back");
    std::fs::create_dir_all(&back).unwrap();
    let out = bandsox(
        &url,
        &["cp", &format!("{id}:/work/tree"), back.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(back.join("tree/sub/b.bin")).unwrap(), bin);
    assert_eq!(std::fs::read(back.join("tree/a.txt")).unwrap(), b"alpha\n");
    let out = bandsox(&url, &["cp", "a", "b"]);
    assert!(!out.status.success() && text(&out.stderr).starts_with("error: "));

    let out = bandsox(&url, &["completions", "bash"]);
    assert!(out.status.success() && text(&out.stdout).contains("bandsox"));

    let out = bandsox(&url, &["vm", "stop", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = ureq::post(&format!("{url}/api/vms/{id}/exec"))
        .send_json(serde_json::json!({"command": "true"}))
        .unwrap_err();
    assert!(matches!(err, ureq::Error::Status(409, _)), "{err:?}");
    let out = bandsox(&url, &["exec", &id, "--", "true"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));

    let out = bandsox(&url, &["vm", "delete", &id]);
    assert!(out.status.success());
    assert!(!storage.join("vms").join(&id).exists());
    assert_eq!(std::fs::read_dir(storage.join("vms")).unwrap().count(), 0);
}

#[test]
fn serve_refuses_a_public_address_without_auth() {
    let dir = common::TestRoot::new("bsxcli");
    let out = init(dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new(BIN)
        .args([
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            &free_port().to_string(),
            "--storage",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refusing to listen"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn client_errors_are_one_line_with_a_hint() {
    let out = bandsox(
        &format!("http://127.0.0.1:{}", free_port()),
        &["vm", "list"],
    );
    assert_eq!(out.status.code(), Some(5));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: cannot reach") && err.contains("\nhint: "),
        "{err}"
    );
}

#[test]
fn serve_announces_itself_in_the_root_and_refuses_a_second_server() {
    let dir = common::TestRoot::new("bsxcli");
    let out = init(dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let port = free_port();
    let server = common::start_server(dir.path(), port);
    let file = dir.path().join("server.json");
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(info["url"], format!("http://127.0.0.1:{port}"));
    assert_eq!(info["pid"], server.child.id());
    assert!(info["proxy_url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));

    // A second server on the same root stops before touching it, naming the first.
    let out = Command::new(BIN)
        .args(["serve", "--port", "0", "--proxy-port", "0", "--storage"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "is in use by PID {} (bandsox serve)",
            server.child.id()
        )) && err.contains("\nhint: "),
        "{err}"
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&file).unwrap()).unwrap(),
        info
    );

    // A server stopped cleanly removes the file and frees the root.
    let mut server = server;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    server.child.wait().unwrap();
    assert!(!file.exists());
    let _again = common::start_server(dir.path(), free_port());
    assert!(file.exists());
}

/// Paths under `root` (files and directories, not following links) that `nobody` can open.
fn readable_by_nobody(root: &std::path::Path) -> Vec<String> {
    fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        out.push(p.to_path_buf());
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), out);
            }
        }
    }
    let mut paths = Vec::new();
    walk(root, &mut paths);
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(
            r#"for p in "$@"; do
                 if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "$p";
                 else head -c1 "$p" >/dev/null 2>&1 && echo "$p"; fi
               done; exit 0"#,
        )
        .arg("sh")
        .args(&paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_owned).collect()
}

/// Nothing under a storage root is readable by other users: a new root is made private, and
/// an older root with open modes is fixed by the next process that owns it.
#[test]
fn storage_root_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TestRoot::new("bsxprivate");
    // tempfile makes its directory 0700; let `nobody` reach the root itself.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let storage = dir.path().join("s");
    let out = init(&storage);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&storage), 0o700);
    assert_eq!(mode(&storage.join("bandsox.db")), 0o600);
    assert_eq!(readable_by_nobody(&storage), Vec::<String>::new());

    // A root left open by an older version.
    std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        storage.join("bandsox.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert!(!readable_by_nobody(&storage).is_empty());
    let out = Command::new(BIN)
        .args(["auth", "init", "--storage"])
        .arg(&storage)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&storage), 0o700);
    assert_eq!(mode(&storage.join("bandsox.db")), 0o600);
    assert_eq!(readable_by_nobody(&storage), Vec::<String>::new());
}

/// A reader that goes away before the output is written (`bandsox completions zsh | head`)
/// ends the CLI by SIGPIPE, quietly, not with a panic (exit 101).
#[test]
fn a_broken_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        &["completions", "zsh"][..],
        &["--help"],
        &["exec", "--help"],
    ] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {out:?}"
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
    }
}

/// Every command's help has an example block, and the global options sit under their own
/// heading instead of among the command's own.
#[test]
fn every_command_has_examples_and_global_options_apart() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = text(&out.stdout);
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() > 15, "{help}");
    let mut commands: Vec<Vec<String>> = commands.into_iter().map(|c| vec![c]).collect();
    for group in ["vm", "snapshot"] {
        for sub in [
            "list", "info", "stop", "pause", "rename", "save", "resume", "fork", "delete",
        ] {
            if group == "vm" || ["list", "info", "delete", "rename"].contains(&sub) {
                commands.push(vec![group.into(), sub.into()]);
            }
        }
    }
    commands.push(vec!["snapshot".into(), "restore".into()]);
    for c in &commands {
        let out = Command::new(BIN).args(c).arg("--help").output().unwrap();
        let h = text(&out.stdout);
        assert!(out.status.success(), "{c:?}: {}", text(&out.stderr));
        assert!(h.contains("\nExamples:\n  "), "{c:?} has no examples:\n{h}");
        let (own, global) = h.split_once("Global options:").unwrap_or((&h, ""));
        assert!(global.contains("--url"), "{c:?}: no global heading:\n{h}");
        assert!(
            !own.contains("--url"),
            "{c:?}: --url among its own options:\n{h}"
        );
        // Every argument and option is described (on its line, or on the next, indented).
        let lines: Vec<&str> = own.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with("  ") || l.starts_with("   ") {
                continue;
            }
            let t = l.trim_start();
            if !t.starts_with(['-', '<', '[']) {
                continue;
            }
            let inline = t.split("  ").filter(|w| !w.trim().is_empty()).count() >= 2;
            let below = lines
                .get(i + 1)
                .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            assert!(inline || below, "{c:?}: undescribed `{t}`:\n{h}");
        }
    }
}
