/** `MicroVM`: one VM on the server, with BandSox's methods and the Vtrix-style extras. */

import { randomUUID } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat as fsStat } from "node:fs/promises";
import { basename, dirname, resolve as resolvePath } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

import type { BandSox } from "./client.js";
import { Command, CommandFinished, signalName } from "./command.js";
import { BandSoxError, NotFoundError, VmNotFoundError } from "./errors.js";
import { EXEC_MARGIN_MS, EventQueue, type StreamEvent, execStream } from "./stream.js";
import { Terminal } from "./terminal.js";
import { VmSocket } from "./socket.js";
import { type RequestOptions, compact, seg } from "./transport.js";
import type {
  CallOptions,
  CommandState,
  DirListing,
  EditResult,
  ExecEvent,
  ExecPythonOptions,
  ExecPythonResult,
  ExecResult,
  FileEntry,
  FileInfo,
  FileInfoResult,
  HttpProxyResult,
  HttpRequestOptions,
  ReadResult,
  RunOptions,
  SnapshotOptions,
  VmInfo,
  VmStatus,
  WriteFileOptions,
  WriteFilesEntry,
  WriteResult,
} from "./types.js";

/** Size of `read()` before it truncates (like Vtrix: 200 KB). */
const READ_LIMIT = 200 * 1024;

/** POSIX shell quoting. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_\-./=:@%+,]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function toIso(mtime: unknown): string | undefined {
  return typeof mtime === "number" && Number.isFinite(mtime) ? new Date(mtime * 1000).toISOString() : undefined;
}

function toBase64(content: Uint8Array | string): string {
  return typeof content === "string" ? Buffer.from(content, "utf8").toString("base64") : Buffer.from(content).toString("base64");
}

/**
 * One VM. `S` is the type of {@link status}: the server's {@link VmStatus} here, Vtrix's words
 * in `Sandbox`.
 */
export class MicroVM<S extends string = VmStatus> {
  /** The VM id. */
  readonly id: string;
  private cached: VmInfo | null;
  private socket: VmSocket | null = null;

  constructor(
    readonly client: BandSox,
    id: string,
    info: VmInfo | null,
  ) {
    this.id = id;
    this.cached = info;
  }

  /** Cached VmInfo from the last `getInfo()` (or `getVm`). */
  get info(): VmInfo | null {
    return this.cached;
  }

  /** Cached status (call `getInfo()`/`refresh()` for the current one). */
  get status(): S | undefined {
    return this.cached?.status as S | undefined; // `Sandbox` overrides this with Vtrix's words
  }

  get name(): string | null | undefined {
    return this.cached?.name;
  }

  /** Cached creation time. */
  get createdAt(): Date | undefined {
    const c = this.cached?.created_at;
    if (c === undefined || c === null) return undefined;
    return new Date(typeof c === "number" ? c * 1000 : c);
  }

  /** Cached expiry as RFC 3339, null when the VM has no timeout. */
  get expireAt(): string | null {
    const e = this.cached?.expires_at;
    return typeof e === "number" ? new Date(e * 1000).toISOString() : null;
  }

  /** Milliseconds left before the timeout action (from the cached info); Infinity without one, 0 once past. */
  get timeout(): number {
    const e = this.cached?.expires_at;
    return typeof e === "number" ? Math.max(0, e * 1000 - Date.now()) : Infinity;
  }

  private get t() {
    return this.client.transport;
  }

  private path(suffix = ""): string {
    return `/api/vms/${seg(this.id)}${suffix}`;
  }

  /**
   * A JSON operation of this VM (`suffix` after `/api/vms/{id}`): over the persistent socket
   * when {@link connect} opened one, else over HTTP.
   * @internal
   */
  async request<T>(method: string, suffix: string, opts: RequestOptions = {}): Promise<T> {
    if (this.socket?.isOpen && opts.body === undefined) {
      return await this.socket.request<T>(method, suffix, {
        query: opts.query,
        json: opts.json,
        timeout: opts.timeout ?? this.client.timeout,
        signal: opts.signal,
      });
    }
    return await this.t.json<T>(method, this.path(suffix), opts);
  }

