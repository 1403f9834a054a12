/** The `exec-stream` WebSocket: output as it arrives, then the exit code. */

import type WebSocket from "ws";

import { BandSoxError, BandSoxTimeoutError, InvalidInputError, VmNotFoundError, WebSocketError, errorFromCode } from "./errors.js";
import type { Transport } from "./transport.js";
import { seg } from "./transport.js";

/** Extra milliseconds the client waits beyond a command's own timeout. */
export const EXEC_MARGIN_MS = 30_000;

export type StreamEvent =
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | { type: "exit"; exit_code: number };

/**
 * Runs `command` over `/api/vms/{id}/exec-stream`, calling `onEvent` for every stdout/stderr
 * chunk as it arrives; resolves with the exit code. Rejects with {@link WebSocketError} when the
 * socket closes before the exit frame, {@link BandSoxTimeoutError} when the command runs out of
 * time (server side) or the client deadline (`timeoutS` + 30 s) passes.
 */
export async function execStream(
  t: Transport,
  vmId: string,
  command: string,
  timeoutS: number,
  onEvent: (ev: StreamEvent) => void,
  signal?: AbortSignal,
): Promise<number> {
  const path = `/api/vms/${seg(vmId)}/exec-stream`;
  const limitMs = timeoutS * 1000 + EXEC_MARGIN_MS;
  const ws: WebSocket = await t.openWebSocket(path, { timeout: Math.min(limitMs, t.timeout), signal });
  return await new Promise<number>((resolve, reject) => {
    let finished = false;
    const finish = (err: BandSoxError | null, code?: number) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (err) {
        ws.terminate();
        reject(err);
      } else {
        ws.close();
        resolve(code ?? -1);
      }
    };
    const timer = setTimeout(
      () =>
        finish(
          new BandSoxTimeoutError(`command did not finish within ${limitMs} ms (exec-stream on VM ${vmId})`, {
            code: "client_timeout",
          }),
        ),
      limitMs,
    );
    const onAbort = () => finish(new BandSoxError("exec-stream was aborted", { code: "aborted" }));
    signal?.addEventListener("abort", onAbort, { once: true });
    ws.on("message", (raw, isBinary) => {
      if (isBinary) return;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(raw.toString()) as Record<string, unknown>;
      } catch {
        return; // not ours: ignore
      }
      const r = onExecFrame(msg, onEvent);
      if (r) finish(r.error ?? null, r.exit);
    });
    ws.on("close", (code, reason) => {
      const why = reason.toString();
      if (code === 4004) finish(new VmNotFoundError(why || `VM ${vmId} not found`, { code: "vm_not_found", statusCode: 404 }));
      if (code === 4000) finish(new InvalidInputError(why || "exec-stream refused the command", { code: "invalid_input" }));
      finish(
        new WebSocketError(
          `the exec-stream WebSocket closed before the command ended (code ${code}${reason.length ? `: ${reason.toString()}` : ""})`,
          { code: "websocket_closed" },
        ),
      );
    });
    ws.on("error", (e) => {
      finish(new WebSocketError(`exec-stream WebSocket failed: ${e.message}`, { code: "websocket_error", cause: e }));
    });
    ws.resume();
    ws.send(JSON.stringify({ command, timeout: timeoutS }));
  });
}

/**
 * Handles one exec-stream frame (`stdout`/`stderr`/`exit`/`error`, the same on the dedicated
 * WebSocket and the persistent VM socket). Returns null while the command runs, else how it
 * ended. Unknown frame types are ignored.
 */
export function onExecFrame(
  msg: Record<string, unknown>,
  onEvent: (ev: StreamEvent) => void,
): { exit?: number; error?: BandSoxError } | null {
  const type = msg.type;
  if ((type === "stdout" || type === "stderr") && typeof msg.data === "string") {
    try {
      onEvent({ type, data: msg.data });
    } catch (e) {
      return { error: new BandSoxError(`an output callback threw: ${String(e)}`, { code: "callback_error", cause: e }) };
    }
    return null;
  }
  if (type === "exit") {
    const code = typeof msg.exit_code === "number" ? msg.exit_code : -1;
    onEvent({ type: "exit", exit_code: code });
    return { exit: code };
  }
  if (type === "error") {
    const text = typeof msg.error === "string" ? msg.error : "exec-stream error";
    if (typeof msg.code === "string" && msg.code) {
      return { error: errorFromCode(msg.code, text, typeof msg.hint === "string" ? msg.hint : undefined) };
    }
    // Servers before stable codes in exec-stream frames: recognise the texts.
    if (/timed out/i.test(text)) return { error: new BandSoxTimeoutError(text, { code: "exec_timeout" }) };
    if (/not found/i.test(text)) return { error: new VmNotFoundError(text, { code: "vm_not_found", statusCode: 404 }) };
    return { error: new BandSoxError(text, { code: "exec_error" }) };
  }
  return null;
}

/** A push → pull queue: turns callbacks into an async iterator. */
export class EventQueue<T> {
  private items: T[] = [];
  private waiters: Array<{ resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }> = [];
  private failure: unknown = null;
  private ended = false;

  push(item: T): void {
    const w = this.waiters.shift();
    if (w) w.resolve({ value: item, done: false });
    else this.items.push(item);
  }

  end(err: unknown = null): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = err;
    const waiters = this.waiters.splice(0);
    if (err && waiters.length) this.failure = null; // delivered below
    for (const w of waiters) {
      if (err) w.reject(err);
      else w.resolve({ value: undefined as never, done: true });
    }
  }

  async next(): Promise<IteratorResult<T>> {
    if (this.items.length) return { value: this.items.shift() as T, done: false };
    if (this.ended) {
      if (this.failure) {
        const f = this.failure;
        this.failure = null;
        throw f;
      }
      return { value: undefined as never, done: true };
    }
    return await new Promise<IteratorResult<T>>((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}
