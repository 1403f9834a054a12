/** HTTP and WebSocket plumbing shared by the client classes: timeouts, abort, error mapping. */

import WebSocket from "ws";

import {
  BandSoxError,
  BandSoxTimeoutError,
  ServerUnavailableError,
  WebSocketError,
  errorFromProblem,
} from "./errors.js";

export type Query = Record<string, string | number | boolean | undefined | null>;

export interface RequestOptions {
  query?: Query;
  json?: unknown;
  body?: RequestInit["body"];
  headers?: Record<string, string>;
  /** Milliseconds. */
  timeout?: number;
  signal?: AbortSignal;
  snapshotRoute?: boolean;
}

/** Removes `undefined` values (the server applies its own defaults). */
export function compact<T extends Record<string, unknown>>(o: T): Partial<T> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out as Partial<T>;
}

/** One URL path segment: ids and names never add path levels. */
export function seg(s: string): string {
  return encodeURIComponent(s);
}

/** A deadline plus the caller's signal, as one AbortSignal. Call `done()` when finished. */
export function deadline(ms: number, outer?: AbortSignal): {
  signal: AbortSignal;
  timedOut: () => boolean;
  done: () => void;
} {
  const ctl = new AbortController();
  let fired = false;
  const timer = setTimeout(() => {
    fired = true;
    ctl.abort();
  }, ms);
  timer.unref?.(); // the request itself keeps the process alive while it runs
  const onOuter = () => ctl.abort(outer?.reason);
  if (outer) {
    if (outer.aborted) ctl.abort(outer.reason);
    else outer.addEventListener("abort", onOuter, { once: true });
  }
  return {
    signal: ctl.signal,
    timedOut: () => fired,
    done: () => {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onOuter);
    },
  };
}

export class Transport {
  sessionToken: string | undefined;

  constructor(
    readonly baseUrl: string,
    readonly headers: Record<string, string>,
    readonly timeout: number,
  ) {}

  /** Headers of every request: the configured ones, then the session token after `login`. */
  authHeaders(): Record<string, string> {
    const h = { ...this.headers };
    if (this.sessionToken) {
      for (const k of Object.keys(h)) if (k.toLowerCase() === "authorization") delete h[k];
      h.Authorization = `Bearer ${this.sessionToken}`;
    }
    return h;
  }

