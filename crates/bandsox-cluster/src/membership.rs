//! Node membership. Each node keeps two keys:
//!
//! - `/bandsox/nodes/<name>`: its record (address, capacity, ...), with no lease, so a node
//!   that is down is still listed (as down) and its VMs can be shown as `lost`;
//! - `/bandsox/alive/<name>`: its node id, under a lease of `ttl` seconds renewed every
//!   `ttl / 3`. A node is up while this key exists and holds the record's node id.
//!
//! The node id is kept in the storage root, so the same host restarted (even before its old
//! lease expired) takes its name back, while another host with the same `--node-name` is
//! refused until the name's lease is gone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::etcd::{Compare, CompareResult, Etcd, Op};
use crate::ClusterError;

/// Where node records live.
pub const NODES_PREFIX: &str = "/bandsox/nodes/";
/// Where liveness keys live.
pub const ALIVE_PREFIX: &str = "/bandsox/alive/";
/// Default lease TTL in seconds.
pub const DEFAULT_LEASE_TTL_S: u64 = 5;

/// What a node can hold, as it last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Host CPUs.
    pub vcpus: u32,
    /// Host memory in MiB.
    pub mem_mib: u64,
    /// VMs that exist on the node (any state).
    pub vms: u32,
    /// Most VMs the node accepts (`--max-vms`).
    pub max_vms: u32,
    /// The VMM backend (`qemu`, `firecracker`).
    pub backend: String,
}

/// A node's record in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// The node's id (from its storage root).
    pub node_id: String,
    /// Where other nodes reach its API, e.g. `http://10.0.0.5:8000`.
    pub advertise: String,
    /// bandsox version.
    pub version: String,
    pub capacity: Capacity,
    /// When the node last (re)registered, milliseconds since the epoch.
    pub joined_ms: u64,
    /// When the record was last written, milliseconds since the epoch.
    pub updated_ms: u64,
}

/// A node as the cluster sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub record: NodeRecord,
    /// Its liveness key exists (its lease is being renewed).
    pub up: bool,
    /// etcd's modification revision of the record.
    pub mod_revision: i64,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks a `--node-name`: 1 to 63 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Invalid(format!(
            "node name `{name}` must be 1 to 63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// Checks `--advertise`: an `http://host:port` URL without a path.
pub fn validate_advertise(url: &str) -> Result<String, ClusterError> {
    let u = url.trim_end_matches('/');
    let rest = u.strip_prefix("http://").unwrap_or("");
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || !rest.contains(':') {
        return Err(ClusterError::Invalid(format!(
            "--advertise `{url}` must be http://host:port, the address other nodes reach this node's API under"
        )));
    }
    Ok(u.to_owned())
}

/// The node id kept in `<root>/cluster-node-id`, created (0600) on first use.
pub fn node_id(root: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = root.join("cluster-node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = random_hex(16);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(id.as_bytes())?;
    f.sync_all()?;
    Ok(id)
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_record(value: &[u8]) -> Result<NodeRecord, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Decode {
        what: "a node record",
        detail: e.to_string(),
    })
}

/// Every node record and whether it is up, sorted by name.
pub async fn list_nodes(etcd: &Etcd) -> Result<Vec<NodeStatus>, ClusterError> {
    let txn = etcd
        .txn(
            &[],
            &[
                Op::GetPrefix(NODES_PREFIX.into()),
                Op::GetPrefix(ALIVE_PREFIX.into()),
            ],
            &[],
        )
        .await?;
    let (records, alive) = match txn.reads.as_slice() {
        [r, a] => (r, a),
        _ => {
            return Err(ClusterError::Decode {
                what: "the node list",
                detail: "etcd answered with the wrong number of reads".into(),
            })
        }
    };
    let mut out = Vec::with_capacity(records.len());
    for kv in records {
        let record = match decode_record(&kv.value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "skipping an unreadable node record");
                continue;
            }
        };
        let alive_key = format!("{ALIVE_PREFIX}{}", record.name);
        let up = alive
            .iter()
            .any(|a| a.key == alive_key && a.value == record.node_id.as_bytes());
        out.push(NodeStatus {
            record,
            up,
            mod_revision: kv.mod_revision,
        });
    }
    Ok(out)
}

/// This node's membership: registers, renews its lease, re-registers after it lost it.
#[derive(Debug)]
pub struct Membership {
    etcd: Arc<Etcd>,
    ttl_s: u64,
    record: Mutex<NodeRecord>,
    lease: Mutex<i64>,
}

