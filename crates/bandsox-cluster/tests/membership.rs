//! Membership against a real 3-member etcd cluster. Ports 19820-19825.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bandsox_cluster::membership::{list_nodes, Capacity, Membership, NodeRecord};
use bandsox_cluster::testkit::EtcdCluster;
use bandsox_cluster::Etcd;

fn record(name: &str, node_id: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        node_id: node_id.into(),
        advertise: "http://127.0.0.1:1".into(),
        version: "test".into(),
        capacity: Capacity {
            vcpus: 2,
            mem_mib: 4096,
            vms: 0,
            max_vms: 8,
            backend: "qemu".into(),
        },
        joined_ms: 0,
        updated_ms: 0,
    }
}

async fn up(etcd: &Etcd, name: &str) -> Option<bool> {
    list_nodes(etcd)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.record.name == name)
        .map(|n| n.up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_renew_go_down_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let _cluster = EtcdCluster::start(dir.path(), 19820, 3).unwrap();
    let etcd = Arc::new(Etcd::new(&_cluster.endpoints()).unwrap());

    let a = Membership::join(etcd.clone(), record("a", "id-a"), 2)
        .await
        .unwrap();
    let renewal = a.spawn_renewal(|| Capacity {
        vms: 1,
        ..record("a", "id-a").capacity
    });
    let b = Membership::join(etcd.clone(), record("b", "id-b"), 2)
        .await
        .unwrap();
    let nodes = list_nodes(&etcd).await.unwrap();
    assert_eq!(
        nodes
            .iter()
            .map(|n| (n.record.name.as_str(), n.up))
            .collect::<Vec<_>>(),
        [("a", true), ("b", true)]
    );

    // Another host (another node id) cannot take a live name; the same node id can.
    let e = Membership::join(etcd.clone(), record("a", "id-other"), 2)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "node_name_taken", "{e}");
    assert!(e.hint().is_some());
    assert_eq!(
        up(&etcd, "a").await,
        Some(true),
        "a refused join must not disturb a"
    );

    // The renewal keeps `a` up well past its TTL and reports its capacity.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes = list_nodes(&etcd).await.unwrap();
    let na = nodes.iter().find(|n| n.record.name == "a").unwrap();
    assert!(na.up);
    assert_eq!(na.record.capacity.vms, 1);

    // `b` is not renewed: it goes down within its TTL (plus etcd's expiry granularity) and
    // its record stays.
    let start = Instant::now();
    while up(&etcd, "b").await == Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b never went down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up(&etcd, "b").await, Some(false));
    // Now the name is free for another host... but `b` renewing comes back under its own id.
    b.renew(record("b", "id-b").capacity).await.unwrap();
    assert_eq!(up(&etcd, "b").await, Some(true));

    // A leaving node is down at once.
    b.leave().await.unwrap();
    assert_eq!(up(&etcd, "b").await, Some(false));
    let c = Membership::join(etcd.clone(), record("b", "id-new-host"), 2)
        .await
        .unwrap();
    let nodes = list_nodes(&etcd).await.unwrap();
    let nb = nodes.iter().find(|n| n.record.name == "b").unwrap();
    assert!(nb.up);
    assert_eq!(nb.record.node_id, "id-new-host");
    c.leave().await.unwrap();
    renewal.abort();
}
