/** Shapes of the server's answers. Objects keep any field the server adds (unknown fields are ignored, not rejected). */

export type Json = Record<string, unknown>;

export interface NetworkConfig {
  guest_ip?: string;
  host_ip?: string;
  tap_name?: string;
  [key: string]: unknown;
}

/**
 * A VM's state, as the server stores it (`VmStatus` in crates/bandsox-core/src/store.rs):
 * `creating` while it boots, `running`, `paused`, `stopped` (disk kept), `failed` (see `error`).
 */
export type VmStatus = "creating" | "running" | "paused" | "stopped" | "failed";

/** The Vtrix `Sandbox`'s words for {@link VmStatus}: `active` is `running`. */
export type SandboxStatus = "creating" | "active" | "paused" | "stopped" | "failed";

export interface VmInfo {
  id: string;
  name: string | null;
  image: string;
  image_digest?: string | null;
  status: VmStatus;
  vcpu: number;
  mem_mib: number;
  disk_size_mib?: number;
  /** Unix seconds (as the server stores them) or an RFC 3339 string. */
  created_at?: number | string;
  updated_at?: number | string;
  pid?: number | null;
  agent_ready?: boolean;
  error?: string | null;
  metadata: Record<string, unknown>;
  env_vars?: Record<string, string>;
  network_config: NetworkConfig | null;
  vsock_config?: unknown;
  restored_from?: string | null;
  /** Unix seconds when the timeout action runs; null without a timeout. */
  expires_at?: number | null;
  timeout_action?: string | null;
  /** VMM backend the VM runs under: "firecracker" or "qemu". */
  vmm?: string;
  /**
   * Why the VM last left the running state: "user", "timeout", "guest_poweroff",
   * "vmm_exited", "host_restart" or "boot_failed"; null while it runs.
   */
  stop_reason?: string | null;
  /** Unix seconds at which it did. */
  stopped_at?: number | null;
  [key: string]: unknown;
}

export interface TemplateInfo {
  id: string;
  image: string;
  image_digest: string;
  vcpu: number;
  mem_mib: number;
  disk_size_mib: number;
  enable_networking: boolean;
  vmm: string;
  /** False once the kernel or initramfs changed: never used, replaced by the next build. */
  current: boolean;
  created_at: number;
  build_ms: number;
  size_bytes: number;
}

export interface BuildTemplateOptions {
  image: string;
  vcpu?: number;
  mem_mib?: number;
  disk_size_mib?: number;
  enable_networking?: boolean;
}

export interface SnapshotInfo {
  id: string;
  name: string;
  snapshot_name: string;
  source_vm_id?: string;
  image?: string;
  vcpu?: number;
  mem_mib?: number;
  size_bytes?: number;
  created_at?: string;
  metadata: Record<string, unknown>;
  [key: string]: unknown;
}

export interface ExecResult {
  exit_code: number;
  stdout: string;
  stderr: string;
  stdout_dropped_bytes?: number;
  stderr_dropped_bytes?: number;
}

export interface ExecPythonResult {
  exit_code: number;
  stdout: string;
  stderr: string;
  output: string;
  success: boolean;
  error: string | null;
  venv?: string;
}

export interface HttpProxyResult {
  status_code: number;
  headers: Record<string, string>;
  body: string;
}

export interface DirEntry {
  name: string;
  path: string;
  size: number;
  is_dir: boolean;
  is_file: boolean;
  is_symlink?: boolean;
  mode?: string;
  mtime?: number;
  [key: string]: unknown;
}

export interface DirListing {
  path: string;
  files: DirEntry[];
  truncated?: boolean;
}

export interface FileInfoResult {
  size: number;
  mode: string;
  mtime: number;
  is_dir: boolean;
  is_file: boolean;
  [key: string]: unknown;
}

export interface CreateVmOptions {
  image: string;
  name?: string;
  vcpu?: number;
  mem_mib?: number;
  disk_size_mib?: number;
  enable_networking?: boolean;
  force_rebuild?: boolean;
  env_vars?: Record<string, string>;
  metadata?: Record<string, unknown>;
  /** Seconds until `timeout_action` runs (0 = never). */
  timeout_s?: number;
  timeout_action?: "stop" | "pause" | "delete";
  /** `false`: always cold boot and build no template (default: the server's setting). */
  template?: boolean;
}

