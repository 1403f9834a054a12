//! VM networking on the core side: the address pool (leases persisted in SQLite, so a VM
//! keeps its address across restarts and no two VMs ever share one), and setting up or
//! tearing down a VM's namespace around its VMM's life. The plumbing itself is
//! [`bandsox_net`].

use std::net::Ipv4Addr;

use bandsox_net::{Lease, VmNet};
use rusqlite::{params, OptionalExtension};

use crate::error::{CoreError, Result};
use crate::manager::Manager;

/// Whether and how a new VM is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetChoice {
    /// No NIC at all.
    None,
    /// A NIC in a namespace with no way out (a networked snapshot restored with networking
    /// off: its devices must match the saved state).
    Isolated,
    /// A NIC with a lease: reachable from the host, NATed egress.
    Enabled,
}

/// The network of one VM as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmNetwork {
    pub lease: Option<Lease>,
}

impl VmNetwork {
    /// The address the host reaches the VM at (`network_config.guest_ip`).
    pub fn host_side_ip(&self) -> Option<Ipv4Addr> {
        self.lease.map(Lease::vm_ip)
    }

    pub fn config_json(&self, vm_id: &str) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.lease.is_some(),
            "guest_ip": self.lease.map(|l| l.vm_ip().to_string()),
            "host_ip": self.lease.map(|l| l.host_ip().to_string()),
            "host_interface": self.lease.map(Lease::host_if),
            "vm_internal_ip": bandsox_net::GUEST_IP.to_string(),
            "gateway": bandsox_net::GATEWAY_IP.to_string(),
            "guest_mac": bandsox_net::GUEST_MAC,
            "tap_name": bandsox_net::TAP_NAME,
            "netns": bandsox_net::netns_name(vm_id).ok(),
        })
    }
}

fn net_err(e: bandsox_net::NetError) -> CoreError {
    CoreError::Network(e.to_string())
}

