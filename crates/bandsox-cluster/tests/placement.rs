//! Placement against a real 3-member etcd cluster. Ports 19830-19835.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bandsox_cluster::membership::{Capacity, Membership, NodeRecord};
use bandsox_cluster::placement::{self, PlacementError};
use bandsox_cluster::testkit::EtcdCluster;
use bandsox_cluster::Etcd;

fn record(name: &str, max_vms: u32) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        node_id: format!("id-{name}"),
        advertise: "http://127.0.0.1:1".into(),
        version: "test".into(),
        capacity: Capacity {
            vcpus: 2,
            mem_mib: 4096,
            vms: 0,
            max_vms,
            backend: "qemu".into(),
        },
        joined_ms: 0,
        updated_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_double_place_or_overfill() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 19830, 3).unwrap();
    let etcd = Arc::new(Etcd::new(&cluster.endpoints()).unwrap());
    let _a = Membership::join(etcd.clone(), record("a", 8), 30)
        .await
        .unwrap();
    let _b = Membership::join(etcd.clone(), record("b", 8), 30)
        .await
        .unwrap();
    let down = Membership::join(etcd.clone(), record("down", 50), 30)
        .await
        .unwrap();
    down.leave().await.unwrap();

    // 20 creates at once for 16 slots; each id placed by two racing callers.
    let mut tasks = Vec::new();
    for i in 0..20 {
        for _ in 0..2 {
            let etcd = etcd.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("vm{i:02}");
                (
                    id.clone(),
                    placement::place(&etcd, &id, None, None).await.unwrap(),
                )
            }));
        }
    }
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    let (mut no_room, mut twice) = (0, 0);
    for t in tasks {
        let (id, r) = t.await.unwrap();
        match r {
            Ok(p) => {
                assert_eq!(p.id, id);
                assert!(placed.insert(id, p.node).is_none(), "one id placed twice");
            }
            Err(PlacementError::NoCapacity) => no_room += 1,
            Err(PlacementError::AlreadyPlaced(_)) => twice += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(placed.len(), 16, "{placed:?}");
    // Every id was asked for twice: each placed id refused its second caller, and each id
    // that found no room did so for both callers, or for one after the other placed it.
    assert_eq!(twice + no_room, 24, "{twice} {no_room}");
    let on = |n: &str| placed.values().filter(|v| v.as_str() == n).count();
    assert_eq!((on("a"), on("b"), on("down")), (8, 8, 0));
    // etcd holds exactly what the callers were told.
    let stored: BTreeMap<String, String> = placement::placements(&etcd)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.node))
        .collect();
    assert_eq!(stored, placed);

    // A pin goes where it is told, or says why not.
    placement::release(&etcd, "vm00").await.unwrap();
    let freed = placed["vm00"].clone();
    let p = placement::place(&etcd, "pinned", Some(&freed), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.node, freed);
    let other = if freed == "a" { "b" } else { "a" };
    assert_eq!(
        placement::place(&etcd, "x1", Some(other), None)
            .await
            .unwrap(),
        Err(PlacementError::NodeFull(other.into()))
    );
    assert_eq!(
        placement::place(&etcd, "x2", Some("down"), None)
            .await
            .unwrap(),
        Err(PlacementError::NodeDown("down".into()))
    );
    assert_eq!(
        placement::place(&etcd, "x3", Some("nope"), None)
            .await
            .unwrap(),
        Err(PlacementError::UnknownNode("nope".into()))
    );
    assert_eq!(
        placement::placement(&etcd, "pinned")
            .await
            .unwrap()
            .unwrap()
            .node,
        freed
    );
    assert!(placement::placement(&etcd, "x1").await.unwrap().is_none());
}
