//! The etcd client against a real 3-member etcd cluster on loopback (Debian's etcd-server).
//! Ports 19810-19815.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bandsox_cluster::testkit::EtcdCluster;
use bandsox_cluster::{Compare, CompareResult, Etcd, Op};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_one_loss_and_answer_503_without_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 19810, 3).unwrap();
    let etcd = Etcd::new(&cluster.endpoints()).unwrap();

    // Plain key-values, prefixes.
    etcd.put("/t/a", b"1", None).await.unwrap();
    etcd.put("/t/b", b"2", None).await.unwrap();
    etcd.put("/u/c", b"3", None).await.unwrap();
    assert_eq!(etcd.get("/t/a").await.unwrap().unwrap().value, b"1");
    assert!(etcd.get("/t/none").await.unwrap().is_none());
    let (kvs, rev) = etcd.list("/t/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b"]);
    assert!(rev > 0);

    // A create-if-absent transaction succeeds once.
    let create = |v: &'static [u8]| {
        (
            vec![Compare::CreateRevision(
                "/t/once".into(),
                CompareResult::Equal,
                0,
            )],
            vec![Op::Put {
                key: "/t/once".into(),
                value: v.to_vec(),
                lease: None,
            }],
            vec![Op::Get("/t/once".into())],
        )
    };
    let (c, s, f) = create(b"first");
    assert!(etcd.txn(&c, &s, &f).await.unwrap().succeeded);
    let (c, s, f) = create(b"second");
    let t = etcd.txn(&c, &s, &f).await.unwrap();
    assert!(!t.succeeded);
    assert_eq!(t.reads[0][0].value, b"first");

    // A key under a lease lives while it is renewed and goes when it is not.
    let lease = etcd.grant(2).await.unwrap();
    etcd.put("/t/leased", b"x", Some(lease)).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(etcd.keep_alive(lease).await.unwrap().is_some());
    }
    assert!(etcd.get("/t/leased").await.unwrap().is_some());
    let start = Instant::now();
    while etcd.get("/t/leased").await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(etcd.keep_alive(lease).await.unwrap(), None);
    // A put under an expired lease is refused, not retried until the deadline.
    let start = Instant::now();
    let e = etcd.put("/t/leased", b"x", Some(lease)).await.unwrap_err();
    assert_eq!(e.code(), "cluster_error", "{e}");
    assert!(start.elapsed() < Duration::from_secs(1));

    // One member down (the one the client talks to first): everything still works.
    cluster.kill_member(0);
    let fresh = Etcd::new(&cluster.endpoints()).unwrap();
    let start = Instant::now();
    fresh.put("/t/after-kill", b"y", None).await.unwrap();
    assert_eq!(
        fresh.get("/t/after-kill").await.unwrap().unwrap().value,
        b"y"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "failover took {:?}",
        start.elapsed()
    );
    let l = fresh.grant(5).await.unwrap();
    assert!(fresh.keep_alive(l).await.unwrap().is_some());

    // Two down: no quorum. Reads and writes answer cluster_unavailable within the deadline.
    cluster.kill_member(1);
    for op in ["get", "put"] {
        let start = Instant::now();
        let e = match op {
            "get" => fresh.get("/t/a").await.map(|_| ()),
            _ => fresh.put("/t/no-quorum", b"z", None).await.map(|_| ()),
        }
        .unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.code(), "cluster_unavailable", "{op}: {e}");
        assert!(e.hint().is_some());
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_secs(5),
            "{op} took {took:?}"
        );
    }

    // Both return: the client recovers. (The put above may still be applied once the
    // members return: etcd keeps a proposal it timed out on. Callers guard writes.)
    cluster.start_member(0).unwrap();
    cluster.start_member(1).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).unwrap();
    let start = Instant::now();
    let value = loop {
        match fresh.get("/t/a").await {
            Ok(v) => break v,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(20), "{e}");
            }
        }
    };
    assert_eq!(value.unwrap().value, b"1");
}
