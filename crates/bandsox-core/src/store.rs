//! Persistent state in SQLite (`<storage>/bandsox.db`): VMs and images.
//!
//! The schema is versioned with `PRAGMA user_version`; [`Store::open`] migrates forward.
//! Calls are short and synchronous behind a mutex; the database runs in WAL mode so readers
//! never wait for a writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vms (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    image         TEXT NOT NULL,
    image_digest  TEXT NOT NULL,
    status        TEXT NOT NULL,
    vcpu          INTEGER NOT NULL,
    mem_mib       INTEGER NOT NULL,
    disk_size_mib INTEGER NOT NULL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    pid           INTEGER,
    error         TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    env_vars      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX vms_created ON vms(created_at DESC);
CREATE TABLE images (
    reference   TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    config      TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL
);
"#,
    r#"
ALTER TABLE vms ADD COLUMN restored_from TEXT;
ALTER TABLE vms ADD COLUMN expires_at REAL;
ALTER TABLE vms ADD COLUMN timeout_action TEXT NOT NULL DEFAULT 'stop';
CREATE TABLE snapshots (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    source_vm_id  TEXT NOT NULL,
    image         TEXT NOT NULL,
    image_digest  TEXT NOT NULL,
    vcpu          INTEGER NOT NULL,
    mem_mib       INTEGER NOT NULL,
    disk_size_mib INTEGER NOT NULL,
    size_bytes    INTEGER NOT NULL,
    created_at    REAL NOT NULL,
    metadata      TEXT NOT NULL DEFAULT '{}',
    env_vars      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX snapshots_created ON snapshots(created_at DESC);
"#,
    r#"
CREATE TABLE auth_settings (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    password_hash TEXT NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,
    created_at   REAL NOT NULL,
    last_used_at REAL
);
CREATE TABLE sessions (
    token_hash  BLOB PRIMARY KEY,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);
"#,
    // The VMM backend each VM runs under (rows from before this are QEMU VMs).
    r#"
ALTER TABLE vms ADD COLUMN vmm TEXT NOT NULL DEFAULT 'qemu';
"#,
    r#"
CREATE TABLE vm_networks (
    vm_id  TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    lease  INTEGER UNIQUE
);
CREATE TABLE snapshot_networks (
    snapshot_id  TEXT PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
    nic          INTEGER NOT NULL
);
"#,
    // Why and when a VM last stopped (rows from before this have neither).
    r#"
ALTER TABLE vms ADD COLUMN stop_reason TEXT;
ALTER TABLE vms ADD COLUMN stopped_at REAL;
"#,
    // Warm-pool VMs: restored from a template and paused, not user VMs (never listed,
    // counted or found by id) until a create claims one.
    r#"
CREATE TABLE pool_vms (
    vm_id     TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    template  TEXT NOT NULL
);
"#,
];

/// Lifecycle state of a VM. Transitions: `creating -> running <-> paused -> stopped`,
/// any -> `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    Creating,
    Running,
    Paused,
    Stopped,
    Failed,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "stopped" => Self::Stopped,
            _ => Self::Failed,
        }
    }
}

impl std::fmt::Display for VmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub status: VmStatus,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    /// Unix seconds.
    pub created_at: f64,
    pub updated_at: f64,
    /// VMM process id while the VM runs.
    pub pid: Option<u32>,
    /// Why the VM failed, when it did.
    pub error: Option<String>,
    pub metadata: serde_json::Value,
    pub env_vars: BTreeMap<String, String>,
    /// Snapshot this VM was restored from.
    pub restored_from: Option<String>,
    /// Unix seconds at which `timeout_action` runs; `None` = no timeout.
    pub expires_at: Option<f64>,
    pub timeout_action: TimeoutAction,
    /// VMM backend the VM runs under (`firecracker`, `qemu`).
    pub vmm: String,
    /// Why the VM last left the running state (`None` while it runs, and for VMs stopped
    /// before this was recorded).
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    /// Unix seconds at which it did.
    #[serde(default)]
    pub stopped_at: Option<f64>,
}

