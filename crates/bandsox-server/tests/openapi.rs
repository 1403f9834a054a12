//! The checked-in `spec/openapi.json` is what the server serves, and it documents every route.
//! After changing the API, refresh the copy with `BLESS=1 cargo test -p bandsox-server --test openapi`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec/openapi.json")
}

fn generated() -> String {
    let mut s = serde_json::to_string_pretty(&bandsox_server::openapi::spec()).unwrap();
    s.push('\n');
    s
}

#[test]
fn spec_file_matches_the_code() {
    let now = generated();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(checked_in(), &now).unwrap();
    }
    let file = std::fs::read_to_string(checked_in()).unwrap_or_default();
    assert!(
        file == now,
        "spec/openapi.json is out of date: run `BLESS=1 cargo test -p bandsox-server --test openapi` and commit it"
    );
}

#[test]
fn spec_is_openapi_3_1_with_every_route() {
    let spec: serde_json::Value = serde_json::from_str(&generated()).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let documented: BTreeSet<String> = spec["paths"].as_object().unwrap().keys().cloned().collect();
    // Every path the router serves, read from the route table itself.
    let table = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/routes/mod.rs"),
    )
    .unwrap();
    let mut routed = BTreeSet::new();
    for part in table.split(".route(").skip(1) {
        let path = part.trim_start().trim_start_matches('"');
        let path = &path[..path.find('"').unwrap()];
        routed.insert(path.replace("{*", "{"));
    }
    // Aliases kept for BandSox clients, the spec itself, and the root forms of the port proxy
    // (described with its path form).
    for alias in [
        "/api/projects",
        "/api/openapi.json",
        "/api/vms/{id}/ports/{port}",
        "/api/vms/{id}/ports/{port}/",
    ] {
        assert!(routed.remove(alias), "{alias} is no longer routed");
    }
    let missing: Vec<_> = routed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes without OpenAPI docs: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&routed).collect();
    assert!(
        stale.is_empty(),
        "documented paths that are not routed: {stale:?}"
    );
    // Every operation documents its errors as problem+json.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"]["default"]["content"]["application/problem+json"].is_object(),
                "{method} {path} has no problem+json default response"
            );
        }
    }
}
