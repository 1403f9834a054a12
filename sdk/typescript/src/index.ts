export { BandSox } from "./client.js";
export type { BandSoxOptions } from "./client.js";
export { MicroVM, shellQuote } from "./vm.js";
export { Command, CommandFinished } from "./command.js";
export { Terminal } from "./terminal.js";
export * from "./errors.js";
export type * from "./types.js";

/** Largest `extend(seconds)` the server takes. */
export const MAX_EXTEND_SECONDS = 86400;
/** This SDK's version (the same as the server's crates). */
export const VERSION = "0.1.0";
