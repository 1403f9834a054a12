//! Placement: which node a new VM goes to, committed in one etcd transaction.
//!
//! A placement is the key `/bandsox/vms/<id>` holding [`Placement`]. Choosing: read every node
//! and every placement in one transaction, keep the nodes that are up and have a free slot
//! (`max_vms` minus the VMs placed on them), sample two at random and take the one with more
//! slots free ("power of two choices": spreads almost as well as the best node, without every
//! concurrent create piling onto the same one). Committing: one transaction that holds only if
//!
//! - `/bandsox/vms/<id>` does not exist (a VM is never placed twice),
//! - the node's liveness key still holds its node id (it did not go down meanwhile),
//! - `/bandsox/placed/<node>` has not changed since the read (nobody placed a VM on that node
//!   in between, so the free-slot count is still true),
//!
//! and then writes the placement and bumps `/bandsox/placed/<node>`. A failed guard means a
//! concurrent create won: read again and choose again (bounded).

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::etcd::{Compare, CompareResult, Etcd, Kv, Op};
use crate::membership::{NodeRecord, ALIVE_PREFIX, NODES_PREFIX};
use crate::ClusterError;

/// Where placements live.
pub const VMS_PREFIX: &str = "/bandsox/vms/";
/// Per node, changed by every placement on it.
pub const PLACED_PREFIX: &str = "/bandsox/placed/";
/// How many times a placement reads and tries again after losing a race.
pub const MAX_ATTEMPTS: usize = 32;

/// A VM's placement record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub id: String,
    pub node: String,
    /// The VM's name at create time (names are kept per node; this finds the VM by name
    /// from any node).
    #[serde(default)]
    pub name: Option<String>,
    /// Random per placement call: recognises our own commit when a retried transaction finds
    /// the key already written.
    pub token: String,
    pub created_ms: u64,
}

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub node_id: String,
    pub up: bool,
    pub max_vms: u32,
    /// VMs placed on it.
    pub placed: u32,
    /// Modification revision of its `placed` key (0: none yet).
    pub placed_revision: i64,
}

impl Candidate {
    /// Slots left.
    pub fn free(&self) -> u32 {
        self.max_vms.saturating_sub(self.placed)
    }
}

/// Why a VM could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no node is up with room for another VM")]
    NoCapacity,
    #[error("node `{0}` is not part of the cluster")]
    UnknownNode(String),
    #[error("node `{0}` is down")]
    NodeDown(String),
    #[error("node `{0}` has no room for another VM")]
    NodeFull(String),
    #[error("a VM with id `{0}` is already placed")]
    AlreadyPlaced(String),
}

impl PlacementError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoCapacity => "no_capacity",
            Self::UnknownNode(_) => "node_not_found",
            Self::NodeDown(_) => "node_down",
            Self::NodeFull(_) => "node_full",
            Self::AlreadyPlaced(_) => "already_exists",
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::NoCapacity => {
                Some("delete VMs, raise --max-vms on a node, or add a node (bandsox cluster nodes)")
            }
            Self::UnknownNode(_) | Self::NodeDown(_) | Self::NodeFull(_) => {
                Some("see `bandsox cluster nodes`; leave out --node to let the cluster choose")
            }
            Self::AlreadyPlaced(_) => None,
        }
    }
}

/// The choice among `nodes`: the pinned node if it can take a VM, else the better of two
/// random nodes that are up with room.
pub fn choose<'a>(
    nodes: &'a [Candidate],
    pin: Option<&str>,
    rng: &mut impl rand::Rng,
) -> Result<&'a Candidate, PlacementError> {
    if let Some(name) = pin {
        let n = nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| PlacementError::UnknownNode(name.to_owned()))?;
        if !n.up {
            return Err(PlacementError::NodeDown(name.to_owned()));
        }
        if n.free() == 0 {
            return Err(PlacementError::NodeFull(name.to_owned()));
        }
        return Ok(n);
    }
    let open: Vec<&Candidate> = nodes.iter().filter(|n| n.up && n.free() > 0).collect();
    let two: Vec<&&Candidate> = open.choose_multiple(rng, 2).collect();
    two.into_iter()
        .max_by_key(|n| n.free())
        .copied()
        .ok_or(PlacementError::NoCapacity)
}

