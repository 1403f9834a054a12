export { BandSox } from "./client.js";
export type { BandSoxOptions } from "./client.js";
export { MicroVM, shellQuote } from "./vm.js";
export { Command, CommandFinished } from "./command.js";
export { Client, Sandbox, PROJECT_ID_KEY, USER_ID_KEY, parseCpu, parseMiB, sandboxInfo, sandboxStatus } from "./sandbox.js";
export type { ClientOptions, CreateOptions, ListOptions, Payload, SandboxInfo, Spec } from "./sandbox.js";
export { Terminal } from "./terminal.js";
export { packContext } from "./tar.js";
export * from "./errors.js";
export type * from "./types.js";

/** Largest `extend(seconds)` the server takes. */
export const MAX_EXTEND_SECONDS = 86400;
/** This SDK's version (the same as the server's crates). */
export const VERSION = "0.1.0";
/** Every {@link VmStatus} the server reports, in lifecycle order. */
export const VM_STATUSES = ["creating", "running", "paused", "stopped", "failed"] as const satisfies readonly import("./types.js").VmStatus[];