  /**
   * Opens the persistent per-VM WebSocket (`/api/vms/{id}/socket`): from then on this handle's
   * JSON operations and streamed commands share one connection (faster for many small calls).
   * Uploads and downloads stay on HTTP. {@link close} ends it; when it drops, pending calls
   * reject with `WebSocketError` and later calls use HTTP again.
   */
  async connect(call: CallOptions = {}): Promise<this> {
    if (!this.socket?.isOpen) this.socket = await VmSocket.open(this.t, this.id, call.timeout);
    return this;
  }

  /** Whether the persistent socket is open. */
  get connected(): boolean {
    return this.socket?.isOpen ?? false;
  }

  /** Closes the persistent socket (if any); the handle keeps working over HTTP. */
  close(): void {
    this.socket?.close();
    this.socket = null;
  }

  // -- lifecycle ---------------------------------------------------------------------------------

  /** The VM object, fetched now (throws `VmNotFoundError` once the VM is gone). */
  async getInfo(call: CallOptions = {}): Promise<VmInfo> {
    const info = await this.client.getVmInfo(this.id, call);
    if (info === null) throw new VmNotFoundError(`VM ${this.id} not found`, { statusCode: 404, code: "vm_not_found" });
    this.cached = info;
    return info;
  }

  /** Same as {@link getInfo} (Vtrix's name). */
  async refresh(call: CallOptions = {}): Promise<VmInfo> {
    return await this.getInfo(call);
  }

  async stop(call: CallOptions = {}): Promise<void> {
    await this.client.stopVm(this.id, call);
  }

  async pause(call: CallOptions = {}): Promise<void> {
    await this.client.pauseVm(this.id, call);
  }

  async resume(call: CallOptions = {}): Promise<void> {
    await this.client.resumeVm(this.id, call);
  }

  /** Boots a stopped VM from its disk. */
  async start(call: CallOptions = {}): Promise<void> {
    await this.client.startVm(this.id, call);
  }

  async restart(call: CallOptions = {}): Promise<void> {
    await this.client.restartVm(this.id, call);
  }

  async delete(call: CallOptions = {}): Promise<void> {
    await this.client.deleteVm(this.id, call);
  }

  /** Snapshots the VM; resolves with the snapshot id. */
  async snapshot(options: SnapshotOptions = {}, call: CallOptions = {}): Promise<string> {
    return await this.client.snapshotVm(this.id, options, call);
  }

  /**
   * `count` new running VMs with this VM's memory and disk at this instant (it is paused only
   * for one snapshot); each has its own hostname, machine id and address.
   */
  async fork(count = 1, names?: string[], call: CallOptions = {}): Promise<MicroVM[]> {
    return await this.client.forkVm(this.id, count, names, call);
  }

  async rename(newName: string, call: CallOptions = {}): Promise<string> {
    const name = await this.client.renameVm(this.id, newName, call);
    if (this.cached) this.cached.name = name;
    return name;
  }

  async updateMetadata(metadata: Record<string, unknown>, call: CallOptions = {}): Promise<VmInfo> {
    this.cached = await this.client.updateVmMetadata(this.id, metadata, call);
    return this.cached;
  }

  /** Pushes the VM's timeout `seconds` further (1..86400); resolves with the VM object. */
  async extend(seconds: number, call: CallOptions = {}): Promise<VmInfo> {
    this.cached = await this.request<VmInfo>("POST", "/extend", { ...call, json: { seconds } });
    return this.cached;
  }

  /** Same as {@link extend}, which already refreshes the cached info. */
  async extendTimeout(seconds: number, call: CallOptions = {}): Promise<VmInfo> {
    return await this.extend(seconds, call);
  }

  /** Sets the timeout to `timeoutS` from now (0 clears it) and optionally its action. */
  async setTimeout(timeoutS: number, action?: "stop" | "pause" | "delete", call: CallOptions = {}): Promise<VmInfo> {
    this.cached = await this.request<VmInfo>("POST", "/timeout", {
      ...call,
      json: compact({ timeout_s: timeoutS, action }),
    });
    return this.cached;
  }

