//! Request and response bodies of the REST API, shared by the server and the clients.
//!
//! Field names and defaults follow BandSox's API (existing BandSox clients must work
//! unchanged); our extensions are optional fields with defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/vms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateVmRequest {
    pub image: String,
    #[serde(default)]
    pub name: Option<String>,
    /// 1 to the server's `--max-vcpu` (at most 32).
    #[serde(default = "default_vcpu")]
    #[schema(minimum = 1, maximum = 32)]
    pub vcpu: u32,
    /// 64 to the server's `--max-mem-mib` (at most 65536).
    #[serde(default = "default_mem_mib")]
    #[schema(minimum = 64, maximum = 65536)]
    pub mem_mib: u32,
    #[serde(default = "default_true")]
    pub enable_networking: bool,
    #[serde(default)]
    pub force_rebuild: bool,
    /// 64 to the server's `--max-disk-mib` (at most 1048576).
    #[serde(default = "default_disk_size_mib")]
    #[schema(minimum = 64, maximum = 1048576)]
    pub disk_size_mib: u64,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Extension: seconds until `timeout_action` runs (0 = never).
    #[serde(default)]
    pub timeout_s: u64,
    /// Extension: `stop` (default), `pause` or `delete`.
    #[serde(default)]
    pub timeout_action: Option<String>,
    /// Extension: unset uses the template of this image and shape when there is one, and
    /// after a cold create builds it in the background unless the server runs with
    /// `--no-auto-template`; `true` also builds it then; `false` always cold boots and builds
    /// nothing.
    #[serde(default)]
    pub template: Option<bool>,
    /// Extension, cluster only (`serve --cluster`): create the VM on this node instead of
    /// the one placement chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A template (`GET /api/templates`): a paused, agent-ready VM of one image and shape that
/// creates of that image and shape restore from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateInfo {
    /// 32 hex digits, derived from everything the saved state depends on.
    pub id: String,
    pub image: String,
    pub image_digest: String,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    pub enable_networking: bool,
    pub vmm: String,
    /// False once the kernel or initramfs (agent) changed: never used, replaced by the next
    /// build of its image and shape.
    pub current: bool,
    /// Unix seconds.
    pub created_at: f64,
    pub build_ms: u64,
    pub size_bytes: u64,
}

/// `POST /api/vms/{id}/fork`: new running VMs with the VM's memory and disk at this instant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForkRequest {
    /// 1 to 16.
    #[serde(default = "default_fork_count")]
    #[schema(minimum = 1, maximum = 16)]
    pub count: usize,
    /// One name per clone (default `<source name>-fork-<n>`).
    #[serde(default)]
    pub names: Option<Vec<String>>,
}

fn default_fork_count() -> usize {
    1
}

/// The clones of a fork, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForkResponse {
    pub ids: Vec<String>,
}

/// `POST /api/templates`: build (or return) the template of an image and shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildTemplateRequest {
    pub image: String,
    #[serde(default = "default_vcpu")]
    #[schema(minimum = 1, maximum = 32)]
    pub vcpu: u32,
    #[serde(default = "default_mem_mib")]
    #[schema(minimum = 64, maximum = 65536)]
    pub mem_mib: u32,
    #[serde(default = "default_disk_size_mib")]
    #[schema(minimum = 64, maximum = 1048576)]
    pub disk_size_mib: u64,
    #[serde(default = "default_true")]
    pub enable_networking: bool,
}

/// `PUT /api/pools`: keep `size` VMs of an image and shape restored and paused (0 removes
/// the pool).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetPoolRequest {
    pub image: String,
    #[serde(default = "default_vcpu")]
    #[schema(minimum = 1, maximum = 32)]
    pub vcpu: u32,
    #[serde(default = "default_mem_mib")]
    #[schema(minimum = 64, maximum = 65536)]
    pub mem_mib: u32,
    #[serde(default = "default_disk_size_mib")]
    #[schema(minimum = 64, maximum = 1048576)]
    pub disk_size_mib: u64,
    #[serde(default = "default_true")]
    pub enable_networking: bool,
    #[schema(minimum = 0, maximum = 64)]
    pub size: usize,
}

