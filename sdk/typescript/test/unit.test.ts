/** Client behaviour that needs no VM: error mapping, quoting, and answers from a plain HTTP server. */

import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, it } from "node:test";

import {
  AgentUnavailableError,
  AuthenticationError,
  BandSox,
  BandSoxError,
  BandSoxTimeoutError,
  Client,
  Command,
  CommandFinished,
  CommandNotFoundError,
  ConflictError,
  InvalidInputError,
  MicroVM,
  NotFoundError,
  RateLimitedError,
  Sandbox,
  SnapshotNotFoundError,
  Terminal,
  VmNotFoundError,
  errorFromCode,
  errorFromProblem,
  packContext,
  parseCpu,
  parseMiB,
  sandboxStatus,
  shellQuote,
  VM_STATUSES,
} from "bandsox";

import { SDK_DIR } from "./helpers.js";

it("maps problem codes first, then statuses", () => {
  const cases: Array<[number, unknown, new (...a: never[]) => BandSoxError]> = [
    [404, { code: "vm_not_found", detail: "VM `x` not found" }, VmNotFoundError],
    [404, { code: "command_not_found" }, CommandNotFoundError],
    [404, { code: "route_not_found" }, NotFoundError],
    [409, { code: "conflict" }, ConflictError],
    [401, { code: "unauthorized" }, AuthenticationError],
    [403, {}, AuthenticationError],
    [422, { code: "invalid_input" }, InvalidInputError],
    [504, { code: "exec_timeout" }, BandSoxTimeoutError],
    [502, { code: "agent_unavailable" }, AgentUnavailableError],
    [429, "too many", RateLimitedError],
    [418, "teapot", BandSoxError],
  ];
  for (const [status, body, cls] of cases) {
    const e = errorFromProblem(status, body);
    assert.ok(e instanceof cls, `${status} ${JSON.stringify(body)} → ${e.name}`);
    assert.equal(e.statusCode, status);
  }
  const e = errorFromProblem(404, { code: "vm_not_found", detail: "VM `x` not found", hint: "list VMs", extra: 1 });
  assert.deepEqual([e.message, e.detail, e.code, e.hint, e.name], ["VM `x` not found", "VM `x` not found", "vm_not_found", "list VMs", "VmNotFoundError"]);
  assert.ok(errorFromProblem(404, { code: "not_found" }, true) instanceof SnapshotNotFoundError);
  assert.equal(errorFromProblem(500, "").message, "HTTP 500");
  const ws = errorFromCode("exec_timeout", "Command timed out after 1 s", "raise the timeout");
  assert.ok(ws instanceof BandSoxTimeoutError);
  assert.deepEqual([ws.code, ws.hint, ws.statusCode], ["exec_timeout", "raise the timeout", undefined]);
});

it("every public method is exercised by the live tests or the examples", () => {
  const dir = join(SDK_DIR, "test");
  const sources = [
    ...readdirSync(dir).filter((f) => f.endsWith(".ts") && f !== "unit.test.ts").map((f) => join(dir, f)),
    ...readdirSync(join(SDK_DIR, "examples")).map((f) => join(SDK_DIR, "examples", f)),
  ]
    .map((f) => readFileSync(f, "utf8"))
    .join("\n");
  const missing: string[] = [];
  for (const cls of [BandSox, MicroVM, Command, CommandFinished, Terminal, Client, Sandbox]) {
    const proto = cls.prototype;
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === "constructor" || name === "request" || name === "vmAction") continue; // @internal
      const d = Object.getOwnPropertyDescriptor(proto, name);
      if (!d || (typeof d.value !== "function" && !d.get)) continue;
      // Private helpers are not on the public surface (TypeScript `private` is erased at runtime).
      if (["path", "suffix", "absorb", "collect", "commandLine", "stream", "sizeTimeout", "uploadBlob", "listAt", "fail", "send", "t", "proxyBase", "reboot"].includes(name)) continue;
      if (!new RegExp(`\\.${name}\\b`).test(sources)) missing.push(`${cls.name}.${name}`);
    }
  }
  assert.deepEqual(missing, []);
});

it("quotes shell words", () => {
  assert.equal(shellQuote("abc/d.e"), "abc/d.e");
  assert.equal(shellQuote("a b"), "'a b'");
  assert.equal(shellQuote("it's"), `'it'\\''s'`);
  assert.equal(shellQuote(""), "''");
});

it("rejects a baseUrl that is not http(s)", () => {
  assert.throws(() => new BandSox({ baseUrl: "ftp://x" }), BandSoxError);
});