impl Membership {
    /// Registers `record` under a new lease of `ttl_s` seconds. Refused with
    /// [`ClusterError::NameTaken`] when another live node (another node id) has the name.
    pub async fn join(
        etcd: Arc<Etcd>,
        mut record: NodeRecord,
        ttl_s: u64,
    ) -> Result<Arc<Self>, ClusterError> {
        validate_name(&record.name)?;
        let ttl_s = ttl_s.max(1);
        record.joined_ms = now_ms();
        let lease = register(&etcd, &record, ttl_s).await?;
        Ok(Arc::new(Self {
            etcd,
            ttl_s,
            record: Mutex::new(record),
            lease: Mutex::new(lease),
        }))
    }

    /// The lease TTL in seconds.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s)
    }

    /// The store this node registered with.
    pub fn etcd(&self) -> &Arc<Etcd> {
        &self.etcd
    }

    /// This node's name.
    pub async fn name(&self) -> String {
        self.record.lock().await.name.clone()
    }

    /// One renewal round: renews the lease (re-registering when it expired, e.g. after the
    /// process was stopped for longer than the TTL) and writes the record when `capacity`
    /// changed.
    pub async fn renew(&self, capacity: Capacity) -> Result<(), ClusterError> {
        let mut lease = self.lease.lock().await;
        let mut record = self.record.lock().await;
        match self.etcd.keep_alive(*lease).await? {
            Some(_) => {
                if record.capacity != capacity {
                    record.capacity = capacity;
                    record.updated_ms = now_ms();
                    let value = serde_json::to_vec(&*record).unwrap_or_default();
                    self.etcd
                        .put(&format!("{NODES_PREFIX}{}", record.name), &value, None)
                        .await?;
                }
            }
            None => {
                tracing::warn!(node = %record.name, "the cluster lease expired; registering again");
                record.capacity = capacity;
                record.joined_ms = now_ms();
                *lease = register(&self.etcd, &record, self.ttl_s).await?;
                tracing::info!(node = %record.name, "registered with the cluster again");
            }
        }
        Ok(())
    }

    /// Renews every `ttl / 3` until the returned task is aborted; `capacity` is asked for
    /// the node's current capacity each round.
    pub fn spawn_renewal(
        self: &Arc<Self>,
        capacity: impl Fn() -> Capacity + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let period = (me.ttl() / 3).max(Duration::from_millis(300));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.renew(capacity()).await {
                    tracing::warn!(error = %e, "cannot renew the cluster membership");
                }
            }
        })
    }

    /// Leaves: revokes the lease, so the node shows as down at once (its record stays).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let lease = *self.lease.lock().await;
        self.etcd.revoke(lease).await
    }
}

/// Grants a lease and writes the liveness key and the record, unless another node id holds
/// the name. Returns the lease.
async fn register(etcd: &Etcd, record: &NodeRecord, ttl_s: u64) -> Result<i64, ClusterError> {
    let lease = etcd.grant(ttl_s).await?;
    let alive_key = format!("{ALIVE_PREFIX}{}", record.name);
    let node_key = format!("{NODES_PREFIX}{}", record.name);
    let mut record = record.clone();
    record.updated_ms = now_ms();
    let value = serde_json::to_vec(&record).unwrap_or_default();
    let writes = [
        Op::Put {
            key: alive_key.clone(),
            value: record.node_id.as_bytes().to_vec(),
            lease: Some(lease),
        },
        Op::Put {
            key: node_key,
            value,
            lease: None,
        },
    ];
    // Free name, or held by this very node id (a restart before the old lease expired, or a
    // retried request): take it.
    for guard in [
        Compare::CreateRevision(alive_key.clone(), CompareResult::Equal, 0),
        Compare::Value(
            alive_key.clone(),
            CompareResult::Equal,
            record.node_id.as_bytes().to_vec(),
        ),
    ] {
        if etcd.txn(&[guard], &writes, &[]).await?.succeeded {
            return Ok(lease);
        }
    }
    let _ = etcd.revoke(lease).await;
    Err(ClusterError::NameTaken(record.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_plain_labels() {
        for ok in ["a", "node-1", "host.example_2", "0"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-a", "A", "a/b", "a b", "..", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn advertise_is_an_http_origin() {
        assert_eq!(
            validate_advertise("http://10.0.0.5:8000/").unwrap(),
            "http://10.0.0.5:8000"
        );
        for bad in ["10.0.0.5:8000", "http://h", "http://h:1/api", "https://h:1"] {
            assert!(validate_advertise(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_id_is_stable_per_root_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = node_id(dir.path()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(node_id(dir.path()).unwrap(), a);
        let mode = std::fs::metadata(dir.path().join("cluster-node-id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(node_id(other.path()).unwrap(), a);
    }
}