/// Why a VM is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Stopped or paused through the API or CLI.
    User,
    /// Its timeout expired (the action was `stop` or `pause`).
    Timeout,
    /// The guest powered off or rebooted by itself (the VMM exited with status 0; a guest
    /// kernel panic reboots, so it lands here too).
    GuestPoweroff,
    /// The VMM process died (killed, crashed or exited with an error).
    VmmExited,
    /// The server restarted and could not take the VM over.
    HostRestart,
    /// `start` could not boot it.
    BootFailed,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Timeout => "timeout",
            Self::GuestPoweroff => "guest_poweroff",
            Self::VmmExited => "vmm_exited",
            Self::HostRestart => "host_restart",
            Self::BootFailed => "boot_failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => Self::User,
            "timeout" => Self::Timeout,
            "guest_poweroff" => Self::GuestPoweroff,
            "vmm_exited" => Self::VmmExited,
            "host_restart" => Self::HostRestart,
            "boot_failed" => Self::BootFailed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a VM when its timeout expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    #[default]
    Stop,
    Pause,
    Delete,
}

impl TimeoutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Pause => "pause",
            Self::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stop" => Self::Stop,
            "pause" => Self::Pause,
            "delete" => Self::Delete,
            _ => return None,
        })
    }
}

/// One snapshot as stored. Its files live in `snapshots/<id>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub source_vm_id: String,
    pub image: String,
    pub image_digest: String,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    pub size_bytes: u64,
    pub created_at: f64,
    pub metadata: serde_json::Value,
    pub env_vars: BTreeMap<String, String>,
}

/// One image as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageRecord {
    pub reference: String,
    pub digest: String,
    pub size_bytes: u64,
    pub config: serde_json::Value,
    pub created_at: f64,
}

/// The database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(CoreError::Conflict(format!(
                "database schema version {version} is newer than this bandsox supports ({}); upgrade bandsox",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_vm(&self, vm: &VmRecord) -> Result<()> {
        insert_vm_row(&self.conn(), vm)
    }

    /// Records a warm-pool VM of `template` (its row and its pool membership at once, so it
    /// is never seen as a user VM).
    pub fn insert_pool_vm(&self, vm: &VmRecord, template: &str) -> Result<()> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        insert_vm_row(&tx, vm)?;
        tx.execute(
            "INSERT INTO pool_vms (vm_id, template) VALUES (?1, ?2)",
            params![vm.id, template],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every warm-pool VM with its template, oldest first.
    pub fn list_pool_vms(&self) -> Result<Vec<(VmRecord, String)>> {
        let conn = self.conn();
        let cols = VM_COLUMNS
            .split(", ")
            .map(|c| format!("v.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {cols}, p.template FROM vms v JOIN pool_vms p ON p.vm_id = v.id ORDER BY v.created_at, v.id"
        ))?;
        let n = VM_COLUMNS.split(',').count();
        let rows = stmt.query_map([], |r| Ok((vm_from_row(r)?, r.get::<_, String>(n)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Takes a paused warm-pool VM of `template` out of the pool and makes it a user VM
    /// (`creating`, with these labels): its id, or `None` when the pool has none ready.
    pub(crate) fn claim_pool_vm(
        &self,
        template: &str,
        vm: &VmRecord,
        max_vms: usize,
    ) -> Result<Option<String>> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        let users: i64 = tx.query_row(USER_VM_COUNT, [], |r| r.get(0))?;
        if usize::try_from(users).unwrap_or(usize::MAX) >= max_vms {
            return Err(CoreError::LimitReached(format!(
                "this server allows at most {max_vms} VMs"
            )));
        }
        let id: Option<String> = tx
            .query_row(
                "SELECT p.vm_id FROM pool_vms p JOIN vms v ON v.id = p.vm_id
                 WHERE p.template = ?1 AND v.status = 'paused' ORDER BY v.created_at LIMIT 1",
                [template],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        tx.execute("DELETE FROM pool_vms WHERE vm_id = ?1", [&id])?;
        tx.execute(
            "UPDATE vms SET name = ?2, image = ?3, status = 'creating', created_at = ?4,
                 updated_at = ?4, metadata = ?5, env_vars = ?6, timeout_action = ?7 WHERE id = ?1",
            params![
                id,
                vm.name,
                vm.image,
                vm.created_at,
                vm.metadata.to_string(),
                serde_json::to_string(&vm.env_vars).unwrap_or_else(|_| "{}".into()),
                vm.timeout_action.as_str(),
            ],
        )?;
        tx.commit()?;
        Ok(Some(id))
    }

    /// A VM by id, warm-pool VMs included.
    pub(crate) fn get_any_vm(&self, id: &str) -> Result<Option<VmRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"),
                [id],
                vm_from_row,
            )
            .optional()?)
    }
}

fn insert_vm_row(conn: &Connection, vm: &VmRecord) -> Result<()> {
    {
        conn.execute(
            "INSERT INTO vms (id, name, image, image_digest, status, vcpu, mem_mib, disk_size_mib,
                              created_at, updated_at, pid, error, metadata, env_vars,
                              restored_from, expires_at, timeout_action, vmm, stop_reason,
                              stopped_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19, ?20)",
            params![
                vm.id,
                vm.name,
                vm.image,
                vm.image_digest,
                vm.status.as_str(),
                vm.vcpu,
                vm.mem_mib,
                vm.disk_size_mib,
                vm.created_at,
                vm.updated_at,
                vm.pid,
                vm.error,
                vm.metadata.to_string(),
                serde_json::to_string(&vm.env_vars).unwrap_or_else(|_| "{}".into()),
                vm.restored_from,
                vm.expires_at,
                vm.timeout_action.as_str(),
                vm.vmm,
                vm.stop_reason.map(StopReason::as_str),
                vm.stopped_at,
            ],
        )?;
    }
    Ok(())
}