  url(path: string, query?: Query): string {
    const u = new URL(path, this.baseUrl);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
    }
    return u.toString();
  }

  /** Sends a request; throws the mapped error for 4xx/5xx answers. The caller reads the body. */
  async send(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const ms = opts.timeout ?? this.timeout;
    const d = deadline(ms, opts.signal);
    const headers: Record<string, string> = { ...this.authHeaders(), ...opts.headers };
    let body = opts.body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    }
    let resp: Response;
    try {
      resp = await fetch(this.url(path, opts.query), {
        method,
        headers,
        body,
        signal: d.signal,
        // Node's fetch needs this for streamed request bodies.
        ...(body instanceof ReadableStream ? { duplex: "half" } : {}),
      } as RequestInit);
    } catch (e) {
      d.done();
      throw this.fetchError(e, d.timedOut(), ms, `${method} ${path}`);
    }
    if (resp.status >= 400) {
      let text = "";
      try {
        text = await resp.text();
      } catch (e) {
        d.done();
        throw this.fetchError(e, d.timedOut(), ms, `${method} ${path}`);
      }
      d.done();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // not JSON: keep the text
      }
      throw errorFromProblem(resp.status, parsed, opts.snapshotRoute);
    }
    // The deadline keeps running while the caller reads the body; it is cleared by `json()`
    // or `bytes()`, and by the stream's end for streamed downloads.
    (resp as ResponseWithDeadline)._deadline = d;
    return resp;
  }

  fetchError(e: unknown, timedOut: boolean, ms: number, what: string): BandSoxError {
    if (e instanceof BandSoxError) return e;
    if (timedOut) {
      return new BandSoxTimeoutError(
        `no answer from ${this.baseUrl} within ${ms} ms (${what})`,
        { code: "client_timeout", cause: e },
      );
    }
    if (e instanceof Error && e.name === "AbortError") {
      return new BandSoxError(`${what} was aborted`, { code: "aborted", cause: e });
    }
    const cause = e instanceof Error && e.cause instanceof Error ? e.cause.message : String(e);
    return new ServerUnavailableError(
      `cannot reach the bandsox server at ${this.baseUrl}: ${cause}`,
      { code: "server_unavailable", hint: "is `bandsox serve` running?", cause: e },
    );
  }

  /** Sends a request and parses the JSON answer (undefined for an empty body). */
  async json<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const resp = await this.send(method, path, opts);
    const text = await this.readAll(resp, opts, `${method} ${path}`, (r) => r.text());
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch (e) {
      throw new BandSoxError(`the server answered ${method} ${path} with something that is not JSON`, {
        statusCode: resp.status,
        code: "bad_response",
        cause: e,
      });
    }
  }

  /** Reads a whole body under the request's deadline. */
  async readAll<T>(
    resp: Response,
    opts: RequestOptions,
    what: string,
    read: (r: Response) => Promise<T>,
  ): Promise<T> {
    const d = (resp as ResponseWithDeadline)._deadline;
    try {
      return await read(resp);
    } catch (e) {
      throw this.fetchError(e, d?.timedOut() ?? false, opts.timeout ?? this.timeout, what);
    } finally {
      d?.done();
    }
  }

  /** The WebSocket URL of `path` (http → ws). */
  wsUrl(path: string, query?: Query): string {
    return this.url(path, query).replace(/^http/, "ws");
  }

  /**
   * Opens a WebSocket with the client's auth headers; resolves once it is open, paused (call
   * `resume()` after attaching listeners). A refused
   * upgrade (401, 404...) is mapped like an HTTP error.
   */
  openWebSocket(path: string, opts: { query?: Query; protocols?: string[]; timeout?: number; signal?: AbortSignal } = {}): Promise<WebSocket> {
    const ms = opts.timeout ?? this.timeout;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.wsUrl(path, opts.query), opts.protocols ?? [], {
        headers: this.authHeaders(),
        handshakeTimeout: ms,
      });
      let settled = false;
      const fail = (err: BandSoxError) => {
        if (settled) return;
        settled = true;
        opts.signal?.removeEventListener("abort", onAbort);
        ws.terminate();
        reject(err);
      };
      const onAbort = () => fail(new BandSoxError(`WebSocket ${path} was aborted`, { code: "aborted" }));
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      ws.once("unexpected-response", (_req, res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => {
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // keep text
          }
          fail(errorFromProblem(res.statusCode ?? 0, parsed));
        });
        res.on("error", () => fail(errorFromProblem(res.statusCode ?? 0, text)));
      });
      ws.once("error", (e) => {
        const msg = e.message || String(e);
        if (/timed out/i.test(msg)) {
          fail(new BandSoxTimeoutError(`WebSocket ${path}: no handshake within ${ms} ms`, { code: "client_timeout", cause: e }));
        } else {
          fail(new WebSocketError(`WebSocket ${path} failed: ${msg}`, { code: "websocket_error", cause: e }));
        }
      });
      ws.once("open", () => {
        if (settled) return;
        settled = true;
        opts.signal?.removeEventListener("abort", onAbort);
        ws.removeAllListeners("error");
        ws.removeAllListeners("unexpected-response");
        // Callers add their own listeners; this one keeps an early error from being thrown.
        ws.on("error", () => undefined);
        // Paused until the caller has attached its listeners (then it calls `resume()`): frames
        // that came with the handshake would otherwise be emitted before anyone listens.
        ws.pause();
        resolve(ws);
      });
    });
  }
}

interface ResponseWithDeadline extends Response {
  _deadline?: { done: () => void; timedOut: () => boolean };
}

export { WebSocket };
