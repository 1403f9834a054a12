/** `BandSox`: the client of a `bandsox serve` server. */

import { UnsupportedError, VmNotFoundError } from "./errors.js";
import { execStream } from "./stream.js";
import { packContext } from "./tar.js";
import { Transport, compact, seg } from "./transport.js";
import type {
  ApiKeyInfo,
  AuthCheckResult,
  CallOptions,
  CreateVmOptions,
  CreatedApiKey,
  ExecStreamOptions,
  ListResult,
  ListVmsOptions,
  RestoreVmOptions,
  SnapshotInfo,
  TemplateInfo,
  BuildTemplateOptions,
  SnapshotOptions,
  VmInfo,
} from "./types.js";
import { MicroVM } from "./vm.js";

export interface BandSoxOptions {
  /** Server URL; default `$BANDSOX_URL` or `http://127.0.0.1:8000`. */
  baseUrl?: string;
  /** Sent with every request (e.g. `{ Authorization: "Bearer bsx_..." }`). */
  headers?: Record<string, string>;
  /** Shortcut for `headers.Authorization = "Bearer <apiKey>"`; default `$BANDSOX_API_KEY`. */
  apiKey?: string;
  /** Milliseconds every call may take (default 60 000). Commands get their own timeout + 30 s. */
  timeout?: number;
  /** Milliseconds that calls booting a VM (create, restore, start, snapshot) may take (default 180 000). */
  bootTimeout?: number;
}

export class BandSox {
  readonly baseUrl: string;
  readonly timeout: number;
  readonly bootTimeout: number;
  /** @internal */
  readonly transport: Transport;

  constructor(options: BandSoxOptions = {}) {
    const env = typeof process !== "undefined" ? process.env : {};
    this.baseUrl = (options.baseUrl ?? env.BANDSOX_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, "");
    if (!/^https?:\/\//.test(this.baseUrl)) {
      throw new UnsupportedError(`baseUrl must start with http:// or https:// (got ${JSON.stringify(this.baseUrl)})`, {
        code: "invalid_input",
      });
    }
    const headers = { ...(options.headers ?? {}) };
    const hasAuth = Object.keys(headers).some((k) => k.toLowerCase() === "authorization");
    const key = options.apiKey ?? env.BANDSOX_API_KEY;
    if (!hasAuth && key) headers.Authorization = `Bearer ${key}`;
    this.timeout = options.timeout ?? 60_000;
    this.bootTimeout = Math.max(options.bootTimeout ?? 180_000, this.timeout);
    this.transport = new Transport(this.baseUrl, headers, this.timeout);
  }

  /** `{version, backend, accelerator}` of the server. */
  async version(opts: CallOptions = {}): Promise<{ version: string; backend: string; accelerator: string }> {
    return await this.transport.json("GET", "/api/version", opts);
  }

  // -- VMs ---------------------------------------------------------------------------------------

  /** Creates a VM from an image; resolves once its agent answers. */
  async createVm(options: CreateVmOptions, call: CallOptions = {}): Promise<MicroVM> {
    const out = await this.transport.json<{ id: string }>("POST", "/api/vms", {
      json: compact({ ...options }),
      timeout: call.timeout ?? this.bootTimeout,
      signal: call.signal,
    });
    return await this.getVm(out.id, call);
  }