let http: Server;
let url: string;

before(async () => {
  http = createServer((req, res) => {
    if (req.url?.startsWith("/api/vms/extra")) {
      res.setHeader("Content-Type", "application/json");
      res.end(JSON.stringify({ id: "extra", name: "n", status: "running", brand_new_field: { x: 1 }, metadata: {} }));
    } else if (req.url === "/api/vms?limit=1") {
      res.setHeader("X-Total-Count", "3");
      res.end(JSON.stringify([{ id: "a", future: true }]));
    } else if (req.url === "/api/snapshots") {
      res.statusCode = 502;
      res.end("<html>bad gateway</html>");
    } else if (req.url === "/api/version") {
      res.end("not json");
    } else {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
});

after(() => new Promise<void>((r) => http.close(() => r())));

it("ignores unknown response fields and reads X-Total-Count", async () => {
  const bs = new BandSox({ baseUrl: url });
  const vm = await bs.getVm("extra");
  assert.equal(vm.id, "extra");
  assert.equal(vm.status, "running");
  const page = await bs.listVmsPage({ limit: 1 });
  assert.deepEqual(page.pagination, { total: 3, limit: 1, offset: 0, has_more: true });
});

it("turns non-JSON answers into clear errors", async () => {
  const bs = new BandSox({ baseUrl: url });
  const e = await bs.listSnapshots().catch((x: unknown) => x);
  assert.ok(e instanceof AgentUnavailableError && e.statusCode === 502, String(e));
  const v = await bs.version().catch((x: unknown) => x);
  assert.ok(v instanceof BandSoxError && v.code === "bad_response", String(v));
  const n = await bs.getVmInfo("missing/../x").catch((x: unknown) => x);
  assert.ok(n instanceof NotFoundError, String(n));
});

it("VmStatus lists exactly the server's states (crates/bandsox-core/src/store.rs)", () => {
  const store = readFileSync(join(SDK_DIR, "..", "..", "crates", "bandsox-core", "src", "store.rs"), "utf8");
  const body = /impl VmStatus \{[\s\S]*?fn as_str[\s\S]*?match self \{([\s\S]*?)\}/.exec(store)?.[1] ?? "";
  const server = [...body.matchAll(/=> "([a-z_]+)"/g)].map((m) => m[1]);
  assert.deepEqual([...VM_STATUSES], server);
  assert.deepEqual(VM_STATUSES.map(sandboxStatus), ["creating", "active", "paused", "stopped", "failed"]);
});

it("parses Vtrix spec quantities", () => {
  assert.deepEqual(["4Gi", "512Mi", "1G", "2048", 300, "1.5Gi"].map((v) => parseMiB(v, "memory")), [4096, 512, 954, 2048, 300, 1536]);
  assert.deepEqual(["2", "500m", 1.5, 4].map(parseCpu), [2, 1, 2, 4]);
  for (const bad of ["lots", "-1Gi", "", 0, -5]) assert.throws(() => parseMiB(bad, "memory"), InvalidInputError);
  for (const bad of ["two", "-1", 0, "1.5x"]) assert.throws(() => parseCpu(bad), InvalidInputError);
});

it("packs a context folder as a tar that tar(1) reads back (long names, links, modes)", async () => {
  const { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, chmodSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { execFileSync } = await import("node:child_process");
  const dir = mkdtempSync(join(tmpdir(), "bsx-ts-tar-"));
  try {
    const ctx = join(dir, "ctx");
    const long = `${"d".repeat(60)}/${"f".repeat(99)}.txt`;
    mkdirSync(join(ctx, "d".repeat(60)), { recursive: true });
    writeFileSync(join(ctx, long), "long\n");
    writeFileSync(join(ctx, "run.sh"), "#!/bin/sh\n");
    chmodSync(join(ctx, "run.sh"), 0o4755);
    symlinkSync(`../${"t".repeat(120)}`, join(ctx, "link"));
    writeFileSync(join(dir, "c.tar"), await packContext(ctx));
    const listing = execFileSync("tar", ["-tvf", join(dir, "c.tar")], { encoding: "utf8" });
    const names = execFileSync("tar", ["-tf", join(dir, "c.tar")], { encoding: "utf8" }).trim().split("\n");
    assert.deepEqual(names, [`${"d".repeat(60)}/`, long, "link", "run.sh"]);
    assert.match(listing, /^-rwsr-xr-x .* run\.sh$/m);
    assert.match(listing, new RegExp(`link -> \\.\\./${"t".repeat(120)}$`, "m"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
