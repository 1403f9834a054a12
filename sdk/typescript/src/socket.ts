/**
 * The persistent per-VM WebSocket (`/api/vms/{id}/socket`, subprotocol `bandsox.socket`): many
 * REST operations and streamed commands at once over one connection. Frames are tagged with an
 * id; answers come in completion order.
 */

import type WebSocket from "ws";

import { BandSoxError, BandSoxTimeoutError, VmNotFoundError, WebSocketError, errorFromProblem } from "./errors.js";
import { type StreamEvent, onExecFrame } from "./stream.js";
import type { Query, Transport } from "./transport.js";
import { compact, seg } from "./transport.js";

interface Pending {
  onFrame: (frame: Record<string, unknown>) => void;
  fail: (err: BandSoxError) => void;
}

export class VmSocket {
  private pending = new Map<number, Pending>();
  private nextId = 1;
  private closedError: BandSoxError | null = null;

  private constructor(
    private readonly ws: WebSocket,
    readonly vmId: string,
  ) {
    ws.on("message", (raw, isBinary) => {
      if (isBinary) return;
      let frame: Record<string, unknown>;
      try {
        frame = JSON.parse(raw.toString()) as Record<string, unknown>;
      } catch {
        return;
      }
      const p = typeof frame.id === "number" ? this.pending.get(frame.id) : undefined;
      p?.onFrame(frame);
    });
    ws.on("close", (code, reason) => {
      const why = reason.toString();
      this.closedError =
        code === 4004
          ? new VmNotFoundError(why || `VM ${vmId} not found`, { code: "vm_not_found", statusCode: 404 })
          : new WebSocketError(`the VM socket closed (code ${code}${why ? `: ${why}` : ""})`, { code: "websocket_closed" });
      for (const p of [...this.pending.values()]) p.fail(this.closedError);
      this.pending.clear();
    });
    ws.on("error", () => undefined); // a close follows
    ws.resume();
  }

  static async open(t: Transport, vmId: string, timeout?: number): Promise<VmSocket> {
    const ws = await t.openWebSocket(`/api/vms/${seg(vmId)}/socket`, { protocols: ["bandsox.socket"], timeout });
    return new VmSocket(ws, vmId);
  }

  get isOpen(): boolean {
    return this.closedError === null;
  }

  close(): void {
    this.ws.close(1000);
  }

  /**
   * Sends `frame` under a fresh id. `onFrame` gets every answer frame with that id and calls
   * `done()` on the last; `fail` gets a timeout, an abort or the socket closing.
   */
  private start(
    frame: Record<string, unknown>,
    ms: number,
    onFrame: (f: Record<string, unknown>, done: () => void) => void,
    fail: (err: BandSoxError) => void,
    signal?: AbortSignal,
  ): void {
    if (this.closedError) throw this.closedError;
    const id = this.nextId++;
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      this.pending.delete(id);
    };
    const timer = setTimeout(() => {
      done();
      fail(new BandSoxTimeoutError(`no answer within ${ms} ms over the VM socket`, { code: "client_timeout" }));
    }, ms);
    const onAbort = () => {
      done();
      fail(new BandSoxError("the call was aborted", { code: "aborted" }));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    this.pending.set(id, {
      onFrame: (f) => onFrame(f, done),
      fail: (e) => {
        done();
        fail(e);
      },
    });
    this.ws.send(JSON.stringify({ ...frame, id }));
  }

  /** One REST operation `method /api/vms/{id}{path}`; resolves with the parsed JSON answer. */
  request<T>(
    method: string,
    path: string,
    opts: { query?: Query; json?: unknown; timeout: number; signal?: AbortSignal },
  ): Promise<T> {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined && v !== null) qs.set(k, String(v));
    const q = qs.toString();
    const full = q ? `${path}?${q}` : path;
    return new Promise<T>((resolve, reject) => {
      const onFrame = (f: Record<string, unknown>, done: () => void) => {
        done();
        const status = typeof f.status === "number" ? f.status : 0;
        if (status >= 400 || status === 0) reject(errorFromProblem(status, f.body));
        else resolve(f.body as T);
      };
      try {
        this.start(compact({ method, path: full, body: opts.json }), opts.timeout, onFrame, reject, opts.signal);
      } catch (e) {
        reject(e);
      }
    });
  }

  /** Runs a command, calling `onEvent` as output arrives; resolves with the exit code. */
  stream(
    command: string,
    timeoutS: number,
    limitMs: number,
    onEvent: (ev: StreamEvent) => void,
    signal?: AbortSignal,
  ): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const onFrame = (f: Record<string, unknown>, done: () => void) => {
        if (typeof f.status === "number" && f.status >= 400) {
          done();
          reject(errorFromProblem(f.status, f.body));
          return;
        }
        const r = onExecFrame(f, onEvent);
        if (!r) return;
        done();
        if (r.error) reject(r.error);
        else resolve(r.exit ?? -1);
      };
      try {
        this.start({ stream: { command, timeout: timeoutS } }, limitMs, onFrame, reject, signal);
      } catch (e) {
        reject(e);
      }
    });
  }
}
