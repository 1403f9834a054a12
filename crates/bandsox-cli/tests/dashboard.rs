//! The dashboard's server side without a VM: pages and assets with their own policy, 303 to
//! the login page without a session, the events feed's media type, and changing the admin
//! password. The pages themselves are tested in Chromium (tests/browser/dashboard.test.mjs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::io::Read;
use std::process::Command;

use common::{answer, free_port, init, start_server, text, TestRoot, BIN};

fn no_redirects() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

fn get(agent: &ureq::Agent, url: &str) -> ureq::Response {
    match agent.get(url).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn pages_login_redirect_events_and_password() {
    let root = TestRoot::new("bsxdash");
    let storage = root.path().join("s");
    assert!(init(&storage).status.success());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let web = no_redirects();

    // Auth off: every page answers the app (or the placeholder) with the page policy.
    let server = start_server(&storage, port);
    for page in [
        "/",
        "/login",
        "/vm_details",
        "/terminal",
        "/markdown_viewer",
        "/keys",
    ] {
        let r = get(&web, &format!("{url}{page}?id=x"));
        assert_eq!(r.status(), 200, "{page}");
        assert_eq!(r.content_type(), "text/html");
        let csp = r.header("content-security-policy").unwrap().to_owned();
        assert!(csp.contains("script-src 'self'"), "{page}: {csp}");
        assert!(!csp.contains("sandbox"), "{page}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        assert!(!csp
            .split(';')
            .any(|d| d.contains("script-src") && d.contains("unsafe")));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let body = r.into_string().unwrap();
        assert!(body.contains("<title>bandsox</title>"), "{page}: {body}");
    }
    // API answers keep their strict policy; unknown assets are problems.
    let r = get(&web, &format!("{url}/api/vms"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("sandbox"));
    let r = get(&web, &format!("{url}/assets/nope.js"));
    assert_eq!(r.status(), 404);
    assert_eq!(r.content_type(), "application/problem+json");
    // The events feed is a server-sent event stream.
    let r = get(&web, &format!("{url}/api/events"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_type(), "text/event-stream");
    drop(server);

    // Auth on.
    let out = Command::new(BIN)
        .args(["auth", "init", "--storage"])
        .arg(&storage)
        .env("HOME", root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("admin password"))
        .unwrap()
        .trim()
        .to_owned();
    let _server = start_server(&storage, port);
    for (page, next) in [
        ("/", "/"),
        (
            "/vm_details?id=a%20b&x=1",
            "/vm_details%3Fid%3Da%2520b%26x%3D1",
        ),
        ("/terminal", "/terminal"),
        ("/keys", "/keys"),
    ] {
        let r = get(&web, &format!("{url}{page}"));
        assert_eq!(r.status(), 303, "{page}");
        assert_eq!(
            r.header("location"),
            Some(format!("/login?next={next}").as_str())
        );
    }
    // The login page and its assets need no session; the API and the feed do.
    assert_eq!(get(&web, &format!("{url}/login")).status(), 200);
    assert_eq!(get(&web, &format!("{url}/favicon.svg")).status(), 200);
    assert_eq!(get(&web, &format!("{url}/api/events")).status(), 401);
    assert_eq!(get(&web, &format!("{url}/api/vms")).status(), 401);

    let login = |pw: &str| {
        answer(
            ureq::post(&format!("{url}/api/auth/login"))
                .send_json(serde_json::json!({ "password": pw })),
        )
    };
    let (st, body) = login(&password);
    assert_eq!(st, 200);
    let token = body["token"].as_str().unwrap().to_owned();
    let cookie = format!("bandsox_session={token}");
    let r = web
        .get(&format!("{url}/"))
        .set("cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = web
        .get(&format!("{url}/api/events"))
        .set("cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(events.content_type(), "text/event-stream");
    // The feed opens with a comment line at once.
    let mut first = [0u8; 16];
    let n = events.into_reader().read(&mut first).unwrap();
    assert!(first[..n].starts_with(b":"), "{:?}", &first[..n]);

    // Changing the password: needs the current one and 12+ characters; then only the new one works.
    let change = |current: &str, new: &str| {
        answer(
            ureq::put(&format!("{url}/api/auth/password"))
                .set("cookie", &cookie)
                .send_json(serde_json::json!({ "current_password": current, "new_password": new })),
        )
    };
    let (st, p) = change("wrong-password", "a-long-enough-password");
    assert_eq!((st, p["code"].as_str()), (401, Some("unauthorized")));
    let (st, p) = change(&password, "short");
    assert_eq!((st, p["code"].as_str()), (422, Some("invalid_input")));
    let (st, _) = change(&password, "a-long-enough-password");
    assert_eq!(st, 200);
    // Every session ended with the change.
    assert_eq!(
        get(&web, &format!("{url}/api/vms")).status(),
        401,
        "no credential"
    );
    let r = web
        .get(&format!("{url}/"))
        .set("cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 303, "the old session still opens pages");
    assert_eq!(login(&password).0, 401);
    assert_eq!(login("a-long-enough-password").0, 200);
    // Without credentials the route is refused like any other.
    let (st, _) = answer(ureq::put(&format!("{url}/api/auth/password")).send_json(
        serde_json::json!({
            "current_password": "a-long-enough-password", "new_password": "another-long-password"
        }),
    ));
    assert_eq!(st, 401);
}
