/**
 * Errors thrown by the client.
 *
 * The server answers errors as RFC 9457 `application/problem+json` with a stable `code` and a
 * human `detail`; {@link errorFromProblem} maps them onto the classes below. Every class derives
 * from {@link BandSoxError}, so `err instanceof BandSoxError` catches them all (as in BandSox's
 * SDK), and `statusCode` is the HTTP status (undefined when no answer came).
 */

export interface BandSoxErrorOptions {
  statusCode?: number;
  code?: string;
  detail?: string;
  hint?: string;
  problem?: Record<string, unknown>;
  cause?: unknown;
}

export class BandSoxError extends Error {
  /** HTTP status of the answer; undefined when the server did not answer. */
  readonly statusCode: number | undefined;
  /** The server's stable problem code, or a client-side one (`client_timeout`, `websocket_closed`, ...). */
  readonly code: string | undefined;
  /** Human text (the problem's `detail`). Same as `message`. */
  readonly detail: string;
  /** Advice from the server, when it gave some. */
  readonly hint: string | undefined;
  /** The whole problem document. */
  readonly problem: Record<string, unknown>;

  constructor(message: string, opts: BandSoxErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.statusCode = opts.statusCode;
    this.code = opts.code;
    this.detail = opts.detail ?? message;
    this.hint = opts.hint;
    this.problem = opts.problem ?? {};
  }
}

/** Something does not exist (HTTP 404, or a path missing inside the guest). */
export class NotFoundError extends BandSoxError {}
/** No VM with that id (`vm_not_found`). */
export class VmNotFoundError extends NotFoundError {}
/** No snapshot with that id (`not_found` on a snapshot route). */
export class SnapshotNotFoundError extends NotFoundError {}
/** No image with that reference (`image_not_found`). */
export class ImageNotFoundError extends NotFoundError {}
/** No durable command with that id (`command_not_found`). */
export class CommandNotFoundError extends NotFoundError {}
/** The VM is in the wrong state for the operation (HTTP 409, `conflict`). */
export class ConflictError extends BandSoxError {}
/** Missing or wrong credentials (HTTP 401) or a refused request (HTTP 403). */
export class AuthenticationError extends BandSoxError {}
/** The request was rejected as invalid (HTTP 400/413/415/422). */
export class InvalidInputError extends BandSoxError {}
/**
 * A timeout: the command's (`exec_timeout`), the boot's (`boot_timeout`) or this client's own
 * call timeout (`client_timeout`).
 */
export class BandSoxTimeoutError extends BandSoxError {}
/** The server could not be reached (connection refused, reset, DNS failure). */
export class ServerUnavailableError extends BandSoxError {}
/** A WebSocket closed or failed before the operation finished (`websocket_closed`, `websocket_error`). */
export class WebSocketError extends BandSoxError {}
/** The guest agent does not answer (HTTP 502, `agent_unavailable`). */
export class AgentUnavailableError extends BandSoxError {}
/** Too many attempts (HTTP 429, `rate_limited`). */
export class RateLimitedError extends BandSoxError {}
/** Not supported (yet) by this client or server. */
export class UnsupportedError extends BandSoxError {}

type ErrorClass = new (message: string, opts?: BandSoxErrorOptions) => BandSoxError;

const BY_CODE: Record<string, ErrorClass> = {
  vm_not_found: VmNotFoundError,
  image_not_found: ImageNotFoundError,
  command_not_found: CommandNotFoundError,
  not_found: NotFoundError,
  route_not_found: NotFoundError,
  guest_not_found: NotFoundError,
  conflict: ConflictError,
  image_in_use: ConflictError,
  invalid_input: InvalidInputError,
  build_failed: InvalidInputError,
  invalid_body: InvalidInputError,
  exec_timeout: BandSoxTimeoutError,
  boot_timeout: BandSoxTimeoutError,
  unauthorized: AuthenticationError,
  forbidden_host: AuthenticationError,
  cross_origin: AuthenticationError,
  agent_unavailable: AgentUnavailableError,
  rate_limited: RateLimitedError,
};

const BY_STATUS: Record<number, ErrorClass> = {
  400: InvalidInputError,
  401: AuthenticationError,
  403: AuthenticationError,
  404: NotFoundError,
  409: ConflictError,
  413: InvalidInputError,
  415: InvalidInputError,
  422: InvalidInputError,
  429: RateLimitedError,
  502: AgentUnavailableError,
  504: BandSoxTimeoutError,
};

/**
 * The error for an HTTP error answer. `body` is the parsed problem document, or the raw text
 * when it was not JSON. `snapshotRoute` turns a generic `not_found` into
 * {@link SnapshotNotFoundError}.
 */
export function errorFromProblem(
  statusCode: number,
  body: unknown,
  snapshotRoute = false,
): BandSoxError {
  const problem: Record<string, unknown> =
    body !== null && typeof body === "object" && !Array.isArray(body)
      ? (body as Record<string, unknown>)
      : {};
  const str = (v: unknown): string | undefined => (typeof v === "string" && v ? v : undefined);
  const code = str(problem.code);
  const detail =
    str(problem.detail) ??
    str(problem.error) ??
    str(problem.title) ??
    (typeof body === "string" && body.trim() ? body.trim().slice(0, 500) : `HTTP ${statusCode}`);
  let cls: ErrorClass =
    (code !== undefined ? BY_CODE[code] : undefined) ?? BY_STATUS[statusCode] ?? BandSoxError;
  if (snapshotRoute && code === "not_found") cls = SnapshotNotFoundError;
  return new cls(detail, { statusCode, code, detail, hint: str(problem.hint), problem });
}

/** The error for a stable problem `code` that came without an HTTP status (WebSocket frames). */
export function errorFromCode(code: string, detail: string, hint?: string): BandSoxError {
  const cls = BY_CODE[code] ?? BandSoxError;
  return new cls(detail, { code, detail, hint });
}