/// Builds the candidates from one consistent read of nodes, liveness keys, placement
/// counters and placements.
pub fn candidates(nodes: &[Kv], alive: &[Kv], placed: &[Kv], vms: &[Kv]) -> Vec<Candidate> {
    let mut out = Vec::with_capacity(nodes.len());
    for kv in nodes {
        let Ok(r) = serde_json::from_slice::<NodeRecord>(&kv.value) else {
            continue;
        };
        let alive_key = format!("{ALIVE_PREFIX}{}", r.name);
        let placed_key = format!("{PLACED_PREFIX}{}", r.name);
        let up = alive
            .iter()
            .any(|a| a.key == alive_key && a.value == r.node_id.as_bytes());
        let count = vms
            .iter()
            .filter_map(|v| serde_json::from_slice::<Placement>(&v.value).ok())
            .filter(|p| p.node == r.name)
            .count() as u32;
        let placed_revision = placed
            .iter()
            .find(|p| p.key == placed_key)
            .map_or(0, |p| p.mod_revision);
        out.push(Candidate {
            name: r.name,
            node_id: r.node_id,
            up,
            max_vms: r.capacity.max_vms,
            placed: count,
            placed_revision,
        });
    }
    out
}

/// Reads what placement needs in one transaction (one revision).
pub async fn read_candidates(etcd: &Etcd) -> Result<(Vec<Candidate>, Vec<Kv>), ClusterError> {
    let t = etcd
        .txn(
            &[],
            &[
                Op::GetPrefix(NODES_PREFIX.into()),
                Op::GetPrefix(ALIVE_PREFIX.into()),
                Op::GetPrefix(PLACED_PREFIX.into()),
                Op::GetPrefix(VMS_PREFIX.into()),
            ],
            &[],
        )
        .await?;
    let [nodes, alive, placed, vms] = t.reads.as_slice() else {
        return Err(ClusterError::Decode {
            what: "the placement read",
            detail: "etcd answered with the wrong number of reads".into(),
        });
    };
    Ok((candidates(nodes, alive, placed, vms), vms.clone()))
}

/// Places VM `id` (on `pin` if given) and commits the placement; returns it.
pub async fn place(
    etcd: &Etcd,
    id: &str,
    pin: Option<&str>,
    name: Option<&str>,
) -> Result<Result<Placement, PlacementError>, ClusterError> {
    let token = crate::membership::random_hex(8);
    let vm_key = format!("{VMS_PREFIX}{id}");
    for attempt in 0..MAX_ATTEMPTS {
        let (nodes, vms) = read_candidates(etcd).await?;
        if let Some(existing) = vms.iter().find(|v| v.key == vm_key) {
            return Ok(match serde_json::from_slice::<Placement>(&existing.value) {
                Ok(p) if p.token == token => Ok(p),
                _ => Err(PlacementError::AlreadyPlaced(id.to_owned())),
            });
        }
        let node = match choose(&nodes, pin, &mut rand::thread_rng()) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        let placement = Placement {
            id: id.to_owned(),
            node: node.name.clone(),
            name: name.map(str::to_owned),
            token: token.clone(),
            created_ms: crate::membership::now_ms(),
        };
        let placed_key = format!("{PLACED_PREFIX}{}", node.name);
        let t = etcd
            .txn(
                &[
                    Compare::CreateRevision(vm_key.clone(), CompareResult::Equal, 0),
                    Compare::Value(
                        format!("{ALIVE_PREFIX}{}", node.name),
                        CompareResult::Equal,
                        node.node_id.as_bytes().to_vec(),
                    ),
                    Compare::ModRevision(
                        placed_key.clone(),
                        CompareResult::Equal,
                        node.placed_revision,
                    ),
                ],
                &[
                    Op::Put {
                        key: vm_key.clone(),
                        value: serde_json::to_vec(&placement).unwrap_or_default(),
                        lease: None,
                    },
                    Op::Put {
                        key: placed_key,
                        value: id.as_bytes().to_vec(),
                        lease: None,
                    },
                ],
                &[],
            )
            .await?;
        if t.succeeded {
            return Ok(Ok(placement));
        }
        tracing::debug!(id, node = %node.name, attempt, "placement lost a race; choosing again");
        // Spread the retries of concurrent losers.
        let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0..20u64);
        tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
    }
    Err(ClusterError::Unavailable {
        detail: format!("placement lost {MAX_ATTEMPTS} races in a row"),
    })
}

