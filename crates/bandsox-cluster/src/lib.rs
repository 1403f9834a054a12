//! Multi-host coordination for `bandsox serve --cluster`: an etcd v3 client over etcd's JSON
//! gateway ([`etcd`]), node membership under a lease ([`membership`]) and VM placement
//! committed in one etcd transaction ([`placement`]). Nothing here runs without `--cluster`:
//! a single host stays SQLite-only.

pub mod error;
pub mod etcd;
pub mod membership;
pub mod placement;
pub mod testkit;

pub use error::ClusterError;
pub use etcd::{Compare, CompareResult, Etcd, Kv, Op, TxnResponse};
pub use membership::{Capacity, Membership, NodeRecord, NodeStatus};
