//! Authentication against a real server: API keys, revocation, password login with rate
//! limiting, sessions revoked on logout, CSRF and DNS-rebinding guards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::process::{Command, Output};

use common::{free_port, init, start_server, text, TestRoot, BIN};

fn cli(url: &str, home: &std::path::Path, key: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("BANDSOX_URL", url)
        .env("HOME", home)
        .env_remove("SUDO_USER");
    match key {
        Some(k) => c.env("BANDSOX_API_KEY", k),
        None => c.env_remove("BANDSOX_API_KEY"),
    };
    c.output().unwrap()
}

fn status(r: Result<ureq::Response, ureq::Error>) -> u16 {
    common::answer(r).0
}

#[test]
fn keys_sessions_and_guards() {
    let root = TestRoot::new("bsxauth");
    let storage = root.path().join("s");
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    assert!(init(&storage).status.success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    // Without auth: open on loopback, but a foreign Host (DNS rebinding) is refused.
    let _server = start_server(&storage, port);
    assert_eq!(status(ureq::get(&format!("{url}/api/vms")).call()), 200);
    assert_eq!(
        status(
            ureq::get(&format!("{url}/api/vms"))
                .set("Host", "evil.example")
                .call()
        ),
        403
    );
    drop(_server);

    let out = cli(
        &url,
        &home,
        None,
        &[
            "auth",
            "init",
            "--storage",
            storage.to_str().unwrap(),
            "--save",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("admin password"))
        .unwrap()
        .trim()
        .to_owned();
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("API key"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(key.starts_with("bsx_"));
    use std::os::unix::fs::PermissionsExt;
    let creds = home.join(".bandsox/credentials");
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second init refuses.
    let again = cli(
        &url,
        &home,
        None,
        &["auth", "init", "--storage", storage.to_str().unwrap()],
    );
    assert!(!again.status.success());
    // Nothing secret is stored in clear.
    let db = std::fs::read(storage.join("bandsox.db")).unwrap();
    for secret in [&password, &key] {
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret found in the database"
        );
    }

    let _server = start_server(&storage, port);
    // No key: 401 problem+json; the CLI exits 6 with a hint.
    let err = ureq::get(&format!("{url}/api/vms")).call().unwrap_err();
    let ureq::Error::Status(401, resp) = err else {
        panic!("{err:?}")
    };
    assert_eq!(resp.content_type(), "application/problem+json");
    let out = cli(&url, &root.path().join("nohome"), None, &["vm", "list"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    // The saved credentials work; so does the environment variable.
    assert!(cli(&url, &home, None, &["vm", "list"]).status.success());
    assert!(cli(
        &url,
        &root.path().join("nohome"),
        Some(&key),
        &["vm", "list"]
    )
    .status
    .success());

    // Keys: create, list (no secrets), revoke.
    let out = cli(&url, &home, None, &["auth", "create-key", "ci"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key2 = text(&out.stdout).trim().to_owned();
    let list = text(&cli(&url, &home, None, &["auth", "list-keys", "--json"]).stdout);
    let keys: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(!list.contains(&key2[12..]), "a secret was listed");
    let id2 = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        status(
            ureq::get(&format!("{url}/api/vms"))
                .set("Authorization", &format!("Bearer {key2}"))
                .call()
        ),
        200
    );
    assert!(cli(&url, &home, None, &["auth", "revoke-key", &id2])
        .status
        .success());
    assert_eq!(
        status(
            ureq::get(&format!("{url}/api/vms"))
                .set("Authorization", &format!("Bearer {key2}"))
                .call()
        ),
        401
    );

    // Password login: wrong passwords are rate limited.
    let login = |pw: &str| {
        ureq::post(&format!("{url}/api/auth/login")).send_json(serde_json::json!({"password": pw}))
    };
    let ok = login(&password).unwrap();
    let cookie = ok.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let token = ok.into_json::<serde_json::Value>().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = format!("bandsox_session={token}");
    assert_eq!(
        status(
            ureq::get(&format!("{url}/api/vms"))
                .set("Cookie", &session)
                .call()
        ),
        200
    );
    // A cookie-authenticated write from another origin is refused (CSRF).
    let cross = ureq::post(&format!("{url}/api/vms/x/stop"))
        .set("Cookie", &session)
        .set("Origin", "http://evil.example")
        .call();
    assert_eq!(status(cross), 403);
    // Logout ends the session on the server.
    ureq::post(&format!("{url}/api/auth/logout"))
        .set("Cookie", &session)
        .call()
        .unwrap();
    assert_eq!(
        status(
            ureq::get(&format!("{url}/api/vms"))
                .set("Cookie", &session)
                .call()
        ),
        401
    );
    // Successful logins are not counted; ten failures a minute are allowed, then even the
    // right password waits.
    for _ in 0..12 {
        assert_eq!(status(login(&password)), 200);
    }
    let mut codes = Vec::new();
    for _ in 0..11 {
        codes.push(status(login("wrong password")));
    }
    assert!(codes[..10].iter().all(|c| *c == 401), "{codes:?}");
    assert_eq!(codes[10], 429, "{codes:?}");
    assert_eq!(
        status(login(&password)),
        429,
        "the limit counts per address"
    );
}