  /**
   * Polls until the guest agent answers; resolves `true`, or `false` when `timeout` seconds
   * pass (BandSox's contract). Throws when the VM failed or does not exist.
   */
  async waitForAgent(timeout = 30): Promise<boolean> {
    const end = Date.now() + timeout * 1000;
    for (;;) {
      const info = await this.getInfo({ timeout: Math.max(1000, Math.min(this.client.timeout, end - Date.now() + 1000)) });
      if (info.agent_ready || info.status === "running") return true;
      if (info.status === "failed") {
        throw new BandSoxError(`VM ${this.id} failed: ${info.error ?? "unknown error"}`, { code: "vm_failed" });
      }
      if (Date.now() >= end) return false;
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Guest IP from the cached info (call `getInfo()` first); null without networking. */
  getGuestIp(): string | null {
    const ip = this.cached?.network_config?.guest_ip;
    return typeof ip === "string" ? ip : null;
  }

  // -- BandSox commands --------------------------------------------------------------------------

  /** Runs a shell command line (`timeout` in seconds, default 30) and resolves with its output. */
  async execCommand(command: string, timeout = 30, opts: { env?: Record<string, string>; cwd?: string; signal?: AbortSignal } = {}): Promise<ExecResult> {
    const out = await this.request<ExecResult>("POST", "/exec", {
      json: compact({ command, timeout, env: opts.env, cwd: opts.cwd }),
      timeout: timeout * 1000 + EXEC_MARGIN_MS,
      signal: opts.signal,
    });
    return { ...out, stdout: out.stdout ?? "", stderr: out.stderr ?? "" };
  }

  /** Runs Python code in a venv with optional packages. */
  async execPython(options: ExecPythonOptions, call: Pick<CallOptions, "signal"> = {}): Promise<ExecPythonResult> {
    const timeout = options.timeout ?? 60;
    return await this.request("POST", "/exec-python", {
      json: compact({ ...options, timeout }),
      timeout: timeout * 1000 * (options.packages?.length ? 3 : 1) + EXEC_MARGIN_MS,
      signal: call.signal,
    });
  }

  // -- BandSox files -----------------------------------------------------------------------------

  async listDir(path = "/", call: CallOptions = {}): Promise<DirListing> {
    const out = await this.request<DirListing>("GET", "/files", { ...call, query: { path } });
    return { ...out, files: out.files ?? [] };
  }

  /** The file's text (UTF-8). */
  async readFile(path: string, call: CallOptions = {}): Promise<string> {
    const out = await this.request<{ content?: string }>("GET", "/read-file", { ...call, query: { path } });
    return out.content ?? "";
  }

  /** Writes a string (`encoding` `utf-8` or `base64`); parents are created. */
  async writeFile(options: WriteFileOptions, call: CallOptions = {}): Promise<void> {
    await this.request("POST", options.append ? "/append-file" : "/write-file", {
      json: compact({
        path: options.path,
        content: options.content,
        encoding: options.encoding ?? "utf-8",
        append: options.append ?? false,
        mode: typeof options.mode === "string" ? Number.parseInt(options.mode, 8) : options.mode,
      }),
      timeout: call.timeout ?? this.sizeTimeout(options.content.length),
      signal: call.signal,
    });
  }

  async appendFile(path: string, content: string, encoding: "utf-8" | "base64" = "utf-8", call: CallOptions = {}): Promise<void> {
    await this.writeFile({ path, content, encoding, append: true }, call);
  }

  async appendText(path: string, content: string, call: CallOptions = {}): Promise<void> {
    await this.appendFile(path, content, "utf-8", call);
  }

  /** `{size, mode, mtime, is_dir, is_file}`; throws `NotFoundError` when missing. */
  async getFileInfo(path: string, call: CallOptions = {}): Promise<FileInfoResult> {
    const out = await this.request<{ info?: FileInfoResult }>("GET", "/file-info", { ...call, query: { path } });
    return (out.info ?? out) as FileInfoResult;
  }

  /**
   * `downloadFile(remotePath)`: the bytes (BandSox). `downloadFile(remotePath, localPath, opts)`:
   * streams to a local file (written atomically) and resolves with its absolute path, or null
   * when the guest file does not exist (Vtrix).
   */
  async downloadFile(remotePath: string): Promise<Uint8Array>;
  async downloadFile(remotePath: string, localPath: string, opts?: { mkdirRecursive?: boolean } & CallOptions): Promise<string | null>;
  async downloadFile(
    remotePath: string,
    localPath?: string,
    opts: { mkdirRecursive?: boolean } & CallOptions = {},
  ): Promise<Uint8Array | string | null> {
    if (localPath === undefined) {
      const resp = await this.t.send("GET", this.path("/download"), { query: { path: remotePath }, timeout: opts.timeout ?? 300_000 });
      const buf = await this.t.readAll(resp, opts, `download ${remotePath}`, (r) => r.arrayBuffer());
      return new Uint8Array(buf);
    }
    const local = resolvePath(localPath);
    if (opts.mkdirRecursive) await mkdir(dirname(local), { recursive: true });
    const tmp = `${dirname(local)}/.${basename(local)}.part`;
    const ms = opts.timeout ?? 300_000;
    let resp: Response;
    try {
      resp = await this.t.send("GET", this.path("/download"), { query: { path: remotePath }, timeout: ms, signal: opts.signal });
    } catch (e) {
      if (e instanceof NotFoundError && e.code !== "vm_not_found") return null;
      throw e;
    }
    try {
      await this.t.readAll(resp, opts, `download ${remotePath}`, async (r) => {
        if (!r.body) throw new BandSoxError("empty download body", { code: "bad_response" });
        await pipeline(Readable.fromWeb(r.body as import("node:stream/web").ReadableStream), createWriteStream(tmp));
      });
      await rename(tmp, local);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
    return local;
  }

  /**
   * Uploads bytes or a string to a guest path (multipart `/upload`, streamed). BandSox's
   * `uploadFile(remotePath, content)`; for a local file use {@link uploadLocalFile}.
   */
  async uploadFile(remotePath: string, content: Uint8Array | string, call: CallOptions = {}): Promise<{ path: string; size: number }> {
    const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : content;
    return await this.uploadBlob(remotePath, new Blob([bytes]), call.timeout ?? this.sizeTimeout(bytes.length), call.signal);
  }

  /**
   * Vtrix's `uploadFile(localPath, sandboxPath, {mkdirRecursive})`: copies a local file into the
   * guest, streamed from disk (a multipart body built on the fly, never read whole).
   */
  async uploadLocalFile(localPath: string, sandboxPath: string, opts: { mkdirRecursive?: boolean } & CallOptions = {}): Promise<{ path: string; size: number }> {
    if (opts.mkdirRecursive) await this.mkDir(dirname(sandboxPath) || "/");
    const size = (await fsStat(localPath)).size;
    const boundary = `----bandsox-${randomUUID()}`;
    const filename = (basename(sandboxPath) || "file").replace(/["\r\n\\]/g, "_");
    const head = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="remote_path"\r\n\r\n${sandboxPath}\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\n` +
        "Content-Type: application/octet-stream\r\n\r\n",
    );
    const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
    async function* parts(): AsyncGenerator<Buffer> {
      yield head;
      for await (const chunk of createReadStream(localPath)) yield chunk as Buffer;
      yield tail;
    }
    return await this.t.json("POST", this.path("/upload"), {
      body: Readable.toWeb(Readable.from(parts())) as unknown as ReadableStream,
      headers: {
        "Content-Type": `multipart/form-data; boundary=${boundary}`,
        "Content-Length": String(head.length + size + tail.length),
      },
      timeout: opts.timeout ?? this.sizeTimeout(size),
      signal: opts.signal,
    });
  }

  private async uploadBlob(remotePath: string, blob: Blob, timeout: number, signal?: AbortSignal): Promise<{ path: string; size: number }> {
    const form = new FormData();
    form.append("remote_path", remotePath);
    form.append("file", blob, basename(remotePath) || "file");
    return await this.request("POST", "/upload", { body: form, timeout, signal });
  }

  /** Uploads `{relativePath: content}` under `remoteBase` (one batch request). */
  async uploadFolder(files: Record<string, string | Uint8Array>, remoteBase: string, call: CallOptions = {}): Promise<void> {
    const base = remoteBase.replace(/\/+$/, "");
    await this.writeFiles(
      Object.entries(files).map(([rel, content]) => ({ path: `${base}/${rel.replace(/^\/+/, "")}`, content })),
      call,
    );
  }

  /**
   * Proxies an HTTP request to a port inside the VM (`POST /api/vms/{id}/http`). The server does
   * not serve this route yet: it answers 404 `route_not_found` (a `NotFoundError`).
   */
  async sendHttpRequest(options: HttpRequestOptions, call: Pick<CallOptions, "signal"> = {}): Promise<HttpProxyResult> {
    const timeout = options.timeout ?? 30;
    return await this.request("POST", "/http", {
      json: compact({
        port: options.port,
        path: options.path ?? "/",
        method: options.method ?? "GET",
        headers: options.headers,
        body: typeof options.body === "string" ? options.body : undefined,
        body_base64: options.body instanceof Uint8Array ? toBase64(options.body) : undefined,
        json_body: options.json,
        timeout,
      }),
      timeout: timeout * 1000 + EXEC_MARGIN_MS,
      signal: call.signal,
    });
  }

  /** Opens an interactive PTY over the terminal WebSocket (`bandsox.terminal` subprotocol). */
  connectTerminal(cols = 80, rows = 24): Terminal {
    return new Terminal(this.t, this.path("/terminal"), cols, rows);
  }

  private sizeTimeout(bytes: number): number {
    return Math.max(this.client.timeout, 60_000 + (30_000 * bytes) / (1 << 20));
  }

  // -- Vtrix-style commands ----------------------------------------------------------------------

  /** The command line for `cmd` plus shell-quoted `args`, with `sudo`. */
  private commandLine(cmd: string, args?: string[], opts: RunOptions = {}): string {
    let line = [cmd, ...(args ?? []).map(shellQuote)].join(" ");
    if (opts.sudo) line = `sudo -E sh -c ${shellQuote(line)}`;
    return line;
  }

  /**
   * Runs a command and resolves when it ends. `opts.stdout`/`opts.stderr` (anything with a
   * `write(chunk)`) receive output while it runs (over the exec-stream WebSocket). With
   * `opts.stdin` the command runs as a durable command instead, fed that input.
   */
  async runCommand(cmd: string, args?: string[], opts: RunOptions & { signal?: AbortSignal } = {}): Promise<CommandFinished> {
    if (opts.stdin !== undefined) {
      const c = await this.runCommandDetached(cmd, args, { ...opts, stdinOpen: true });
      await c.sendStdin(opts.stdin, { close: true });
      let stdout = "";
      let stderr = "";
      for await (const ev of c.logs()) {
        if (ev.stream === "stdout") {
          stdout += ev.data;
          opts.stdout?.write(ev.data);
        } else {
          stderr += ev.data;
          opts.stderr?.write(ev.data);
        }
      }
      const done = await c.wait();
      return new CommandFinished(c, done.exitCode, stdout, stderr);
    }
    let line = this.commandLine(cmd, args, opts);
    const env = Object.entries(opts.env ?? {});
    if (env.length) line = `env ${env.map(([k, v]) => shellQuote(`${k}=${v}`)).join(" ")} sh -c ${shellQuote(line)}`;
    if (opts.working_dir) line = `cd ${shellQuote(opts.working_dir)} && ${line}`;
    let stdout = "";
    let stderr = "";
    const timeoutS = opts.timeout_sec ?? 600;
    const startedAt = new Date();
    const exitCode = await this.stream(
      line,
      timeoutS,
      (ev) => {
        if (ev.type === "stdout") {
          stdout += ev.data;
          opts.stdout?.write(ev.data);
        } else if (ev.type === "stderr") {
          stderr += ev.data;
          opts.stderr?.write(ev.data);
        }
      },
      opts.signal,
    );
    return new CommandFinished(null, exitCode, stdout, stderr, startedAt);
  }

  /** exec-stream over the persistent socket when open, else its own WebSocket. */
  private async stream(command: string, timeoutS: number, onEvent: (ev: StreamEvent) => void, signal?: AbortSignal): Promise<number> {
    if (this.socket?.isOpen) {
      return await this.socket.stream(command, timeoutS, timeoutS * 1000 + EXEC_MARGIN_MS, onEvent, signal);
    }
    return await execStream(this.t, this.id, command, timeoutS, onEvent, signal);
  }

  /** Starts a durable background command and resolves with its {@link Command} handle at once. */
  async runCommandDetached(
    cmd: string,
    args?: string[],
    opts: Omit<RunOptions, "stdout" | "stderr" | "stdin"> & { stdinOpen?: boolean; user?: string } & CallOptions = {},
  ): Promise<Command> {
    const sentAt = new Date();
    const out = await this.request<{ cmd_id: string; pid: number }>("POST", "/commands", {
      json: compact({
        command: this.commandLine(cmd, args, opts),
        env: opts.env,
        cwd: opts.working_dir,
        user: opts.user,
        timeout: opts.timeout_sec,
        stdin: opts.stdinOpen ?? false,
      }),
      timeout: opts.timeout,
      signal: opts.signal,
    });
    return new Command(this, out.cmd_id, out.pid, opts.working_dir, sentAt);
  }

  /** Runs a command and yields typed events: `start`, `stdout`, `stderr`, then `done`. */
  async *runCommandStream(cmd: string, args?: string[], opts: Omit<RunOptions, "stdout" | "stderr" | "stdin"> = {}): AsyncGenerator<ExecEvent> {
    const q = new EventQueue<ExecEvent>();
    const ctl = new AbortController();
    yield { type: "start" };
    const run = this.runCommand(cmd, args, {
      ...opts,
      signal: ctl.signal,
      stdout: { write: (data: string) => q.push({ type: "stdout", data }) },
      stderr: { write: (data: string) => q.push({ type: "stderr", data }) },
    }).then(
      (r) => {
        q.push({ type: "done", exitCode: r.exitCode });
        q.end();
      },
      (e) => q.end(e),
    );
    try {
      for (;;) {
        const r = await q.next();
        if (r.done) break;
        yield r.value;
      }
    } finally {
      ctl.abort(); // the consumer stopped early: close the socket (the command keeps running)
      await run.catch(() => undefined);
    }
  }

  /**
   * Replays a durable command's output from the start of its buffer, then follows it live until
   * it ends: `start`, `stdout`/`stderr` chunks, `done`.
   */
  async *execLogs(cmdId: string, opts: { pollMs?: number } = {}): AsyncGenerator<ExecEvent> {
    const c = this.getCommand(cmdId);
    yield { type: "start", cmdId };
    for await (const ev of c.logs(opts)) yield { type: ev.stream, data: ev.data };
    const done = await c.wait();
    yield { type: "done", exitCode: done.exitCode };
  }

  /** A {@link Command} handle for a known id (no request). */
  getCommand(cmdId: string): Command {
    return new Command(this, cmdId, 0, undefined);
  }

  /** The durable commands of this VM. */
  async listCommands(call: CallOptions = {}): Promise<CommandState[]> {
    return await this.request("GET", "/commands", call);
  }

  /** Signals a durable command's process group (`SIGTERM` by default). */
  async kill(cmdId: string, signal = "SIGTERM", call: CallOptions = {}): Promise<void> {
    await this.request("POST", `/commands/${seg(cmdId)}/kill`, { ...call, json: { signal: signalName(signal) } });
  }

  // -- Vtrix-style files -------------------------------------------------------------------------

  /** Reads a file: text up to 200 KB (`truncated` beyond), images as base64 `data` + `mime_type`. */
  async read(path: string, call: CallOptions = {}): Promise<ReadResult> {
    const out = await this.request<{ content?: string; truncated?: boolean; mime?: string; encoding?: string; size?: number; path?: string }>("GET", "/read-file",
      { ...call, query: { path, max_bytes: READ_LIMIT } },
    );
    const base = { truncated: out.truncated ?? false, size: out.size, path: out.path ?? path };
    if (out.encoding === "base64" && typeof out.mime === "string" && out.mime.startsWith("image/")) {
      return { ...base, type: "image", data: out.content ?? "", mime_type: out.mime };
    }
    return { ...base, type: "text", content: out.content ?? "" };
  }

  /** Writes a text file (parents created); resolves with the bytes written. */
  async write(path: string, content: string, call: CallOptions = {}): Promise<WriteResult> {
    await this.writeFile({ path, content }, call);
    return { bytes_written: Buffer.byteLength(content, "utf8") };
  }

  /** Replaces the one occurrence of `oldText` (`edit_no_match`/`edit_multiple_matches` otherwise). */
  async edit(path: string, oldText: string, newText: string, call: CallOptions = {}): Promise<EditResult> {
    const out = await this.request<{ status?: string }>("POST", "/files/edit", {
      ...call,
      json: { path, old_text: oldText, new_text: newText },
    });
    return { message: out?.status ?? "edited" };
  }

  /** Writes several files in one request (parents created, optional `mode`). */
  async writeFiles(files: WriteFilesEntry[], call: CallOptions = {}): Promise<void> {
    let size = 0;
    const body = files.map((f) => {
      const content = toBase64(f.content);
      size += content.length;
      return compact({ path: f.path, content, encoding: "base64", mode: f.mode });
    });
    await this.request("POST", "/files/write-batch", {
      json: { files: body },
      timeout: call.timeout ?? this.sizeTimeout(size),
      signal: call.signal,
    });
  }

  /** The whole file as a Buffer, or null when it does not exist. */
  async readToBuffer(path: string, call: CallOptions = {}): Promise<Buffer | null> {
    let resp: Response;
    try {
      resp = await this.t.send("GET", this.path("/download"), { ...call, query: { path }, timeout: call.timeout ?? 300_000 });
    } catch (e) {
      if (e instanceof NotFoundError && e.code !== "vm_not_found") return null;
      throw e;
    }
    return Buffer.from(await this.t.readAll(resp, call, `download ${path}`, (r) => r.arrayBuffer()));
  }

  /** Streams a file in `chunkSize`-byte Buffers (the last may be shorter). */
  async *readStream(path: string, chunkSize = 65536, call: CallOptions = {}): AsyncGenerator<Buffer> {
    if (!(chunkSize > 0)) throw new BandSoxError("chunkSize must be positive", { code: "invalid_input" });
    const ms = call.timeout ?? 300_000;
    const resp = await this.t.send("GET", this.path("/download"), { query: { path }, timeout: ms, signal: call.signal });
    const d = (resp as Response & { _deadline?: { done(): void; timedOut(): boolean } })._deadline;
    let pending = Buffer.alloc(0);
    try {
      if (!resp.body) return;
      const reader = resp.body.getReader();
      for (;;) {
        let r: { done: boolean; value?: Uint8Array };
        try {
          r = await reader.read();
        } catch (e) {
          throw this.t.fetchError(e, d?.timedOut() ?? false, ms, `download ${path}`);
        }
        if (r.done) break;
        if (!r.value) continue;
        pending = pending.length ? Buffer.concat([pending, r.value]) : Buffer.from(r.value);
        while (pending.length >= chunkSize) {
          yield pending.subarray(0, chunkSize);
          pending = pending.subarray(chunkSize);
        }
      }
      if (pending.length) yield pending;
    } finally {
      d?.done();
    }
  }

  /** Creates a directory and its parents (no error when it exists). */
  async mkDir(path: string, call: CallOptions = {}): Promise<void> {
    await this.request("POST", "/files/mkdir", { ...call, json: { path, parents: true } });
  }

  /** Entries of a directory (`modified_at` as RFC 3339). Throws when it is missing. */
  async listFiles(path: string, call: CallOptions = {}): Promise<FileEntry[]> {
    const out = await this.listDir(path, call);
    return out.files.map((e) => ({ name: e.name, path: e.path, size: e.size, is_dir: e.is_dir, modified_at: toIso(e.mtime) }));
  }

  /** Metadata of a path; `exists: false` (not an error) when it is missing. */
  async stat(path: string, call: CallOptions = {}): Promise<FileInfo> {
    const out = await this.request<{ exists: boolean; entry?: Record<string, unknown> }>("GET", "/files/stat", {
      ...call,
      query: { path },
    });
    const e = out.entry ?? {};
    return {
      exists: Boolean(out.exists),
      is_file: Boolean(e.is_file),
      is_dir: Boolean(e.is_dir),
      size: typeof e.size === "number" ? e.size : 0,
      modified_at: toIso(e.mtime),
    };
  }

  async exists(path: string, call: CallOptions = {}): Promise<boolean> {
    return (await this.stat(path, call)).exists;
  }

  /** Removes a file (or a directory tree with `recursive`). */
  async remove(path: string, recursive = false, call: CallOptions = {}): Promise<void> {
    await this.request("POST", "/files/remove", { ...call, json: { path, recursive } });
  }

  /** Downloads several files, at most 8 at a time: guest path → local path (null when missing). */
  async downloadFiles(
    files: Array<{ sandboxPath: string; localPath: string }>,
    opts: { mkdirRecursive?: boolean } & CallOptions = {},
  ): Promise<Map<string, string | null>> {
    const results = new Map<string, string | null>();
    let next = 0;
    const worker = async () => {
      while (next < files.length) {
        const f = files[next++];
        results.set(f.sandboxPath, await this.downloadFile(f.sandboxPath, f.localPath, opts));
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, files.length) }, worker));
    return results;
  }
}
