/**
 * The Vtrix-style facade: `Client` and `Sandbox`, with the names, options and argument order of
 * `@vtrixai/sandbox`, on top of the BandSox-style {@link BandSox} client. Where the two disagree
 * (`uploadFile`'s arguments, `status` values, `stop` options), `Sandbox` follows Vtrix and
 * {@link MicroVM} follows BandSox.
 */

import { BandSox } from "./client.js";
import { InvalidInputError, UnsupportedError, VmNotFoundError } from "./errors.js";
import type { CallOptions, ListResult, SandboxStatus, VmInfo, VmStatus } from "./types.js";
import { MicroVM } from "./vm.js";

/** Metadata key that holds `create({user_id})`. */
export const USER_ID_KEY = "user_id";
/** Metadata key that holds the client's `projectID`; `list()` filters on it. */
export const PROJECT_ID_KEY = "project_id";

/** Resources: `cpu` ("2", "500m", 2), `memory` ("4Gi", "512Mi", "1G", or MiB as a number), `disk` (same units), `image`. */
export interface Spec {
  cpu?: string | number;
  memory?: string | number;
  disk?: string | number;
  image?: string;
}

/** A file written into the sandbox before `create()` returns (and again by `configure()`). */
export interface Payload {
  path: string;
  content: string | Uint8Array;
  /** Unix permission bits, e.g. 0o755. */
  mode?: number;
}

export interface ClientOptions {
  /** Server URL, e.g. `http://127.0.0.1:8000` (`baseUrl` is accepted too); default `$BANDSOX_URL`. */
  baseURL?: string;
  baseUrl?: string;
  /** Bearer token: a bandsox API key (`bsx_...`); default `$BANDSOX_API_KEY`. */
  token?: string;
  /** Sent as `X-Project-ID`, stored as the `project_id` metadata of created sandboxes; `list()` shows only its own. */
  projectID?: string;
  /** Image of sandboxes whose `spec.image` is not set (default `bandsox/busybox`). */
  image?: string;
  /** Extra headers of every request. */
  headers?: Record<string, string>;
  /** Milliseconds per call (default 60 000). */
  timeout?: number;
  /** Milliseconds for calls that boot a VM (default 180 000). */
  bootTimeout?: number;
}

export interface CreateOptions {
  /** Owner of the sandbox (metadata `user_id`). */
  user_id: string;
  spec?: Spec;
  /** Key-value metadata of the sandbox. */
  labels?: Record<string, string>;
  /** Files written before `create()` returns. */
  payloads?: Payload[];
  /** Lifetime in hours (0 or absent: no limit); then `ttl_action` runs (default "stop"). */
  ttl_hours?: number;
  ttl_action?: "stop" | "pause" | "delete";
  /** Environment of every command in the sandbox. */
  env?: Record<string, string>;
  /** Name of the VM (default: none). */
  name?: string;
  enable_networking?: boolean;
}

export interface ListOptions {
  user_id?: string;
  /** "active" (running), "creating", "paused", "stopped", "failed". */
  status?: SandboxStatus;
  limit?: number;
  offset?: number;
}

/** What `Client.get`/`list` return: the VM object with Vtrix's fields. */
export interface SandboxInfo {
  id: string;
  /** Vtrix's name for the state ("active" = running). */
  status: SandboxStatus;
  /** The server's own state. */
  vm_status: VmStatus;
  user_id: string | null;
  project_id: string | null;
  /** The metadata without `user_id`/`project_id`, as strings. */
  labels: Record<string, string>;
  /** RFC 3339. */
  created_at: string | null;
  /** RFC 3339; null without a TTL. */
  expire_at: string | null;
  image: string;
  vcpu: number;
  mem_mib: number;
  /** The whole VM object. */
  vm: VmInfo;
}

/** Server state → Vtrix state ("running" is "active"). */
export function sandboxStatus(status: VmStatus | undefined): SandboxStatus {
  return status === "running" ? "active" : (status ?? "creating");
}

function vmStatusFilter(status: SandboxStatus): VmStatus {
  return status === "active" ? "running" : status;
}

function isoOf(t: number | string | null | undefined): string | null {
  if (t === undefined || t === null) return null;
  return new Date(typeof t === "number" ? t * 1000 : t).toISOString();
}

