//! The step cache of Dockerfile builds: after each `RUN` and `COPY` of a stage that starts
//! from an image, the build VM is snapshotted under a key that chains the base image's digest
//! and every instruction so far (with the content of copied files). A later build finds the
//! longest run of steps it has seen, restores that snapshot (a fraction of a second) and runs
//! only the steps after it.
//!
//! Cache snapshots are ordinary snapshots marked in their metadata: hidden from snapshot
//! lists, at most [`MAX_ENTRIES`] (the oldest go first), and removed with their image.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::manager::Manager;
use crate::store::SnapshotRecord;

/// Metadata key that marks a cache snapshot; its value is the step key.
pub(crate) const CACHE_KEY: &str = "bandsox.build_cache";
/// Cache snapshots kept.
const MAX_ENTRIES: usize = 32;

/// True for a snapshot the step cache made.
pub(crate) fn is_cache(s: &SnapshotRecord) -> bool {
    s.metadata.get(CACHE_KEY).is_some()
}

/// The key after one more step.
pub(super) fn chain(prev: &str, step: &str, extra: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev, step, extra] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

impl Manager {
    /// The cache snapshots by step key (one read of the snapshot table).
    pub(super) fn cached_steps(&self) -> Result<HashMap<String, String>> {
        Ok(self
            .store()
            .list_snapshots()?
            .into_iter()
            .filter_map(|s| {
                let key = s.metadata.get(CACHE_KEY)?.as_str()?.to_owned();
                Some((key, s.id))
            })
            .collect())
    }

    /// Snapshots build VM `vm` under step key `key` and drops the oldest entries beyond
    /// [`MAX_ENTRIES`]. A failure only costs the cache entry.
    pub(super) async fn save_step(self: &Arc<Self>, vm: &str, key: &str) {
        let meta = serde_json::json!({ CACHE_KEY: key });
        if let Err(e) = self
            .snapshot_vm(vm, "bandsox-build-cache", Some(meta))
            .await
        {
            tracing::warn!(vm, error = %e, "cannot record a build step in the cache");
            return;
        }
        let Ok(all) = self.store().list_snapshots() else {
            return;
        };
        // Newest first: everything past the limit goes.
        for old in all.iter().filter(|s| is_cache(s)).skip(MAX_ENTRIES) {
            if let Err(e) = self.delete_snapshot(&old.id) {
                tracing::warn!(snapshot = %old.id, error = %e, "cannot evict a build cache entry");
            }
        }
    }
}
