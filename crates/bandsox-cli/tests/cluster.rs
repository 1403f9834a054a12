//! `serve --cluster`: two real nodes (bandsox processes with their own storage roots) and a
//! real 3-member etcd on loopback. etcd on ports 19840-19845, nodes on 19850-19859.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bandsox_cluster::testkit::EtcdCluster;
use common::{answer, auth_init, init, start_server, start_server_with, text, TestRoot, BIN};

const TTL: &str = "2";

fn node_flags<'a>(etcd: &'a str, name: &'a str, port: u16, secret: &'a str) -> Vec<String> {
    vec![
        "--cluster".into(),
        etcd.into(),
        "--node-name".into(),
        name.into(),
        "--advertise".into(),
        format!("http://127.0.0.1:{port}"),
        "--cluster-secret-file".into(),
        secret.into(),
        "--cluster-lease-ttl".into(),
        TTL.into(),
    ]
}

fn start_node(storage: &Path, port: u16, flags: &[String]) -> common::Server {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_server_with(storage, port, &flags)
}

/// `(state of every node by name)` through `url`'s `bandsox cluster nodes --json`.
fn states(url: &str, key: Option<&str>) -> Vec<(String, String)> {
    let mut c = Command::new(BIN);
    c.args(["cluster", "nodes", "--json"])
        .env("BANDSOX_URL", url);
    match key {
        Some(k) => c.env("BANDSOX_API_KEY", k),
        None => c.env_remove("BANDSOX_API_KEY"),
    };
    let out = c.env("HOME", "/nonexistent").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wait_state(url: &str, key: Option<&str>, node: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let s = states(url, key);
        if s.iter().any(|(n, st)| n == node && st == want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{node} never became {want}: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nodes_join_show_health_and_refuse_duplicates() {
    let root = TestRoot::new("bsxcluster");
    let etcd_dir = root.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let mut etcd = EtcdCluster::start(&etcd_dir, 19840, 3).unwrap();
    let members = etcd.endpoints();
    let secret = root.path().join("secret");
    std::fs::write(&secret, "a-cluster-secret-of-32-bytes-xyz\n").unwrap();
    let secret = secret.to_str().unwrap().to_owned();

    let (sa, sb, sc) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("c"),
    );
    for s in [&sa, &sb, &sc] {
        let out = init(s);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // Node a with auth on, node b without.
    let (_password, key_a) = auth_init(&sa);
    let (pa, pb, pc) = (19850, 19852, 19854);
    let (ua, ub) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let mut node_a = start_node(&sa, pa, &node_flags(&members, "a", pa, &secret));
    let _node_b = start_node(&sb, pb, &node_flags(&members, "b", pb, &secret));

    let all_up = vec![
        ("a".to_owned(), "up".to_owned()),
        ("b".to_owned(), "up".to_owned()),
    ];
    assert_eq!(states(&ub, None), all_up);
    assert_eq!(states(&ua, Some(&key_a)), all_up);
    // Auth on: no key, or a wrong one, is refused.
    let (status, body) = answer(ureq::get(&format!("{ua}/api/cluster/nodes")).call());
    assert_eq!(status, 401, "{body}");
    let (status, _) = answer(
        ureq::get(&format!("{ua}/api/cluster/nodes"))
            .set("Authorization", "Bearer bsx_wrong")
            .call(),
    );
    assert_eq!(status, 401);
    // The table names this node with a star.
    let out = Command::new(BIN)
        .args(["cluster", "nodes"])
        .env("BANDSOX_URL", &ub)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("b *") && table.contains("http://127.0.0.1:19850"),
        "{table}"
    );

    // Another host under a live name is refused: one line, a hint, non-zero exit.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--port",
            &pc.to_string(),
            "--no-proxy",
            "--storage",
        ])
        .arg(&sc)
        .args(node_flags(&members, "a", pc, &secret))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("node name `a` is already used"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(states(&ub, None), all_up);

    // Bad cluster flags fail before anything starts.
    for (flags, want) in [
        (
            vec!["--cluster", &members as &str],
            "--cluster needs --node-name",
        ),
        (
            vec!["--cluster", "127.0.0.1:1", "--node-name", "x"],
            "is not an http:// URL",
        ),
        (vec!["--node-name", "x"], "--cluster"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--port", &pc.to_string(), "--storage"])
            .arg(&sc)
            .args(&flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{flags:?}");
        assert!(err.contains(want), "{flags:?}: {err}");
    }

    // A stopped node goes down within its lease TTL; its record stays. Continued, it
    // registers again.
    let pid = node_a.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let down = wait_state(&ub, None, "a", "down", Duration::from_secs(8));
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let back = wait_state(&ub, None, "a", "up", Duration::from_secs(8));
    eprintln!("node a: down {down:?} after SIGSTOP (TTL {TTL} s), up {back:?} after SIGCONT");

    // One etcd member down: still served. Two: 503 cluster_unavailable with a hint, fast.
    etcd.kill_member(0);
    assert_eq!(states(&ub, None), all_up);
    etcd.kill_member(1);
    let start = Instant::now();
    let (status, body) = answer(ureq::get(&format!("{ub}/api/cluster/nodes")).call());
    let took = start.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "cluster_unavailable", "{body}");
    assert!(body["hint"].as_str().is_some(), "{body}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The node itself still answers everything that needs no cluster.
    let (status, _) = answer(ureq::get(&format!("{ub}/api/images")).call());
    assert_eq!(status, 200);

    node_a.child.kill().unwrap();
    let _ = node_a.child.wait();
}

#[test]
fn a_single_host_is_not_a_cluster() {
    let root = TestRoot::new("bsxsingle");
    let storage = root.path().join("s");
    assert!(init(&storage).status.success());
    let port = 19858;
    let _server = start_server(&storage, port);
    let url = format!("http://127.0.0.1:{port}");
    let (status, body) = answer(ureq::get(&format!("{url}/api/cluster/nodes")).call());
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_clustered");
    let out = Command::new(BIN)
        .args(["cluster", "nodes"])
        .env("BANDSOX_URL", &url)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("not part of a cluster") && err.contains("hint:"),
        "{err}"
    );
    assert!(!storage.join("cluster-node-id").exists());
}

fn call(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = ureq::request(method, url).timeout(Duration::from_secs(300));
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    answer(match body {
        Some(b) => r.send_json(b),
        None => r.call(),
    })
}

/// `(id, node, status)` of every VM in `url`'s merged list.
fn listed(url: &str, key: Option<&str>) -> Vec<(String, String, String)> {
    let (status, v) = call("GET", &format!("{url}/api/vms"), key, None);
    assert_eq!(status, 200, "{v}");
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            (
                vm["id"].as_str().unwrap().to_owned(),
                vm["node"].as_str().unwrap_or("").to_owned(),
                vm["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Two nodes with real VMs: creates spread, a pin is obeyed, every VM request reaches the
/// owner through the other node (by id, name and prefix), VMs of a stopped node are `lost`
/// and come back, and with auth on nothing passes without a key or with a wrong secret.
#[test]
fn vms_spread_and_are_reached_through_any_node() {
    let root = TestRoot::new("bsxclvm");
    let etcd_dir = root.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let etcd = EtcdCluster::start(&etcd_dir, 19870, 3).unwrap();
    let members = etcd.endpoints();
    let secret_file = root.path().join("secret");
    let secret = "another-cluster-secret-32-bytes!";
    std::fs::write(&secret_file, secret).unwrap();
    let secret_file = secret_file.to_str().unwrap().to_owned();
    let (sa, sb) = (root.path().join("a"), root.path().join("b"));
    for s in [&sa, &sb] {
        let out = init(s);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let (pa, pb) = (19860, 19862);
    let (ua, ub) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let node_a = start_node(&sa, pa, &node_flags(&members, "a", pa, &secret_file));
    let node_b = start_node(&sb, pb, &node_flags(&members, "b", pb, &secret_file));

    // Auth off. Two creates through a: best of two with equal room puts them on different
    // nodes (the second always goes to the emptier one).
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let (status, v) = call(
            "POST",
            &format!("{ua}/api/vms"),
            None,
            Some(serde_json::json!({"image": "bandsox/busybox", "name": name})),
        );
        assert_eq!(status, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let list = listed(&ub, None);
    let nodes: Vec<&str> = list.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(nodes.contains(&"a") && nodes.contains(&"b"), "{list:?}");
    assert!(list.iter().all(|(_, _, s)| s == "running"), "{list:?}");
    assert_eq!(listed(&ua, None), list);
    let on_a = list.iter().find(|(_, n, _)| n == "a").unwrap().0.clone();
    let on_b = list.iter().find(|(_, n, _)| n == "b").unwrap().0.clone();

    // Through b, a's VM: by id, by prefix, by name; exec and files.
    let name_on_a = if on_a == ids[0] { "one" } else { "two" };
    for reference in [on_a.clone(), on_a[..8].to_owned(), name_on_a.to_owned()] {
        let (status, v) = call(
            "POST",
            &format!("{ub}/api/vms/{reference}/exec"),
            None,
            Some(serde_json::json!({"command": "hostname; echo from-a"})),
        );
        assert_eq!(status, 200, "{reference}: {v}");
        assert!(v["stdout"].as_str().unwrap().contains("from-a"), "{v}");
    }
    let (status, v) = call(
        "POST",
        &format!("{ub}/api/vms/{on_a}/write-file"),
        None,
        Some(serde_json::json!({"path": "/tmp/x.txt", "content": "through b\n"})),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(
        "GET",
        &format!("{ua}/api/vms/{on_a}/read-file?path=/tmp/x.txt"),
        None,
        None,
    );
    assert_eq!(
        (status, v["content"].as_str()),
        (200, Some("through b\n")),
        "{v}"
    );
    let download = ureq::get(&format!("{ub}/api/vms/{on_a}/download?path=/tmp/x.txt"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(download, "through b\n");
    let (status, v) = call("GET", &format!("{ub}/api/vms/{on_a}"), None, None);
    assert_eq!(
        (status, v["id"].as_str()),
        (200, Some(on_a.as_str())),
        "{v}"
    );
    // A reference nobody has is a 404 on every node.
    let (status, v) = call("GET", &format!("{ub}/api/vms/no-such-vm"), None, None);
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("vm_not_found")),
        "{v}"
    );

    // A pin is obeyed, or refused with a reason.
    let (status, v) = call(
        "POST",
        &format!("{ua}/api/vms"),
        None,
        Some(serde_json::json!({"image": "bandsox/busybox", "node": "nope"})),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("node_not_found")),
        "{v}"
    );

    // A node-to-node request with a wrong secret is refused.
    let r = ureq::get(&format!("{ua}/api/vms/{on_a}"))
        .set("x-bandsox-cluster-secret", "wrong-secret-wrong-secret")
        .call();
    assert_eq!(answer(r).0, 401);

    // Node b stopped: its VM is `lost` (kept) in a's list; continued, it is running again.
    let pid = node_b.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    loop {
        let l = listed(&ua, None);
        if l.iter().any(|(id, _, s)| *id == on_b && s == "lost") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never lost: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, v) = call("GET", &format!("{ua}/api/vms/{on_b}"), None, None);
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("node_down")),
        "{v}"
    );
    // New creates go to a.
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    loop {
        let l = listed(&ua, None);
        if l.iter().any(|(id, _, s)| *id == on_b && s == "running") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never back: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Both nodes restarted with auth on (each knows its own key): they register again and
    // take their running VMs over; nothing passes without a key.
    drop(node_a);
    drop(node_b);
    let (_pa_pw, key_a) = auth_init(&sa);
    let (_pb_pw, _key_b) = auth_init(&sb);
    let _node_a = start_node(&sa, pa, &node_flags(&members, "a", pa, &secret_file));
    let _node_b = start_node(&sb, pb, &node_flags(&members, "b", pb, &secret_file));
    wait_state(&ua, Some(&key_a), "b", "up", Duration::from_secs(10));
    for url in [&ua, &ub] {
        let (status, _) = call("GET", &format!("{url}/api/vms/{on_a}"), None, None);
        assert_eq!(status, 401, "{url}");
        let (status, _) = call("GET", &format!("{url}/api/vms"), Some("bsx_wrong"), None);
        assert_eq!(status, 401, "{url}");
    }
    // With a's key, through a, b's VM answers (a forwards with the cluster secret).
    let (status, v) = call(
        "POST",
        &format!("{ua}/api/vms/{on_b}/exec"),
        Some(&key_a),
        Some(serde_json::json!({"command": "echo from-b"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "from-b\n");

    // Deleting through the other node removes the VM and its placement.
    let (status, v) = call(
        "DELETE",
        &format!("{ua}/api/vms/{on_b}"),
        Some(&key_a),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(
        "DELETE",
        &format!("{ua}/api/vms/{on_a}"),
        Some(&key_a),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(listed(&ua, Some(&key_a)), vec![]);
}