/// A warm pool (`GET /api/pools`): its image and shape, the size wanted and the VMs ready.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolInfo {
    pub image: String,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    pub enable_networking: bool,
    /// VMs wanted.
    pub size: usize,
    /// Paused VMs of the current template, ready to be claimed by a create.
    pub ready: usize,
    /// The template the pool VMs are restored from, once built.
    pub template: Option<String>,
}

fn default_vcpu() -> u32 {
    1
}
fn default_mem_mib() -> u32 {
    128
}
fn default_disk_size_mib() -> u64 {
    4096
}
fn default_true() -> bool {
    true
}
fn default_exec_timeout() -> u64 {
    30
}

/// Answer to `POST /api/vms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateVmResponse {
    pub id: String,
    pub status: String,
}

/// A VM as the API shows it (`GET /api/vms`, `GET /api/vms/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub status: String,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    /// Unix seconds.
    pub created_at: f64,
    pub updated_at: f64,
    pub pid: Option<u32>,
    pub agent_ready: bool,
    pub error: Option<String>,
    pub metadata: serde_json::Value,
    /// Variable values whose names or values look secret (a URL with a password, a known token prefix, a long random string) are shown as `<redacted>`.
    pub env_vars: BTreeMap<String, String>,
    pub network_config: Option<serde_json::Value>,
    pub vsock_config: Option<serde_json::Value>,
    /// Snapshot this VM was restored from.
    pub restored_from: Option<String>,
    /// Unix seconds at which `timeout_action` runs.
    pub expires_at: Option<f64>,
    pub timeout_action: String,
    /// VMM backend the VM runs under (`firecracker`, `qemu`).
    #[serde(default)]
    pub vmm: String,
    /// Why the VM last left the running state: `user` (stop or pause asked for), `timeout`,
    /// `guest_poweroff` (the guest powered off or rebooted itself), `vmm_exited` (the VMM
    /// process died), `host_restart` (the server restarted and could not take the VM over)
    /// or `boot_failed` (`start` could not boot it). `null` while it runs.
    #[serde(default)]
    #[schema(example = "timeout")]
    pub stop_reason: Option<String>,
    /// Unix seconds at which it did.
    #[serde(default)]
    pub stopped_at: Option<f64>,
    /// Cluster only: the node the VM lives on (in lists merged across nodes; a VM of a node
    /// that is down is listed with status `lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `POST /api/vms/{id}/snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotRequest {
    pub name: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// Answer to `POST /api/vms/{id}/snapshot`. `snapshot_id` is what restore takes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotCreated {
    pub snapshot_id: String,
    pub name: String,
}

/// A snapshot as the API shows it. `snapshot_name` repeats `name` for BandSox clients.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub snapshot_name: String,
    pub source_vm_id: String,
    pub image: String,
    pub image_digest: String,
    pub vcpu: u32,
    pub mem_mib: u32,
    pub disk_size_mib: u64,
    pub size_bytes: u64,
    pub created_at: f64,
    pub metadata: serde_json::Value,
}

/// `POST /api/snapshots/{id}/restore`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RestoreRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_true")]
    pub enable_networking: bool,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// `PUT .../name`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RenameRequest {
    pub name: String,
}

/// Answer to `PUT .../name`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Renamed {
    pub status: String,
    pub name: String,
}

/// `PUT .../metadata`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetadataRequest {
    pub metadata: serde_json::Value,
}

/// `POST /api/vms/{id}/timeout`: set (0 clears) the timeout and optionally its action.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TimeoutRequest {
    pub timeout_s: u64,
    #[serde(default)]
    pub action: Option<String>,
}

/// `POST /api/vms/{id}/extend`: add seconds to the timeout.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExtendRequest {
    pub seconds: u64,
}

/// `POST /api/vms/{id}/exec`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecRequest {
    pub command: String,
    /// Seconds.
    #[serde(default = "default_exec_timeout")]
    pub timeout: u64,
    /// Extension: extra environment for this command.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Extension: working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extension: user name or uid in the guest.
    #[serde(default)]
    pub user: Option<String>,
}

/// Answer to `POST /api/vms/{id}/exec`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    /// The exit code; `128 + n` when killed by signal `n`.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Extension: output bytes dropped beyond the server's cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stdout_dropped_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stderr_dropped_bytes: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `{"status": ...}` answers (stop, delete, ...).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    pub status: String,
}