/** `SandboxInfo` of a VM object. */
export function sandboxInfo(vm: VmInfo): SandboxInfo {
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(vm.metadata ?? {})) {
    if (k === USER_ID_KEY || k === PROJECT_ID_KEY) continue;
    labels[k] = typeof v === "string" ? v : JSON.stringify(v);
  }
  const str = (v: unknown) => (typeof v === "string" ? v : null);
  return {
    id: vm.id,
    status: sandboxStatus(vm.status),
    vm_status: vm.status,
    user_id: str(vm.metadata?.[USER_ID_KEY]),
    project_id: str(vm.metadata?.[PROJECT_ID_KEY]),
    labels,
    created_at: isoOf(vm.created_at),
    expire_at: isoOf(vm.expires_at),
    image: vm.image,
    vcpu: vm.vcpu,
    mem_mib: vm.mem_mib,
    vm,
  };
}

const UNITS: Record<string, number> = {
  "": 1 << 20, // a bare number is MiB
  k: 1e3,
  m: 1e6,
  g: 1e9,
  t: 1e12,
  ki: 1 << 10,
  mi: 1 << 20,
  gi: 1 << 30,
  ti: 2 ** 40,
};

/** Kubernetes-style quantity ("4Gi", "512Mi", "1G", "2048") → MiB, rounded up. */
export function parseMiB(v: string | number, field: string): number {
  if (typeof v === "number") {
    if (Number.isFinite(v) && v > 0) return Math.ceil(v);
  } else {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$/i.exec(v);
    if (m) {
      const bytes = Number(m[1]) * UNITS[(m[2] ?? "").toLowerCase()];
      if (bytes > 0) return Math.ceil(bytes / (1 << 20));
    }
  }
  throw new InvalidInputError(`spec.${field} ${JSON.stringify(v)} is not a size like "4Gi", "512Mi" or a number of MiB`, {
    code: "invalid_input",
  });
}

/** CPU quantity ("2", "500m", 1.5) → whole vCPUs, rounded up. */
export function parseCpu(v: string | number): number {
  const n = typeof v === "number" ? v : /^\s*\d+(\.\d+)?\s*$/.test(v) ? Number(v) : /^\s*\d+m\s*$/.test(v) ? Number.parseInt(v, 10) / 1000 : NaN;
  if (!(Number.isFinite(n) && n > 0)) {
    throw new InvalidInputError(`spec.cpu ${JSON.stringify(v)} is not a CPU count like "2" or "500m"`, { code: "invalid_input" });
  }
  return Math.ceil(n);
}

/** Vtrix's `Client`: creates, attaches to, lists and deletes sandboxes (VMs). Safe to share. */
export class Client {
  /** The BandSox-style client underneath (same connection settings). */
  readonly bandsox: BandSox;
  readonly projectID: string | undefined;
  readonly image: string;
  private proxyUrl: Promise<string | undefined> | null = null;

  constructor(options: ClientOptions = {}) {
    const headers: Record<string, string> = { ...(options.headers ?? {}) };
    if (options.projectID) headers["X-Project-ID"] = options.projectID;
    this.bandsox = new BandSox({
      baseUrl: options.baseURL ?? options.baseUrl,
      apiKey: options.token,
      headers,
      timeout: options.timeout,
      bootTimeout: options.bootTimeout,
    });
    this.projectID = options.projectID;
    this.image = options.image ?? "bandsox/busybox";
  }

  get baseURL(): string {
    return this.bandsox.baseUrl;
  }

  /** @internal The proxy listener's base URL (from `GET /api/version`), fetched once. */
  proxyBase(): Promise<string | undefined> {
    this.proxyUrl ??= this.bandsox.version().then(
      (v) => (v as { proxy_url?: string }).proxy_url?.replace(/\/+$/, ""),
      () => {
        this.proxyUrl = null; // try again next time
        return undefined;
      },
    );
    return this.proxyUrl;
  }

