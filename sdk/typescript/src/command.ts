/** Durable commands (`/api/vms/{id}/commands`): `Command` handles and their results. */

import { BandSoxTimeoutError } from "./errors.js";
import { EXEC_MARGIN_MS } from "./stream.js";
import { compact, seg } from "./transport.js";
import type { CallOptions, CommandState, LogEvent } from "./types.js";
import type { MicroVM } from "./vm.js";

/** `SIGTERM`, `TERM`, `9`... as the server takes them (names with or without `SIG`, or numbers). */
export function signalName(signal: string | number): string {
  return String(signal);
}

/** Exit code of a finished state: the code, or 128+n when killed by signal n. */
export function exitCodeOf(state: CommandState): number | null {
  if (state.running || !state.status) return null;
  if (typeof state.status.exit_code === "number") return state.status.exit_code;
  if (typeof state.status.signal === "number") return 128 + state.status.signal;
  return -1;
}

/** Server-side seconds one `wait` request may block; the client loops for longer waits. */
const WAIT_SLICE_S = 20;

/** A running or finished durable command. */
export class Command {
  /** Exit status; null while the command runs (updated by `wait()`/`refresh()`). */
  exitCode: number | null = null;
  /**
   * When the command started: the client's clock when it was sent (`runCommandDetached`), then
   * the guest's `started_at_ms` once a state was read (`refresh`, `wait`, `logs`). Undefined for
   * a `getCommand(id)` handle until then.
   */
  startedAt: Date | undefined;

  constructor(
    readonly vm: MicroVM<string>,
    readonly cmdId: string,
    public pid: number,
    readonly cwd: string | undefined,
    startedAt?: Date,
  ) {
    this.startedAt = startedAt;
  }

  private suffix(rest = ""): string {
    return `/commands/${seg(this.cmdId)}${rest}`;
  }

  private absorb(state: CommandState): CommandState {
    if (state.pid) this.pid = state.pid;
    if (state.started_at_ms) this.startedAt = new Date(state.started_at_ms);
    this.exitCode = exitCodeOf(state);
    return state;
  }

  /** The command's current state (throws `CommandNotFoundError` for unknown ids). */
  async refresh(call: CallOptions = {}): Promise<CommandState> {
    return this.absorb(await this.vm.request<CommandState>("GET", this.suffix(), call));
  }

  /**
   * Waits until the command ends (at most `timeout` seconds when given; each request to the
   * server is bounded) and resolves with its result.
   */
  async wait(opts: { timeout?: number; signal?: AbortSignal } = {}): Promise<CommandFinished> {
    const end = opts.timeout === undefined ? Infinity : Date.now() + opts.timeout * 1000;
    for (;;) {
      const left = Math.ceil((end - Date.now()) / 1000);
      const slice = Math.max(1, Math.min(WAIT_SLICE_S, left));
      const state = this.absorb(
        await this.vm.request<CommandState>("POST", this.suffix("/wait"), {
          json: { timeout: slice },
          timeout: slice * 1000 + EXEC_MARGIN_MS,
          signal: opts.signal,
        }),
      );
      if (!state.running) {
        const [stdout, stderr] = await Promise.all([this.stdout(), this.stderr()]);
        return new CommandFinished(this, this.exitCode ?? -1, stdout, stderr);
      }
      if (Date.now() >= end) {
        throw new BandSoxTimeoutError(`command ${this.cmdId} still runs after ${opts.timeout} s`, { code: "client_timeout" });
      }
    }
  }