/// Every placement, by VM id.
pub async fn placements(etcd: &Etcd) -> Result<Vec<Placement>, ClusterError> {
    let (kvs, _) = etcd.list(VMS_PREFIX).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// The placement of VM `id`, if any.
pub async fn placement(etcd: &Etcd, id: &str) -> Result<Option<Placement>, ClusterError> {
    Ok(match etcd.get(&format!("{VMS_PREFIX}{id}")).await? {
        Some(kv) => serde_json::from_slice(&kv.value).ok(),
        None => None,
    })
}

/// Forgets VM `id`'s placement (its VM was deleted, or its create failed).
pub async fn release(etcd: &Etcd, id: &str) -> Result<(), ClusterError> {
    etcd.delete(&format!("{VMS_PREFIX}{id}")).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cand(name: &str, up: bool, max: u32, placed: u32) -> Candidate {
        Candidate {
            name: name.into(),
            node_id: format!("id-{name}"),
            up,
            max_vms: max,
            placed,
            placed_revision: 0,
        }
    }

    #[test]
    fn choose_skips_down_and_full_nodes_and_prefers_room() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let nodes = [
            cand("a", false, 10, 0),
            cand("b", true, 4, 4),
            cand("c", true, 4, 1),
        ];
        for _ in 0..50 {
            assert_eq!(choose(&nodes, None, &mut rng).unwrap().name, "c");
        }
        // Of two open nodes the one with more room wins every time (both are sampled).
        let nodes = [cand("a", true, 8, 7), cand("b", true, 8, 2)];
        for _ in 0..50 {
            assert_eq!(choose(&nodes, None, &mut rng).unwrap().name, "b");
        }
        let full = [cand("a", true, 1, 1), cand("b", false, 9, 0)];
        assert_eq!(
            choose(&full, None, &mut rng).unwrap_err(),
            PlacementError::NoCapacity
        );
        assert_eq!(
            choose(&[], None, &mut rng).unwrap_err(),
            PlacementError::NoCapacity
        );
    }

    #[test]
    fn best_of_two_spreads_over_many_nodes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut nodes: Vec<Candidate> = (0..10)
            .map(|i| cand(&format!("n{i}"), true, 100, 0))
            .collect();
        for _ in 0..200 {
            let name = choose(&nodes, None, &mut rng).unwrap().name.clone();
            nodes.iter_mut().find(|n| n.name == name).unwrap().placed += 1;
        }
        let (min, max) = (
            nodes.iter().map(|n| n.placed).min().unwrap(),
            nodes.iter().map(|n| n.placed).max().unwrap(),
        );
        assert!(max - min <= 6, "uneven: {nodes:?}");
    }

    #[test]
    fn a_pin_is_checked_not_overridden() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let nodes = [
            cand("a", true, 4, 0),
            cand("b", false, 4, 0),
            cand("c", true, 1, 1),
        ];
        assert_eq!(choose(&nodes, Some("a"), &mut rng).unwrap().name, "a");
        assert_eq!(
            choose(&nodes, Some("b"), &mut rng).unwrap_err(),
            PlacementError::NodeDown("b".into())
        );
        assert_eq!(
            choose(&nodes, Some("c"), &mut rng).unwrap_err(),
            PlacementError::NodeFull("c".into())
        );
        let e = choose(&nodes, Some("zz"), &mut rng).unwrap_err();
        assert_eq!(e.code(), "node_not_found");
        assert!(e.hint().is_some());
    }
}
