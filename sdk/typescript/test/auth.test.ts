/** A server with authentication (`bandsox auth init` before `serve`): API keys, login sessions, 401s. */

import assert from "node:assert/strict";
import { after, before, it } from "node:test";

import { AuthenticationError, BandSox, BandSoxError } from "bandsox";

import { type LiveServer, startServer } from "./helpers.js";

let server: LiveServer;

before(async () => {
  server = await startServer({ auth: true, prefix: "bsx-ts-auth-" });
});

after(async () => {
  await server?.stop();
});

async function authError(p: Promise<unknown>): Promise<AuthenticationError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof AuthenticationError, `expected AuthenticationError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected an AuthenticationError");
}

it("rejects requests without a key or with a wrong one (401)", async () => {
  const e = await authError(new BandSox({ baseUrl: server.url }).listVms());
  assert.equal(e.statusCode, 401);
  assert.equal(e.code, "unauthorized");
  assert.ok(e instanceof BandSoxError);
  const bad = `${server.apiKey!.slice(0, -4)}xxxx`;
  await authError(new BandSox({ baseUrl: server.url, headers: { Authorization: `Bearer ${bad}` } }).listSnapshots());
  await authError(new BandSox({ baseUrl: server.url, apiKey: "bsx_nope" }).listVms());
  assert.deepEqual(await new BandSox({ baseUrl: server.url }).authCheck(), { authenticated: false });
  // The WebSocket upgrade is refused too.
  await authError(new BandSox({ baseUrl: server.url }).execStream("any-vm", { command: "true" }));
});

it("accepts the API key as an Authorization header or apiKey", async () => {
  const bs = new BandSox({ baseUrl: server.url, headers: { Authorization: `Bearer ${server.apiKey}` } });
  assert.deepEqual(await bs.listVms(), []);
  assert.equal((await bs.authCheck()).authenticated, true);
  assert.equal((await bs.version()).version, "0.1.0");
  const viaOption = new BandSox({ baseUrl: server.url, apiKey: server.apiKey });
  assert.deepEqual(await viaOption.listSnapshots(), []);
  // An unknown VM over an authenticated WebSocket is "not found", not 401.
  await assert.rejects(viaOption.execStream("no-such-vm", { command: "true" }), (e: unknown) => (e as BandSoxError).code === "vm_not_found");
});

it("logs in with the password, manages keys, logs out", async () => {
  const bs = new BandSox({ baseUrl: server.url });
  await authError(bs.login("wrong-password"));
  const out = await bs.login(server.password!);
  assert.equal(out.status, "ok");
  assert.ok(out.token);
  assert.equal((await bs.authCheck()).authenticated, true);
  const created = await bs.createApiKey("ci-runner");
  assert.ok(created.key.startsWith("bsx_") && created.key_id);
  const keys = await bs.listApiKeys();
  assert.ok(keys.some((k) => k.id === created.key_id && k.name === "ci-runner"));
  const withNew = new BandSox({ baseUrl: server.url, apiKey: created.key });
  assert.deepEqual(await withNew.listVms(), []);
  await bs.revokeApiKey(created.key_id);
  await authError(withNew.listVms());
  assert.ok(!(await bs.listApiKeys()).some((k) => k.id === created.key_id));
  await bs.logout();
  await authError(bs.listVms());
  // The old session token no longer works even when sent explicitly.
  await authError(new BandSox({ baseUrl: server.url, headers: { Authorization: `Bearer ${out.token}` } }).listVms());
});