impl Manager {
    /// Records the network of a new VM (its record must exist): a free lease for
    /// [`NetChoice::Enabled`] (the lowest unused index).
    pub(crate) fn assign_network(&self, vm_id: &str, choice: NetChoice) -> Result<()> {
        let conn = self.store().conn();
        match choice {
            NetChoice::None => Ok(()),
            NetChoice::Isolated => {
                conn.execute(
                    "INSERT INTO vm_networks (vm_id, lease) VALUES (?1, NULL)",
                    params![vm_id],
                )?;
                Ok(())
            }
            NetChoice::Enabled => {
                let tx = conn.unchecked_transaction()?;
                let mut used: Vec<u32> = {
                    let mut st = tx.prepare(
                        "SELECT lease FROM vm_networks WHERE lease IS NOT NULL ORDER BY lease",
                    )?;
                    let rows = st.query_map([], |r| r.get::<_, u32>(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                used.sort_unstable();
                // Host-wide: other servers on this host hold leases too.
                let owner = self.storage().vm_dir(vm_id)?;
                let lease = bandsox_net::claim_lease(&used, &owner).map_err(|e| match e {
                    bandsox_net::NetError::PoolExhausted => CoreError::LimitReached(e.to_string()),
                    e => net_err(e),
                })?;
                let inserted = tx.execute(
                    "INSERT INTO vm_networks (vm_id, lease) VALUES (?1, ?2)",
                    params![vm_id, lease.index],
                );
                if let Err(e) = inserted {
                    bandsox_net::release_lease(lease, &owner);
                    return Err(e.into());
                }
                tx.commit()?;
                Ok(())
            }
        }
    }

    /// The recorded network of a VM; `None` when it has no NIC.
    pub fn vm_network(&self, vm_id: &str) -> Result<Option<VmNetwork>> {
        let row: Option<Option<u32>> = self
            .store()
            .conn()
            .query_row(
                "SELECT lease FROM vm_networks WHERE vm_id = ?1",
                params![vm_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match row {
            None => None,
            Some(l) => Some(VmNetwork {
                lease: l.map(Lease::new).transpose().map_err(net_err)?,
            }),
        })
    }

    /// Records whether a snapshot's VM had a NIC (restores must recreate it).
    pub(crate) fn set_snapshot_nic(&self, snapshot_id: &str, nic: bool) -> Result<()> {
        self.store().conn().execute(
            "INSERT OR REPLACE INTO snapshot_networks (snapshot_id, nic) VALUES (?1, ?2)",
            params![snapshot_id, nic],
        )?;
        Ok(())
    }

    pub(crate) fn snapshot_has_nic(&self, snapshot_id: &str) -> Result<bool> {
        let nic: Option<bool> = self
            .store()
            .conn()
            .query_row(
                "SELECT nic FROM snapshot_networks WHERE snapshot_id = ?1",
                params![snapshot_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(nic.unwrap_or(false))
    }

    /// Creates the VM's namespace, TAP, veth and rules (replacing leftovers).
    pub(crate) async fn net_up(&self, vm_id: &str) -> Result<()> {
        let Some(net) = self.vm_network(vm_id)? else {
            return Ok(());
        };
        let spec = VmNet {
            vm_id: vm_id.to_owned(),
            lease: net.lease,
        };
        tokio::task::spawn_blocking(move || bandsox_net::setup(&spec))
            .await
            .map_err(|e| CoreError::Network(e.to_string()))?
            .map_err(net_err)
    }

    /// Removes the VM's namespace and host interface. Errors are logged: teardown runs on
    /// paths that must finish (stop, delete, failure).
    pub(crate) async fn net_down(&self, vm_id: &str) {
        let Ok(Some(net)) = self.vm_network(vm_id) else {
            return;
        };
        let id = vm_id.to_owned();
        let r = tokio::task::spawn_blocking(move || bandsox_net::teardown(&id, net.lease)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(vm = %vm_id, error = %e, "network teardown failed");
        }
    }

    /// Blocking variant of [`Manager::net_down`] for synchronous recovery paths.
    pub(crate) fn net_down_blocking(&self, vm_id: &str) {
        let Ok(Some(net)) = self.vm_network(vm_id) else {
            return;
        };
        if let Err(e) = bandsox_net::teardown(vm_id, net.lease) {
            tracing::warn!(vm = %vm_id, error = %e, "network teardown failed");
        }
    }

    /// The address and port to reach `port` of a running, networked VM at.
    pub async fn guest_endpoint(&self, vm_id: &str, port: u16) -> Result<std::net::SocketAddrV4> {
        let vm = self.get_vm(vm_id)?;
        if vm.status != crate::store::VmStatus::Running {
            return Err(CoreError::Conflict(format!(
                "VM {vm_id} is {}, not running",
                vm.status
            )));
        }
        let ip = self
            .vm_network(vm_id)?
            .and_then(|n| n.host_side_ip())
            .ok_or_else(|| {
                CoreError::Conflict(format!(
                    "VM {vm_id} has networking disabled (create it with enable_networking=true)"
                ))
            })?;
        Ok(std::net::SocketAddrV4::new(ip, port))
    }
}

/// Removes bandsox namespaces, host interfaces and (when nothing is live) the host table that
/// belong to no live VM of the storage root at `db` (a VM is live when it is recorded
/// running, paused or creating and its VMM process exists). A namespace with any process
/// inside is always kept, whichever storage root it belongs to. Safe while a server runs.
pub fn cleanup_host(db: &std::path::Path) -> Result<bandsox_net::Cleaned> {
    let store = crate::store::Store::open(db)?;
    let mut live_ids = std::collections::HashSet::new();
    let mut live_leases = std::collections::HashSet::new();
    // Warm-pool VMs are live too (they are not user VMs, so list_vms leaves them out).
    let pool = store.list_pool_vms()?.into_iter().map(|(vm, _)| vm);
    for vm in store.list_vms()?.into_iter().chain(pool) {
        use crate::store::VmStatus as S;
        let alive = matches!(vm.status, S::Running | S::Paused | S::Creating)
            && vm.pid.is_some_and(bandsox_vmm::process_alive);
        if !alive {
            continue;
        }
        let lease: Option<Option<u32>> = store
            .conn()
            .query_row(
                "SELECT lease FROM vm_networks WHERE vm_id = ?1",
                params![vm.id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(Some(l)) = lease {
            live_leases.insert(l);
        }
        live_ids.insert(vm.id);
    }
    bandsox_net::cleanup(&|id| live_ids.contains(id), &|l| live_leases.contains(&l))
        .map_err(net_err)
}
