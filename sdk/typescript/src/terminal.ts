/**
 * Interactive PTY over `/api/vms/{id}/terminal` with the `bandsox.terminal` subprotocol: input
 * as `{"type":"input","data":<base64>}`, output as base64 text frames.
 */

import type WebSocket from "ws";

import { BandSoxError, WebSocketError } from "./errors.js";
import type { Transport } from "./transport.js";

export class Terminal {
  /** Resolves once the socket is open; rejects with the connection error. */
  readonly ready: Promise<void>;
  /** Resolves with the close code once the terminal has ended. */
  readonly closed: Promise<number>;
  private ws: WebSocket | null = null;
  private outputHandlers: Array<(data: string) => void> = [];
  private errorHandlers: Array<(err: BandSoxError) => void> = [];
  private pendingErrors: BandSoxError[] = [];
  private queue: string[] = [];
  private ended = false;
  private closing = false;
  private decoder = new TextDecoder();

  /** @internal Use `MicroVM.connectTerminal`. */
  constructor(transport: Transport, path: string, cols: number, rows: number) {
    let closedResolve!: (code: number) => void;
    this.closed = new Promise((r) => (closedResolve = r));
    this.ready = transport
      .openWebSocket(path, { query: { cols, rows }, protocols: ["bandsox.terminal"] })
      .then((ws) => {
        this.ws = ws;
        if (this.closing) ws.close();
        ws.on("message", (raw, isBinary) => {
          const bytes = isBinary ? (raw as Buffer) : Buffer.from(raw.toString(), "base64");
          const text = this.decoder.decode(bytes, { stream: true });
          if (text) for (const h of this.outputHandlers) h(text);
        });
        ws.on("error", (e) => this.fail(new WebSocketError(`terminal WebSocket failed: ${e.message}`, { code: "websocket_error", cause: e })));
        ws.on("close", (code, reason) => {
          this.ended = true;
          // 1000 is the shell ending normally (or our close()); anything else is a drop.
          if (code !== 1000 && !this.closing) {
            this.fail(
              new WebSocketError(`terminal closed (code ${code}${reason.length ? `: ${reason.toString()}` : ""})`, {
                code: code === 4004 ? "vm_not_found" : "websocket_closed",
              }),
            );
          }
          closedResolve(code);
        });
        ws.resume();
        for (const frame of this.queue.splice(0)) ws.send(frame);
      });
    this.ready.catch((e: unknown) => {
      this.ended = true;
      this.fail(e instanceof BandSoxError ? e : new WebSocketError(String(e), { code: "websocket_error" }));
      closedResolve(-1);
    });
  }

  /** Registers a handler for PTY output (decoded UTF-8 text). */
  onOutput(handler: (data: string) => void): this {
    this.outputHandlers.push(handler);
    return this;
  }

  /** Registers a handler for connection errors and unexpected closes. */
  onError(handler: (err: BandSoxError) => void): this {
    this.errorHandlers.push(handler);
    for (const e of this.pendingErrors.splice(0)) handler(e);
    return this;
  }

  private fail(err: BandSoxError): void {
    if (this.errorHandlers.length === 0) this.pendingErrors.push(err);
    for (const h of this.errorHandlers) h(err);
  }

  private send(frame: Record<string, unknown>): void {
    if (this.ended) {
      this.fail(new WebSocketError("the terminal is closed", { code: "websocket_closed" }));
      return;
    }
    const text = JSON.stringify(frame);
    if (this.ws) this.ws.send(text);
    else this.queue.push(text);
  }

  /** Types into the terminal. */
  sendInput(data: string): void {
    this.send({ type: "input", data: Buffer.from(data, "utf8").toString("base64") });
  }

  resize(cols: number, rows: number): void {
    this.send({ type: "resize", cols, rows });
  }

  /** Closes the terminal (the server kills the shell). */
  close(): void {
    this.closing = true;
    this.ws?.close(1000);
  }
}