  /**
   * Builds an image from Dockerfile text on the server (in VMs: `RUN` steps run there), then
   * creates a VM of it (`POST /api/vms/from-dockerfile`). `context` is a local folder sent as
   * the build context (a tar of its folders, files and links, built in memory; the server
   * applies its `.dockerignore` and refuses sources that leave it); without one `COPY`/`ADD`
   * are refused (`InvalidInputError`). `build_args` fill `ARG`s. A failing step throws
   * `InvalidInputError` with code `build_failed` and the step's output tail. `tag` names the
   * image (default `bandsox-build-<id>`); the same text, arguments and context under the same
   * tag are reused unless `force_rebuild`. The default timeout is three boot timeouts plus ten
   * minutes.
   */
  async createVmFromDockerfile(
    dockerfile: string,
    options: { tag?: string; name?: string; context?: string; build_args?: Record<string, string> } & Partial<
      Omit<CreateVmOptions, "image">
    > = {},
    call: CallOptions = {},
  ): Promise<MicroVM> {
    const { context, ...fields } = options;
    const form = new FormData();
    form.append("dockerfile", new Blob([dockerfile], { type: "text/plain" }), "Dockerfile");
    if (context !== undefined) {
      const tar = await packContext(context);
      form.append("context", new Blob([tar], { type: "application/x-tar" }), "context.tar");
    }
    for (const [key, value] of Object.entries(fields)) {
      if (value === undefined || value === null) continue;
      form.append(key, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    const out = await this.transport.json<{ id: string }>("POST", "/api/vms/from-dockerfile", {
      body: form,
      timeout: call.timeout ?? 3 * this.bootTimeout + 600_000,
      signal: call.signal,
    });
    return await this.getVm(out.id, call);
  }

  /** Starts a new VM from a snapshot. */
  async restoreVm(snapshotId: string, options: RestoreVmOptions = {}, call: CallOptions = {}): Promise<MicroVM> {
    const out = await this.transport.json<{ id: string }>("POST", `/api/snapshots/${seg(snapshotId)}/restore`, {
      json: compact({ ...options }),
      timeout: call.timeout ?? this.bootTimeout,
      signal: call.signal,
      snapshotRoute: true,
    });
    return await this.getVm(out.id, call);
  }

  /** A {@link MicroVM} handle with its info fetched (throws `VmNotFoundError`). */
  async getVm(vmId: string, call: CallOptions = {}): Promise<MicroVM> {
    const info = await this.getVmInfo(vmId, call);
    if (info === null) throw new VmNotFoundError(`VM ${vmId} not found`, { statusCode: 404, code: "vm_not_found" });
    return new MicroVM(this, info.id ?? vmId, info);
  }

  /** A {@link MicroVM} handle without a request (the Vtrix `attach`; info fetched on demand). */
  vm(vmId: string): MicroVM {
    return new MicroVM(this, vmId, null);
  }

  /** The VM object, or null when there is no such VM (404 `vm_not_found`, as BandSox's `get_vm_info`). */
  async getVmInfo(vmId: string, call: CallOptions = {}): Promise<VmInfo | null> {
    try {
      return await this.transport.json<VmInfo>("GET", `/api/vms/${seg(vmId)}`, call);
    } catch (e) {
      if (e instanceof VmNotFoundError) return null;
      throw e;
    }
  }

  /** VM objects, newest first (`limit`, `offset`, `metadata_equals`, `status`, `name`). */
  async listVms(options: ListVmsOptions = {}, call: CallOptions = {}): Promise<VmInfo[]> {
    return (await this.listVmsPage(options, call)).items;
  }

  /** Like {@link listVms}, with `pagination: {total, limit, offset, has_more}` (`X-Total-Count`). */
  async listVmsPage(options: ListVmsOptions = {}, call: CallOptions = {}): Promise<ListResult<VmInfo>> {
    return await this.listAt("/api/vms", options, call);
  }

  /** `GET /api/projects`: today the same VM list as {@link listVms} (a URL-level alias). */
  async listProjects(options: ListVmsOptions = {}, call: CallOptions = {}): Promise<VmInfo[]> {
    return (await this.listAt("/api/projects", options, call)).items;
  }

  private async listAt(path: string, options: ListVmsOptions, call: CallOptions): Promise<ListResult<VmInfo>> {
    const query = {
      limit: options.limit,
      offset: options.offset,
      status: options.status,
      name: options.name,
      metadata_equals: options.metadata_equals === undefined ? undefined : JSON.stringify(options.metadata_equals),
    };
    const resp = await this.transport.send("GET", path, { ...call, query });
    const items = await this.transport.readAll(resp, call, `GET ${path}`, (r) => r.json() as Promise<VmInfo[]>);
    const header = Number.parseInt(resp.headers.get("x-total-count") ?? "", 10);
    const offset = options.offset ?? 0;
    const total = Number.isFinite(header) ? header : offset + items.length;
    return {
      items,
      pagination: { total, limit: options.limit ?? null, offset, has_more: offset + items.length < total },
    };
  }

  /** Stops the VM and removes it with its disk. */
  async deleteVm(vmId: string, call: CallOptions = {}): Promise<void> {
    await this.transport.json("DELETE", `/api/vms/${seg(vmId)}`, call);
  }

  /** Renames a VM; resolves with the new name. */
  async renameVm(vmId: string, newName: string, call: CallOptions = {}): Promise<string> {
    const out = await this.transport.json<{ name?: string }>("PUT", `/api/vms/${seg(vmId)}/name`, {
      ...call,
      json: { name: newName },
    });
    return out?.name ?? newName;
  }

  /** Replaces a VM's metadata; resolves with the updated VM object. */
  async updateVmMetadata(vmId: string, metadata: Record<string, unknown>, call: CallOptions = {}): Promise<VmInfo> {
    return await this.transport.json("PUT", `/api/vms/${seg(vmId)}/metadata`, { ...call, json: { metadata } });
  }

  /** @internal */
  async vmAction(vmId: string, action: string, call: CallOptions, boots = false): Promise<string> {
    const out = await this.transport.json<{ status?: string }>("POST", `/api/vms/${seg(vmId)}/${action}`, {
      timeout: call.timeout ?? (boots ? this.bootTimeout : this.timeout),
      signal: call.signal,
    });
    return out?.status ?? "";
  }

  async stopVm(vmId: string, call: CallOptions = {}): Promise<void> {
    await this.vmAction(vmId, "stop", call);
  }

  async pauseVm(vmId: string, call: CallOptions = {}): Promise<void> {
    await this.vmAction(vmId, "pause", call);
  }

  async resumeVm(vmId: string, call: CallOptions = {}): Promise<void> {
    await this.vmAction(vmId, "resume", call);
  }

  /** Boots a stopped VM from its disk again. */
  async startVm(vmId: string, call: CallOptions = {}): Promise<void> {
    await this.vmAction(vmId, "start", call, true);
  }

  async restartVm(vmId: string, call: CallOptions = {}): Promise<void> {
    await this.vmAction(vmId, "restart", call, true);
  }

  /**
   * Runs a command over the exec-stream WebSocket, calling `onStdout`/`onStderr` as output
   * arrives. Resolves with `{exit_code, stdout, stderr}`.
   */
  async execStream(vmId: string, options: ExecStreamOptions, call: Pick<CallOptions, "signal"> = {}): Promise<{ exit_code: number; stdout: string; stderr: string }> {
    let stdout = "";
    let stderr = "";
    const exit_code = await execStream(
      this.transport,
      vmId,
      options.command,
      options.timeout ?? 600,
      (ev) => {
        if (ev.type === "stdout") {
          stdout += ev.data;
          options.onStdout?.(ev.data);
        } else if (ev.type === "stderr") {
          stderr += ev.data;
          options.onStderr?.(ev.data);
        }
      },
      call.signal,
    );
    return { exit_code, stdout, stderr };
  }

  // -- snapshots ---------------------------------------------------------------------------------

  /** Snapshots a running or paused VM; resolves with the snapshot id. */
  async snapshotVm(vmId: string, options: SnapshotOptions = {}, call: CallOptions = {}): Promise<string> {
    const out = await this.transport.json<{ snapshot_id: string }>("POST", `/api/vms/${seg(vmId)}/snapshot`, {
      json: compact({ name: options.name ?? `${vmId}-snapshot`, metadata: options.metadata }),
      timeout: call.timeout ?? this.bootTimeout,
      signal: call.signal,
    });
    return out.snapshot_id;
  }

  /** Forks a running VM into `count` new running VMs (`POST /api/vms/{id}/fork`). */
  async forkVm(vmId: string, count = 1, names?: string[], call: CallOptions = {}): Promise<MicroVM[]> {
    const out = await this.transport.json<{ ids: string[] }>("POST", `/api/vms/${seg(vmId)}/fork`, {
      json: compact({ count, names }),
      timeout: call.timeout ?? this.bootTimeout * 2 + 300_000,
      signal: call.signal,
    });
    return await Promise.all(out.ids.map((id) => this.getVm(id, call)));
  }

  async listTemplates(call: CallOptions = {}): Promise<TemplateInfo[]> {
    return await this.transport.json("GET", "/api/templates", call);
  }

  /** Builds (or returns the existing) template of an image and shape. */
  async buildTemplate(options: BuildTemplateOptions, call: CallOptions = {}): Promise<TemplateInfo> {
    return await this.transport.json("POST", "/api/templates", {
      json: compact({ ...options }),
      timeout: call.timeout ?? this.bootTimeout * 2 + 600_000,
      signal: call.signal,
    });
  }

  async deleteTemplate(templateId: string, call: CallOptions = {}): Promise<void> {
    await this.transport.json("DELETE", `/api/templates/${seg(templateId)}`, call);
  }

  async listSnapshots(call: CallOptions = {}): Promise<SnapshotInfo[]> {
    return await this.transport.json("GET", "/api/snapshots", call);
  }

  async getSnapshot(snapshotId: string, call: CallOptions = {}): Promise<SnapshotInfo> {
    return await this.transport.json("GET", `/api/snapshots/${seg(snapshotId)}`, { ...call, snapshotRoute: true });
  }

  async deleteSnapshot(snapshotId: string, call: CallOptions = {}): Promise<void> {
    await this.transport.json("DELETE", `/api/snapshots/${seg(snapshotId)}`, { ...call, snapshotRoute: true });
  }

  async updateSnapshotMetadata(snapshotId: string, metadata: Record<string, unknown>, call: CallOptions = {}): Promise<SnapshotInfo> {
    return await this.transport.json("PUT", `/api/snapshots/${seg(snapshotId)}/metadata`, {
      ...call,
      json: { metadata },
      snapshotRoute: true,
    });
  }

  async renameSnapshot(snapshotId: string, newName: string, call: CallOptions = {}): Promise<string> {
    const out = await this.transport.json<{ name?: string }>("PUT", `/api/snapshots/${seg(snapshotId)}/name`, {
      ...call,
      json: { name: newName },
      snapshotRoute: true,
    });
    return out?.name ?? newName;
  }

  // -- auth --------------------------------------------------------------------------------------

  /** Whether the current credentials (API key or session) are accepted. */
  async authCheck(call: CallOptions = {}): Promise<AuthCheckResult> {
    return await this.transport.json("GET", "/api/auth/check", call);
  }

  /** Logs in with the admin password; later requests send the returned session token. */
  async login(password: string, call: CallOptions = {}): Promise<{ status: string; token: string }> {
    const out = await this.transport.json<{ status: string; token: string }>("POST", "/api/auth/login", {
      ...call,
      json: { password },
    });
    this.transport.sessionToken = out.token;
    return out;
  }

  /** Ends the session on the server and forgets its token. */
  async logout(call: CallOptions = {}): Promise<void> {
    try {
      await this.transport.json("POST", "/api/auth/logout", call);
    } finally {
      this.transport.sessionToken = undefined;
    }
  }

  async listApiKeys(call: CallOptions = {}): Promise<ApiKeyInfo[]> {
    return await this.transport.json("GET", "/api/auth/keys", call);
  }

  /** Creates an API key; `key` is only shown in this answer. */
  async createApiKey(name: string, call: CallOptions = {}): Promise<CreatedApiKey> {
    return await this.transport.json("POST", "/api/auth/keys", { ...call, json: { name } });
  }

  async revokeApiKey(keyId: string, call: CallOptions = {}): Promise<void> {
    await this.transport.json("DELETE", `/api/auth/keys/${seg(keyId)}`, call);
  }
}
