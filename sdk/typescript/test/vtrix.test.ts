/**
 * The Vtrix-style `Client`/`Sandbox` against live servers with real VMs, once with
 * authentication off and once with it on (the token is a bandsox API key). Also the package's
 * two module formats: a CommonJS `require("bandsox")` script and an ESM `import` script.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";

import {
  AuthenticationError,
  BandSox,
  Client,
  InvalidInputError,
  Sandbox,
  UnsupportedError,
  VmNotFoundError,
} from "bandsox";

import { IMAGE, type LiveServer, SDK_DIR, startServer } from "./helpers.js";

const run = promisify(execFile);

for (const auth of [false, true]) {
  describe(`Vtrix Client (auth ${auth ? "on" : "off"})`, () => {
    let server: LiveServer;
    let client: Client;
    let bs: BandSox;
    let sb: Sandbox;
    let local: string;
    const project = `proj-${auth ? "a" : "b"}`;

    before(async () => {
      server = await startServer({ auth, prefix: `bsx-ts-vtrix-${auth ? "auth-" : ""}` });
      client = new Client({ baseURL: `${server.url}/`, token: server.apiKey, projectID: project });
      assert.equal(client.baseURL, server.url);
      bs = new BandSox({ baseUrl: server.url, apiKey: server.apiKey });
      local = mkdtempSync(join(tmpdir(), "bsx-ts-vtrix-local-"));
      try {
        sb = await client.create({
          user_id: "user-123",
          spec: { cpu: "1", memory: "256Mi" },
          ttl_hours: 2,
          env: { NODE_ENV: "production" },
          labels: { team: "infra" },
          payloads: [
            { path: "/app/run.sh", content: "#!/bin/sh\necho payload ran\n", mode: 0o755 },
            { path: "/app/data.bin", content: new Uint8Array([0, 1, 2, 255]) },
          ],
        });
      } catch (e) {
        throw new Error(`${String(e)}\nserver log:\n${server.logTail()}`);
      }
    });

    after(async () => {
      sb?.close();
      rmSync(local, { recursive: true, force: true });
      await server?.stop();
    });

    it("create maps spec, ttl_hours, env, labels, user_id, projectID and writes payloads first", async () => {
      assert.ok(sb instanceof Sandbox);
      assert.equal(sb.status, "active");
      assert.ok(sb.connected, "create() opens the WebSocket");
      assert.ok(Math.abs(sb.createdAt.getTime() - Date.now()) < 600_000, sb.createdAt.toISOString());
      const info = await bs.getVmInfo(sb.id);
      assert.ok(info);
      assert.equal(info.image, IMAGE);
      assert.equal(info.vcpu, 1);
      assert.equal(info.mem_mib, 256);
      assert.deepEqual(info.metadata, { team: "infra", user_id: "user-123", project_id: project });
      assert.equal(info.timeout_action, "stop");
      const left = (info.expires_at as number) * 1000 - Date.now();
      assert.ok(left > 7_000_000 && left <= 7_201_000, `ttl left ${left} ms`);
      assert.ok(sb.expireAt && sb.timeout > 7_000_000, `${sb.expireAt} ${sb.timeout}`);
      const r = await sb.runCommand("/app/run.sh && echo $NODE_ENV && od -An -tu1 /app/data.bin && stat -c %a /app/run.sh");
      assert.equal(r.exitCode, 0, r.output);
      assert.deepEqual(r.output.split("\n").map((l) => l.trim().replace(/\s+/g, " ")), ["payload ran", "production", "0 1 2 255", "755", ""]);
      assert.equal(sb.userId, "user-123");
    });

    it("refuses bad create options before making anything", async () => {
      const before = (await bs.listVms()).length;
      await assert.rejects(client.create({ user_id: "" }), InvalidInputError);
      await assert.rejects(client.create({ user_id: "u", spec: { memory: "lots" } }), InvalidInputError);
      await assert.rejects(client.create({ user_id: "u", spec: { cpu: "-1" } }), InvalidInputError);
      await assert.rejects(client.create({ user_id: "u", ttl_hours: -1 }), InvalidInputError);
      assert.equal((await bs.listVms()).length, before);
    });

    it("list filters by project, user_id and status; get and attach; getVmInfo is null on 404", async () => {
      const other = await bs.createVm({ image: IMAGE, metadata: { user_id: "user-123" } }); // no project
      try {
        const mine = await client.list();
        assert.deepEqual(mine.items.map((i) => i.id), [sb.id]);
        assert.equal(mine.pagination.total, 1);
        const item = mine.items[0];
        assert.equal(item.status, "active");
        assert.equal(item.vm_status, "running");
        assert.equal(item.user_id, "user-123");
        assert.equal(item.project_id, project);
        assert.deepEqual(item.labels, { team: "infra" });
        assert.ok(item.expire_at && item.created_at);
        const everyone = new Client({ baseURL: server.url, token: server.apiKey });
        const all = await everyone.list({ user_id: "user-123", status: "active" });
        assert.deepEqual(new Set(all.items.map((i) => i.id)), new Set([sb.id, other.id]));
        assert.equal((await everyone.list({ user_id: "nobody" })).items.length, 0);
        assert.equal((await everyone.list({ status: "stopped" })).items.length, 0);
        const page = await everyone.list({ limit: 1, offset: 0 });
        assert.deepEqual(page.pagination, { total: 2, limit: 1, offset: 0, has_more: true });

        assert.equal((await client.get(sb.id)).status, "active");
        await assert.rejects(client.get("no-such-sandbox"), VmNotFoundError);
        assert.equal(await bs.getVmInfo("no-such-sandbox"), null);
        await assert.rejects(bs.getVm("no-such-sandbox"), VmNotFoundError);

        const again = await client.attach(sb.id);
        try {
          assert.ok(again.connected);
          assert.equal((await again.runCommand("cat /app/run.sh | head -1")).output, "#!/bin/sh\n");
        } finally {
          again.close();
        }
        await assert.rejects(client.attach("no-such-sandbox"), VmNotFoundError);
      } finally {
        await client.delete(other.id);
      }
      await assert.rejects(client.get(other.id), VmNotFoundError);
    });

    it("uploadFile(localPath, sandboxPath) copies the local file; downloadFile back", async () => {
      const src = join(local, "model.bin");
      const bytes = Buffer.from(Array.from({ length: 70_000 }, (_, i) => i % 251));
      writeFileSync(src, bytes);
      await sb.uploadFile(src, "/app/models/model.bin", { mkdirRecursive: true });
      assert.equal((await sb.stat("/app/models/model.bin")).size, bytes.length);
      assert.equal(await sb.exists(src), false, "no guest file named after the local path");
      const dst = join(local, "out", "copy.bin");
      assert.equal(await sb.downloadFile("/app/models/model.bin", dst, { mkdirRecursive: true }), dst);
      assert.ok(readFileSync(dst).equals(bytes));
      assert.equal(await sb.downloadFile("/app/missing", join(local, "missing")), null);
      assert.equal(existsSync(join(local, "missing")), false);
    });

    it("runCommandDetached and runCommand report startedAt", async () => {
      const t0 = Date.now();
      const cmd = await sb.runCommandDetached("sleep 1; echo done", undefined, { working_dir: "/tmp" });
      assert.ok(cmd.startedAt instanceof Date);
      assert.ok(Math.abs(cmd.startedAt.getTime() - t0) < 5_000, cmd.startedAt.toISOString());
      assert.equal(cmd.cwd, "/tmp");
      const fin = await cmd.wait();
      assert.equal(fin.exitCode, 0);
      assert.equal(fin.output, "done\n");
      assert.ok(fin.startedAt instanceof Date);
      const r = await sb.runCommand("echo", ["a b"]);
      assert.equal(r.output, "a b\n");
      assert.ok(r.startedAt instanceof Date && r.startedAt.getTime() >= t0);
    });

    it("domain(port) is the proxy URL of that port", async () => {
      const r = await sb.runCommand("mkdir -p /www && echo from-guest > /www/index.html && httpd -p 8080 -h /www");
      assert.equal(r.exitCode, 0, r.output);
      const url = sb.domain(8080);
      assert.match(url, new RegExp(`/api/vms/${sb.id}/ports/8080/$`));
      assert.ok(!url.startsWith(server.url), `${url} is on the proxy listener, not the API's`);
      const headers: Record<string, string> = server.apiKey ? { Authorization: `Bearer ${server.apiKey}` } : {};
      const resp = await fetch(`${url}index.html`, { headers });
      assert.equal(resp.status, 200);
      assert.equal(await resp.text(), "from-guest\n");
      if (auth) assert.equal((await fetch(`${url}index.html`)).status, 401);
      assert.throws(() => sb.domain(0), InvalidInputError);
    });

    it("update accepts the same spec and refuses a change; configure rewrites payloads", async () => {
      await sb.update({ spec: { cpu: 1, memory: "256Mi" }, image: IMAGE });
      const e = await sb.update({ spec: { cpu: "2" } }).catch((x: unknown) => x);
      assert.ok(e instanceof UnsupportedError && e.code === "unsupported", String(e));
      assert.match(String(e), /cpu/);
      await sb.runCommand("rm /app/run.sh");
      await sb.configure();
      assert.equal((await sb.runCommand("/app/run.sh")).output, "payload ran\n");
      await sb.configure({ payloads: [{ path: "/app/extra.txt", content: "x" }] });
      assert.equal((await sb.read("/app/extra.txt")).content, "x");
    });

    it("extend, stop({blocking}), start, restart keep working through the handle", async () => {
      const beforeExt = sb.timeout;
      await sb.extend(3600);
      assert.ok(sb.timeout > beforeExt + 3_000_000, `${beforeExt} -> ${sb.timeout}`);
      await sb.stop({ blocking: true, pollIntervalMs: 200 });
      assert.equal(sb.status, "stopped");
      assert.equal((await client.list({ status: "stopped" })).items.length, 1);
      await sb.start();
      assert.equal(sb.status, "active");
      assert.ok(sb.connected, "start() reopens the WebSocket");
      assert.equal((await sb.runCommand("cat /app/extra.txt")).output, "x");
      await sb.restart();
      assert.equal(sb.status, "active");
      assert.equal((await sb.runCommand("cat /app/extra.txt")).output, "x");
    });

    it("the CommonJS (require) and ESM (import) builds both drive a sandbox", async () => {
      for (const script of ["smoke.cjs", "smoke.mjs"]) {
        const env: NodeJS.ProcessEnv = { ...process.env, BANDSOX_URL: server.url };
        if (server.apiKey) env.BANDSOX_API_KEY = server.apiKey;
        else delete env.BANDSOX_API_KEY;
        let stdout: string;
        try {
          ({ stdout } = await run(process.execPath, [join(SDK_DIR, "test", script)], { env, cwd: SDK_DIR, timeout: 240_000 }));
        } catch (e) {
          const err = e as { stdout?: string; stderr?: string; message: string };
          assert.fail(`${script}: ${err.message}\n${err.stdout ?? ""}\n${err.stderr ?? ""}\n${server.logTail()}`);
        }
        assert.match(stdout, new RegExp(`^${script === "smoke.cjs" ? "commonjs" : "esm"} exit=0 out=hello active deleted=true$`, "m"), stdout);
      }
    });

    if (auth) {
      it("a missing or wrong token is refused (401) and nothing is created", async () => {
        await assert.rejects(new Client({ baseURL: server.url, projectID: project }).create({ user_id: "u" }), AuthenticationError);
        await assert.rejects(new Client({ baseURL: server.url, token: "bsx_wrong" }).list(), AuthenticationError);
        assert.equal((await client.list()).items.length, 1);
      });
    }

    it("delete removes the sandbox", async () => {
      sb.close();
      await client.delete(sb.id);
      assert.equal(await bs.getVmInfo(sb.id), null);
      assert.equal((await client.list()).items.length, 0);
    });
  });
}