export interface ListVmsOptions {
  limit?: number;
  offset?: number;
  metadata_equals?: Record<string, unknown>;
  status?: VmStatus;
  /** Substring of the name. */
  name?: string;
}

export interface Pagination {
  total: number;
  limit: number | null;
  offset: number;
  has_more: boolean;
}

export interface ListResult<T> {
  items: T[];
  pagination: Pagination;
}

export interface RestoreVmOptions {
  name?: string;
  enable_networking?: boolean;
  env_vars?: Record<string, string>;
  metadata?: Record<string, unknown>;
}

export interface SnapshotOptions {
  name?: string;
  metadata?: Record<string, unknown>;
}

export interface ExecPythonOptions {
  code: string;
  cwd?: string;
  packages?: string[];
  /** Seconds. */
  timeout?: number;
  cleanup_venv?: boolean;
  env?: Record<string, string>;
}

export interface WriteFileOptions {
  path: string;
  content: string;
  encoding?: "utf-8" | "base64";
  append?: boolean;
  /** Octal permission string or number (e.g. 0o644). */
  mode?: string | number;
}

export interface HttpRequestOptions {
  port: number;
  path?: string;
  method?: string;
  headers?: Record<string, string>;
  /** A string is sent as UTF-8; bytes are sent exactly (as `body_base64`). */
  body?: string | Uint8Array;
  json?: unknown;
  /** Seconds. */
  timeout?: number;
}

export interface ExecStreamOptions {
  command: string;
  /** Seconds (1 to 3600, default 600). */
  timeout?: number;
  onStdout?: (chunk: string) => void;
  onStderr?: (chunk: string) => void;
}

export interface AuthCheckResult {
  authenticated: boolean;
  [key: string]: unknown;
}

export interface ApiKeyInfo {
  id: string;
  name: string;
  created_at?: string;
  last_used_at?: string | null;
  [key: string]: unknown;
}

export interface CreatedApiKey {
  key_id: string;
  key: string;
  name: string;
  [key: string]: unknown;
}

/** Per-call options accepted by most methods. */
export interface CallOptions {
  /** Milliseconds; overrides the client's `timeout` for this call. */
  timeout?: number;
  /** Aborts the call. */
  signal?: AbortSignal;
}

// --- Vtrix-style extras ----------------------------------------------------------------------

export interface RunOptions {
  working_dir?: string;
  /** Kill the command after this many seconds. */
  timeout_sec?: number;
  env?: Record<string, string>;
  sudo?: boolean;
  /** Written to the command's stdin (then closed). */
  stdin?: string;
  /** Receives stdout chunks as they arrive. */
  stdout?: { write(chunk: string): unknown };
  /** Receives stderr chunks as they arrive. */
  stderr?: { write(chunk: string): unknown };
}

export interface ExitStatus {
  exit_code?: number | null;
  signal?: number | null;
  timed_out?: boolean;
  duration_us?: number;
  [key: string]: unknown;
}

export interface CommandState {
  cmd_id: string;
  pid: number;
  command: string[];
  running: boolean;
  status: ExitStatus | null;
  stdout_end: number;
  stderr_end: number;
  stdout_start?: number;
  stderr_start?: number;
  started_at_ms?: number;
  [key: string]: unknown;
}

export type ExecEvent =
  | { type: "start"; cmdId?: string }
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | { type: "done"; exitCode: number };

export interface LogEvent {
  stream: "stdout" | "stderr";
  data: string;
}

export interface ReadResult {
  type: "text" | "image";
  content?: string;
  truncated: boolean;
  data?: string;
  mime_type?: string;
  size?: number;
  path?: string;
}

export interface WriteResult {
  bytes_written: number;
}

export interface EditResult {
  message: string;
}

export interface FileEntry {
  name: string;
  path: string;
  size: number;
  is_dir: boolean;
  modified_at?: string;
}

export interface FileInfo {
  exists: boolean;
  is_file: boolean;
  is_dir: boolean;
  size: number;
  modified_at?: string;
}

export interface WriteFilesEntry {
  path: string;
  content: Uint8Array | string;
  mode?: number;
}