  /**
   * Creates a sandbox, waits until it runs, writes `payloads`, and opens its WebSocket.
   * `spec.cpu`/`memory`/`disk` become vcpu/mem_mib/disk_size_mib, `ttl_hours` the timeout,
   * `labels` + `user_id` + the client's `projectID` the metadata, `env` the VM's environment.
   */
  async create(opts: CreateOptions, call: CallOptions = {}): Promise<Sandbox> {
    if (typeof opts?.user_id !== "string" || !opts.user_id) {
      throw new InvalidInputError("create() needs user_id (the owner of the sandbox)", { code: "invalid_input" });
    }
    const spec = opts.spec ?? {};
    const ttl = opts.ttl_hours ?? 0;
    if (!(Number.isFinite(ttl) && ttl >= 0)) {
      throw new InvalidInputError(`ttl_hours must be a number of hours >= 0 (got ${String(ttl)})`, { code: "invalid_input" });
    }
    const metadata: Record<string, string> = { ...(opts.labels ?? {}), [USER_ID_KEY]: opts.user_id };
    if (this.projectID) metadata[PROJECT_ID_KEY] = this.projectID;
    const [vm, proxy] = await Promise.all([
      this.bandsox.createVm(
        {
          image: spec.image ?? this.image,
          name: opts.name,
          vcpu: spec.cpu === undefined ? undefined : parseCpu(spec.cpu),
          mem_mib: spec.memory === undefined ? undefined : parseMiB(spec.memory, "memory"),
          disk_size_mib: spec.disk === undefined ? undefined : parseMiB(spec.disk, "disk"),
          env_vars: opts.env,
          metadata,
          enable_networking: opts.enable_networking,
          timeout_s: ttl > 0 ? Math.ceil(ttl * 3600) : undefined,
          timeout_action: ttl > 0 ? (opts.ttl_action ?? "stop") : undefined,
        },
        call,
      ),
      this.proxyBase(),
    ]);
    const sb = new Sandbox(this, vm.id, vm.info, proxy, opts.payloads ?? []);
    try {
      await sb.configure({}, call);
      await sb.connect(call);
    } catch (e) {
      await this.bandsox.deleteVm(vm.id).catch(() => undefined); // nothing half-created
      throw e;
    }
    return sb;
  }

  /** A sandbox that exists (by id, name or id prefix), with its WebSocket open. */
  async attach(sandboxId: string, call: CallOptions = {}): Promise<Sandbox> {
    const [vm, proxy] = await Promise.all([this.bandsox.getVm(sandboxId, call), this.proxyBase()]);
    const sb = new Sandbox(this, vm.id, vm.info, proxy, []);
    await sb.connect(call);
    return sb;
  }

  /** Sandboxes of this client's project (all without `projectID`), newest first; filter by `user_id`, `status`. */
  async list(opts: ListOptions = {}, call: CallOptions = {}): Promise<ListResult<SandboxInfo>> {
    const metadata: Record<string, string> = {};
    if (this.projectID) metadata[PROJECT_ID_KEY] = this.projectID;
    if (opts.user_id) metadata[USER_ID_KEY] = opts.user_id;
    const page = await this.bandsox.listVmsPage(
      {
        limit: opts.limit,
        offset: opts.offset,
        status: opts.status === undefined ? undefined : vmStatusFilter(opts.status),
        metadata_equals: Object.keys(metadata).length ? metadata : undefined,
      },
      call,
    );
    return { items: page.items.map(sandboxInfo), pagination: page.pagination };
  }

  /** One sandbox's info without opening a WebSocket (throws `VmNotFoundError`). */
  async get(sandboxId: string, call: CallOptions = {}): Promise<SandboxInfo> {
    const info = await this.bandsox.getVmInfo(sandboxId, call);
    if (info === null) throw new VmNotFoundError(`no sandbox ${sandboxId}`, { statusCode: 404, code: "vm_not_found" });
    return sandboxInfo(info);
  }

  /** Deletes a sandbox and its disk (cannot be undone). */
  async delete(sandboxId: string, call: CallOptions = {}): Promise<void> {
    await this.bandsox.deleteVm(sandboxId, call);
  }
}

/** Vtrix's `Sandbox`: a {@link MicroVM} with Vtrix's names and argument order. */
export class Sandbox extends MicroVM<SandboxStatus> {
  /** The `Client` that made this handle. */
  readonly owner: Client;
  private payloads: Payload[];
  private readonly proxy: string | undefined;

  /** @internal */
  constructor(owner: Client, id: string, info: VmInfo | null, proxy: string | undefined, payloads: Payload[]) {
    super(owner.bandsox, id, info);
    this.owner = owner;
    this.proxy = proxy;
    this.payloads = payloads;
  }

  /** Cached state in Vtrix's words: "active" (running), "creating", "paused", "stopped", "failed". */
  override get status(): SandboxStatus {
    return sandboxStatus(this.info?.status);
  }

  /** Creation time (a new Date each time; invalid when unknown). */
  override get createdAt(): Date {
    const c = this.info?.created_at;
    return new Date(c === undefined || c === null ? NaN : typeof c === "number" ? c * 1000 : c);
  }

  /** The owner given to `create({user_id})`. */
  get userId(): string | null {
    const u = this.info?.metadata?.[USER_ID_KEY];
    return typeof u === "string" ? u : null;
  }