impl Store {
    /// Renames a VM and/or replaces its metadata.
    pub fn update_vm_labels(
        &self,
        id: &str,
        name: Option<&str>,
        metadata: Option<&serde_json::Value>,
    ) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE vms SET name = COALESCE(?2, name), metadata = COALESCE(?3, metadata), updated_at = ?4 WHERE id = ?1",
            params![id, name, metadata.map(|m| m.to_string()), now()],
        )?;
        if n == 0 {
            return Err(CoreError::vm_not_found(id));
        }
        Ok(())
    }

    /// Sets (or clears) when a VM's timeout fires and what it does.
    pub fn set_vm_timeout(
        &self,
        id: &str,
        expires_at: Option<f64>,
        action: TimeoutAction,
    ) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE vms SET expires_at = ?2, timeout_action = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, expires_at, action.as_str(), now()],
        )?;
        if n == 0 {
            return Err(CoreError::vm_not_found(id));
        }
        Ok(())
    }

    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO snapshots (id, name, source_vm_id, image, image_digest, vcpu, mem_mib,
                                    disk_size_mib, size_bytes, created_at, metadata, env_vars)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                s.id,
                s.name,
                s.source_vm_id,
                s.image,
                s.image_digest,
                s.vcpu,
                s.mem_mib,
                s.disk_size_mib,
                s.size_bytes,
                s.created_at,
                s.metadata.to_string(),
                serde_json::to_string(&s.env_vars).unwrap_or_else(|_| "{}".into()),
            ],
        )?;
        Ok(())
    }

    pub fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT * FROM snapshots WHERE id = ?1",
                [id],
                snapshot_from_row,
            )
            .optional()?)
    }

    /// `(id, name)` of every VM (for the reference resolver).
    pub fn list_vm_names(&self) -> Result<Vec<(String, String)>> {
        self.id_names("SELECT id, name FROM vms ORDER BY created_at DESC, id")
    }

    /// `(id, name)` of every snapshot (for the reference resolver).
    pub fn list_snapshot_names(&self) -> Result<Vec<(String, String)>> {
        self.id_names("SELECT id, name FROM snapshots ORDER BY created_at DESC, id")
    }

    fn id_names(&self, sql: &str) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// All snapshots, newest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT * FROM snapshots ORDER BY created_at DESC, id")?;
        let rows = stmt.query_map([], snapshot_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Renames a snapshot and/or replaces its metadata.
    pub fn update_snapshot_labels(
        &self,
        id: &str,
        name: Option<&str>,
        metadata: Option<&serde_json::Value>,
    ) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE snapshots SET name = COALESCE(?2, name), metadata = COALESCE(?3, metadata) WHERE id = ?1",
            params![id, name, metadata.map(|m| m.to_string())],
        )?;
        if n == 0 {
            return Err(CoreError::NotFound {
                kind: "snapshot",
                id: id.to_owned(),
            });
        }
        Ok(())
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Sets status, pid and error of a VM. A VM that comes up (`creating`, `running`) loses
    /// its stop reason; for the other states use [`Store::set_vm_stopped`].
    pub fn set_vm_state(
        &self,
        id: &str,
        status: VmStatus,
        pid: Option<u32>,
        error: Option<&str>,
    ) -> Result<()> {
        let sql = if matches!(status, VmStatus::Creating | VmStatus::Running) {
            "UPDATE vms SET status = ?2, pid = ?3, error = ?4, updated_at = ?5, stop_reason = NULL,
                 stopped_at = NULL WHERE id = ?1"
        } else {
            "UPDATE vms SET status = ?2, pid = ?3, error = ?4, updated_at = ?5 WHERE id = ?1"
        };
        let n = self
            .conn()
            .execute(sql, params![id, status.as_str(), pid, error, now()])?;
        if n == 0 {
            return Err(CoreError::vm_not_found(id));
        }
        Ok(())
    }

    /// Records that a VM stopped (or paused, or failed) and why, at the current time.
    pub fn set_vm_stopped(
        &self,
        id: &str,
        status: VmStatus,
        pid: Option<u32>,
        error: Option<&str>,
        reason: StopReason,
    ) -> Result<()> {
        let t = now();
        let n = self.conn().execute(
            "UPDATE vms SET status = ?2, pid = ?3, error = ?4, updated_at = ?5, stop_reason = ?6,
                 stopped_at = ?5 WHERE id = ?1",
            params![id, status.as_str(), pid, error, t, reason.as_str()],
        )?;
        if n == 0 {
            return Err(CoreError::vm_not_found(id));
        }
        Ok(())
    }

    pub fn get_vm(&self, id: &str) -> Result<Option<VmRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1 AND {NOT_POOL}"),
                [id],
                vm_from_row,
            )
            .optional()?)
    }

    /// All VMs, newest first.
    pub fn list_vms(&self) -> Result<Vec<VmRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VM_COLUMNS} FROM vms WHERE {NOT_POOL} ORDER BY created_at DESC, id"
        ))?;
        let rows = stmt.query_map([], vm_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn count_vms(&self) -> Result<usize> {
        let n: i64 = self.conn().query_row(USER_VM_COUNT, [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub fn delete_vm(&self, id: &str) -> Result<()> {
        self.conn().execute("DELETE FROM vms WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn upsert_image(&self, img: &ImageRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO images (reference, digest, size_bytes, config, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(reference) DO UPDATE SET digest = ?2, size_bytes = ?3, config = ?4, created_at = ?5",
            params![img.reference, img.digest, img.size_bytes, img.config.to_string(), img.created_at],
        )?;
        Ok(())
    }

    pub fn get_image(&self, reference: &str) -> Result<Option<ImageRecord>> {
        Ok(self
            .conn()
            .query_row("SELECT reference, digest, size_bytes, config, created_at FROM images WHERE reference = ?1", [reference], image_from_row)
            .optional()?)
    }

    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT reference, digest, size_bytes, config, created_at FROM images ORDER BY reference",
        )?;
        let rows = stmt.query_map([], image_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The columns [`vm_from_row`] reads, in its order (positional access: listing 1 000 VMs is
/// on the API's hot path, and looking columns up by name costs more than the query).
/// User VMs: not in a warm pool.
const NOT_POOL: &str = "id NOT IN (SELECT vm_id FROM pool_vms)";
const USER_VM_COUNT: &str = "SELECT COUNT(*) FROM vms WHERE id NOT IN (SELECT vm_id FROM pool_vms)";

const VM_COLUMNS: &str = "id, name, image, image_digest, status, vcpu, mem_mib, disk_size_mib, \
    created_at, updated_at, pid, error, metadata, env_vars, restored_from, expires_at, timeout_action, vmm, \
    stop_reason, stopped_at";

fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<VmRecord> {
    let status: String = r.get(4)?;
    let metadata: String = r.get(12)?;
    let env: String = r.get(13)?;
    Ok(VmRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        image: r.get(2)?,
        image_digest: r.get(3)?,
        status: VmStatus::parse(&status),
        vcpu: r.get(5)?,
        mem_mib: r.get(6)?,
        disk_size_mib: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        pid: r.get(10)?,
        error: r.get(11)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        env_vars: serde_json::from_str(&env).unwrap_or_default(),
        restored_from: r.get(14)?,
        expires_at: r.get(15)?,
        timeout_action: TimeoutAction::parse(&r.get::<_, String>(16)?).unwrap_or_default(),
        vmm: r.get(17)?,
        stop_reason: r
            .get::<_, Option<String>>(18)?
            .as_deref()
            .and_then(StopReason::parse),
        stopped_at: r.get(19)?,
    })
}

fn snapshot_from_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    let metadata: String = r.get("metadata")?;
    let env: String = r.get("env_vars")?;
    Ok(SnapshotRecord {
        id: r.get("id")?,
        name: r.get("name")?,
        source_vm_id: r.get("source_vm_id")?,
        image: r.get("image")?,
        image_digest: r.get("image_digest")?,
        vcpu: r.get("vcpu")?,
        mem_mib: r.get("mem_mib")?,
        disk_size_mib: r.get("disk_size_mib")?,
        size_bytes: r.get("size_bytes")?,
        created_at: r.get("created_at")?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        env_vars: serde_json::from_str(&env).unwrap_or_default(),
    })
}

fn image_from_row(r: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    let config: String = r.get(3)?;
    Ok(ImageRecord {
        reference: r.get(0)?,
        digest: r.get(1)?,
        size_bytes: r.get(2)?,
        config: serde_json::from_str(&config).unwrap_or(serde_json::Value::Null),
        created_at: r.get(4)?,
    })
}

/// Current time as Unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str, created_at: f64) -> VmRecord {
        VmRecord {
            id: id.into(),
            name: format!("n-{id}"),
            image: "bandsox/busybox".into(),
            image_digest: "sha256:x".into(),
            status: VmStatus::Creating,
            vcpu: 1,
            mem_mib: 128,
            disk_size_mib: 4096,
            created_at,
            updated_at: created_at,
            pid: None,
            error: None,
            metadata: serde_json::json!({"team": "a"}),
            env_vars: BTreeMap::from([("K".into(), "V".into())]),
            restored_from: None,
            expires_at: None,
            timeout_action: TimeoutAction::Stop,
            vmm: "firecracker".into(),
            stop_reason: None,
            stopped_at: None,
        }
    }

    #[test]
    fn vms_from_before_the_vmm_column_are_qemu_vms() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store
            .conn()
            .execute(
                "INSERT INTO vms (id, name, image, image_digest, status, vcpu, mem_mib,
                                  disk_size_mib, created_at, updated_at)
                 VALUES ('old', 'n', 'i', 'd', 'stopped', 1, 128, 64, 1.0, 1.0)",
                [],
            )
            .unwrap();
        assert_eq!(store.get_vm("old").unwrap().unwrap().vmm, "qemu");
        store.insert_vm(&vm("new", 2.0)).unwrap();
        assert_eq!(store.get_vm("new").unwrap().unwrap().vmm, "firecracker");
    }

    #[test]
    fn vms_roundtrip_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.insert_vm(&vm("a", 1.0)).unwrap();
        store.insert_vm(&vm("b", 2.0)).unwrap();
        store
            .set_vm_state("a", VmStatus::Running, Some(42), None)
            .unwrap();
        let a = store.get_vm("a").unwrap().unwrap();
        assert_eq!((a.status, a.pid), (VmStatus::Running, Some(42)));
        assert_eq!(a.env_vars["K"], "V");
        let ids: Vec<_> = store
            .list_vms()
            .unwrap()
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, ["b", "a"]);
        assert!(matches!(
            store.set_vm_state("zz", VmStatus::Failed, None, None),
            Err(CoreError::NotFound { .. })
        ));
        // A stop records its reason and time; coming up again clears them.
        store
            .set_vm_stopped("a", VmStatus::Stopped, None, None, StopReason::Timeout)
            .unwrap();
        let a = store.get_vm("a").unwrap().unwrap();
        assert_eq!(a.stop_reason, Some(StopReason::Timeout));
        assert!(a.stopped_at.is_some_and(|t| t > 1.0));
        store
            .set_vm_state("a", VmStatus::Paused, Some(1), None)
            .unwrap();
        assert_eq!(
            store.get_vm("a").unwrap().unwrap().stop_reason,
            Some(StopReason::Timeout),
            "only coming up clears the reason"
        );
        store
            .set_vm_state("a", VmStatus::Running, Some(1), None)
            .unwrap();
        let a = store.get_vm("a").unwrap().unwrap();
        assert_eq!((a.stop_reason, a.stopped_at), (None, None));
        // Reopening keeps the data and does not re-run migrations.
        drop(store);
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.list_vms().unwrap().len(), 2);
    }
}