/// `GET /api/version`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    pub version: String,
    pub backend: String,
    pub accelerator: String,
    /// Base URL of the guest port proxy listener (`{proxy_url}/api/vms/{id}/ports/{port}/`),
    /// absent when the server runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
}

/// RFC 9457 problem details. `detail` is what BandSox clients read; `code` is stable.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Media type of [`Problem`] bodies.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// `POST /api/vms/{id}/http`: one HTTP request to a port inside the VM (BandSox shape).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HttpProxyRequest {
    /// TCP port inside the VM, 1 to 65535.
    pub port: u32,
    #[serde(default = "default_http_path")]
    pub path: String,
    #[serde(default = "default_http_method")]
    pub method: String,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Request body as text.
    #[serde(default)]
    pub body: Option<String>,
    /// Extension: request body as base64 (binary-safe); exclusive with `body` and `json_body`.
    #[serde(default)]
    pub body_base64: Option<String>,
    /// Sent as JSON with `Content-Type: application/json`.
    #[serde(default)]
    pub json_body: Option<serde_json::Value>,
    /// Seconds to wait for the answer.
    #[serde(default = "default_http_timeout")]
    pub timeout: f64,
}

fn default_http_path() -> String {
    "/".into()
}

fn default_http_method() -> String {
    "GET".into()
}

fn default_http_timeout() -> f64 {
    30.0
}

/// The guest's answer to [`HttpProxyRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HttpProxyResponse {
    pub status_code: u16,
    pub headers: BTreeMap<String, String>,
    /// The body as text (invalid UTF-8 replaced; see `body_base64`).
    pub body: String,
    /// Extension: the exact body as base64, present when the body is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthInfo {
    /// `ok`, or `unavailable` when a readiness check failed.
    pub status: String,
    /// The readiness checks (`database`, `storage`, `kernel_assets`, `vmm`); empty for
    /// `/healthz`.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

/// One readiness check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
}

/// `GET /api/vms/{id}/stats`: what one VM uses now. Fields a stopped or paused VM cannot
/// tell are null.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmStatsInfo {
    pub id: String,
    pub name: String,
    pub status: String,
    /// Host CPU the VM's VMM used over a quarter-second sample, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Host CPU time the VMM used since it started.
    pub cpu_time_ms: Option<u64>,
    /// Resident memory of the VMM process on the host.
    pub host_rss_bytes: Option<u64>,
    /// Guest memory in all (`MemTotal`) and in use (`MemTotal - MemAvailable`).
    pub mem_total_bytes: Option<u64>,
    pub mem_used_bytes: Option<u64>,
    /// The writable disk's size and the bytes it takes on the host.
    pub disk_size_bytes: u64,
    pub disk_used_bytes: u64,
    /// Bytes the guest received and sent (null without networking).
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

/// One event of `GET /api/events` (server-sent events): a VM appeared or changed (`vm`, with
/// the VM as `GET /api/vms/{id}` shows it) or was deleted (`vm_deleted`, with its id only).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmEvent {
    /// `vm` or `vm_deleted` (also the SSE `event:` name).
    pub kind: String,
    pub id: String,
    /// The VM now, for `vm`.
    pub vm: Option<VmInfo>,
}

/// Body of `PUT /api/auth/password`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    /// The password in force now.
    pub current_password: String,
    /// At least 8 characters.
    pub new_password: String,
}

/// One node of a cluster (`serve --cluster`), as `GET /api/cluster/nodes` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterNodeInfo {
    /// `--node-name`.
    pub name: String,
    /// `up` while the node renews its lease, else `down` (its VMs show as `lost`).
    pub state: String,
    /// Where nodes reach its API (`--advertise`).
    pub advertise: String,
    pub version: String,
    /// VMM backend (`qemu`, `firecracker`).
    pub backend: String,
    /// Host CPUs.
    pub vcpus: u32,
    /// Host memory in MiB.
    pub mem_mib: u64,
    /// VMs on the node (any state), as it last reported.
    pub vms: u32,
    /// Most VMs the node accepts (`--max-vms`).
    pub max_vms: u32,
    /// When the node last registered, milliseconds since the Unix epoch.
    pub joined_ms: u64,
    /// When its record was last written, milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

/// `GET /api/cluster/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterNodesResponse {
    /// The node that answered.
    pub node: String,
    /// Every node ever registered, sorted by name.
    pub nodes: Vec<ClusterNodeInfo>,
}