  /**
   * Output as it arrives: replays what the server still buffers from `stdoutFrom`/`stderrFrom`
   * (byte offsets, default 0), then polls until the command ends.
   */
  async *logs(opts: { stdoutFrom?: number; stderrFrom?: number; pollMs?: number } = {}): AsyncGenerator<LogEvent> {
    let outFrom = opts.stdoutFrom ?? 0;
    let errFrom = opts.stderrFrom ?? 0;
    const decOut = new TextDecoder();
    const decErr = new TextDecoder();
    for (;;) {
      const r = await this.vm.request<{
        stdout: string;
        stderr: string;
        stdout_offset: number;
        stderr_offset: number;
        info?: CommandState;
      }>("GET", this.suffix("/logs"), { query: { stdout_from: outFrom, stderr_from: errFrom, encoding: "base64" } });
      const out = Buffer.from(r.stdout ?? "", "base64");
      const err = Buffer.from(r.stderr ?? "", "base64");
      if (typeof r.stdout_offset === "number") outFrom = r.stdout_offset;
      if (typeof r.stderr_offset === "number") errFrom = r.stderr_offset;
      const running = r.info ? this.absorb(r.info).running : false;
      const o = decOut.decode(out, { stream: running });
      const e = decErr.decode(err, { stream: running });
      if (o) yield { stream: "stdout", data: o };
      if (e) yield { stream: "stderr", data: e };
      if (!running) return;
      if (!out.length && !err.length) await new Promise((res) => setTimeout(res, opts.pollMs ?? 200));
    }
  }

  private async collect(which: "stdout" | "stderr" | "both"): Promise<string> {
    const r = await this.vm.request<{ stdout: string; stderr: string; info?: CommandState }>("GET", this.suffix("/logs"), {
      query: { stdout_from: 0, stderr_from: 0 },
    });
    if (r.info) this.absorb(r.info);
    if (which === "stdout") return r.stdout ?? "";
    if (which === "stderr") return r.stderr ?? "";
    return (r.stdout ?? "") + (r.stderr ?? "");
  }

  /** The stdout buffered so far (up to the server's 1 MiB ring). */
  async stdout(): Promise<string> {
    return await this.collect("stdout");
  }

  /** The stderr buffered so far. */
  async stderr(): Promise<string> {
    return await this.collect("stderr");
  }

  /** stdout, stderr or both (stdout then stderr) as one string. */
  async collectOutput(stream: "stdout" | "stderr" | "both"): Promise<string> {
    return await this.collect(stream);
  }

  /** Signals the command's process group (`SIGTERM` by default). */
  async kill(signal: string | number = "SIGTERM", call: CallOptions = {}): Promise<void> {
    await this.vm.kill(this.cmdId, String(signal), call);
  }

  /** Writes to the command's stdin (started with `stdinOpen: true`); `close` ends it. */
  async sendStdin(data: string | Uint8Array, opts: { close?: boolean } & CallOptions = {}): Promise<void> {
    const body =
      typeof data === "string"
        ? { data, close: opts.close ?? false }
        : { data: Buffer.from(data).toString("base64"), encoding: "base64", close: opts.close ?? false };
    await this.vm.request("POST", this.suffix("/stdin"), { json: compact(body), timeout: opts.timeout, signal: opts.signal });
  }
}

/** A finished command: `exitCode`, `stdout`, `stderr` and `output` (both). */
export class CommandFinished {
  readonly output: string;
  private readonly sentAt: Date | undefined;

  constructor(
    /** The durable command, or null when it ran over the exec-stream WebSocket. */
    readonly command: Command | null,
    readonly exitCode: number,
    readonly stdoutText: string,
    readonly stderrText: string,
    /** When it was sent (for a command that ran over the exec-stream WebSocket). */
    startedAt?: Date,
  ) {
    this.output = stdoutText + stderrText;
    this.sentAt = startedAt;
  }

  get cmdId(): string | undefined {
    return this.command?.cmdId;
  }

  /** When the command started (see {@link Command.startedAt}). */
  get startedAt(): Date | undefined {
    return this.command?.startedAt ?? this.sentAt;
  }

  /** Same as `stdoutText` (a method, like `Command.stdout()`). */
  async stdout(): Promise<string> {
    return this.stdoutText;
  }

  async stderr(): Promise<string> {
    return this.stderrText;
  }
}