  /**
   * Vtrix's `uploadFile(localPath, sandboxPath, {mkdirRecursive})`: copies a local file into the
   * sandbox, streamed from disk. (BandSox's bytes-to-path upload is `MicroVM.uploadFile`.)
   */
  override async uploadFile(
    localPath: string,
    sandboxPath: string,
    opts: { mkdirRecursive?: boolean } & CallOptions = {},
  ): Promise<{ path: string; size: number }> {
    if (typeof sandboxPath !== "string") {
      throw new InvalidInputError("uploadFile(localPath, sandboxPath): sandboxPath must be a guest path", { code: "invalid_input" });
    }
    return await this.uploadLocalFile(localPath, sandboxPath, opts);
  }

  /**
   * Stops the sandbox (its disk stays; `start()` boots it again). `blocking` polls every
   * `pollIntervalMs` (2000) until it is stopped or failed, for at most `timeoutMs` (300 000).
   */
  override async stop(opts: { blocking?: boolean; pollIntervalMs?: number; timeoutMs?: number } & CallOptions = {}): Promise<void> {
    await super.stop(opts);
    if (!opts.blocking) {
      await this.refresh().catch(() => undefined);
      return;
    }
    const end = Date.now() + (opts.timeoutMs ?? 300_000);
    for (;;) {
      const info = await this.refresh();
      if (info.status === "stopped" || info.status === "failed") return;
      if (Date.now() >= end) {
        throw new UnsupportedError(`sandbox ${this.id} is still ${info.status} after ${opts.timeoutMs ?? 300_000} ms`, {
          code: "client_timeout",
        });
      }
      await new Promise((r) => setTimeout(r, opts.pollIntervalMs ?? 2000));
    }
  }

  /** Boots the stopped sandbox again (and reopens the WebSocket when it was open). */
  override async start(call: CallOptions = {}): Promise<void> {
    await this.reboot(() => super.start(call), call);
  }

  /** Stops and boots the sandbox again (and reopens the WebSocket when it was open). */
  override async restart(call: CallOptions = {}): Promise<void> {
    await this.reboot(() => super.restart(call), call);
  }

  /** Runs a boot with the WebSocket closed, then refreshes the info and reopens it if it was open. */
  private async reboot(boot: () => Promise<void>, call: CallOptions): Promise<void> {
    const wasConnected = this.connected;
    this.close();
    await boot();
    await this.refresh(call);
    if (wasConnected) await this.connect(call);
  }

  /**
   * The URL of `port` inside the sandbox: the server's port proxy
   * (`{proxy_url}/api/vms/{id}/ports/{port}/`). Send the client's token with requests to it.
   */
  domain(port: number): string {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new InvalidInputError(`port must be 1..65535 (got ${String(port)})`, { code: "invalid_input" });
    }
    const base = this.proxy ?? this.owner.baseURL; // the API listener redirects (307) to the proxy
    return `${base}/api/vms/${encodeURIComponent(this.id)}/ports/${port}/`;
  }

  /**
   * Changes the spec or image. A running VM keeps its vCPUs, memory, disk and image here, so a
   * change is refused (`UnsupportedError`, code `unsupported`); the same values are accepted.
   */
  async update(opts: { spec?: Spec; image?: string } = {}, call: CallOptions = {}): Promise<void> {
    const info = await this.refresh(call);
    const want: Array<[string, unknown, unknown]> = [];
    const spec = opts.spec ?? {};
    if (spec.cpu !== undefined) want.push(["cpu", parseCpu(spec.cpu), info.vcpu]);
    if (spec.memory !== undefined) want.push(["memory", parseMiB(spec.memory, "memory"), info.mem_mib]);
    if (spec.disk !== undefined) want.push(["disk", parseMiB(spec.disk, "disk"), info.disk_size_mib]);
    const image = opts.image ?? spec.image;
    if (image !== undefined) want.push(["image", image, info.image]);
    const changed = want.filter(([, a, b]) => a !== b).map(([k]) => k);
    if (changed.length) {
      throw new UnsupportedError(
        `cannot change ${changed.join(", ")} of sandbox ${this.id}: a VM keeps its shape; create a new sandbox with the new spec`,
        { code: "unsupported", hint: "snapshot() then create() with the new spec, or client.create({spec})" },
      );
    }
  }

  /** Writes the sandbox's payloads again (or `opts.payloads`, which replace them for this call only). */
  async configure(opts: { payloads?: Payload[] } = {}, call: CallOptions = {}): Promise<void> {
    const payloads = opts.payloads ?? this.payloads;
    if (!payloads.length) return;
    await this.writeFiles(payloads.map((p) => ({ path: p.path, content: p.content, mode: p.mode })), call);
  }
}
