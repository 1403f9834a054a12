/**
 * The README's examples are the files in examples/: each one runs here against a live server and
 * its output is checked, and the README must contain each file verbatim (so they never drift).
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, it } from "node:test";
import { promisify } from "node:util";

import { type LiveServer, SDK_DIR, startServer } from "./helpers.js";

const run = promisify(execFile);
let server: LiveServer;
let authServer: LiveServer;

before(async () => {
  [server, authServer] = await Promise.all([
    startServer({ prefix: "bsx-ts-ex-" }),
    startServer({ prefix: "bsx-ts-exauth-", auth: true }),
  ]);
});

after(async () => {
  await Promise.all([server?.stop(), authServer?.stop()]);
});

/** Expected lines (regexes) in each example's output, in order. */
const EXPECT: Record<string, RegExp[]> = {
  "quickstart.ts": [/^Hello from a microVM!$/, /^0$/, /my-sandbox/, /^1 of 1 VMs$/],
  "streaming.ts": [
    /^\[live\] step 1$/,
    /^\[live\] step 2$/,
    /^exit 0$/,
    /^C \/tmp it's my dir$/,
    /^exitCode 0$/,
    /^stdout: out$/,
    /^stderr: err$/,
    /^done 0$/,
    /^stdout: tick 1$/,
    /^stdout: tick 3$/,
    /^detached exit 0 "tick 1\\ntick 2\\ntick 3\\n"$/,
    /^replayed, exit 0$/,
    /^killed, exit 143$/,
  ],
  "files.ts": [/^\{"port": 3000\}$/, /^config\.json 15 bytes dir=false$/, /^15$/, /^3$/, /^text \{"port": 8080\} false$/, /^6$/, /^run$/, /d logs/, /^true false$/, /^null$/, /^6$/],
  "snapshots.ts": [/^state$/, /^true checkpoint-1$/],
  "errors.ts": [/^404$/, /^vm_not_found$/, /^true$/, /not found/, /^(timed out|answered in time)/],
  "terminal.ts": [/^resized to 100x30$/],
  "auth.ts": [/^true 401$/, /authenticated: true/, /^0$/, /ci-runner/],
  "vtrix.ts": [/^exit_code=0$/, /^hello$/, /^Linux$/, /^detached: production \(started true\)$/, /^\{"port": 8080\}$/, /^Found 1 sandboxes: active$/],
};

const examples = readdirSync(join(SDK_DIR, "examples")).filter((f) => f.endsWith(".ts")).sort();

it("every example has expectations and is in the README verbatim", () => {
  assert.deepEqual(examples, Object.keys(EXPECT).sort());
  const readme = readFileSync(join(SDK_DIR, "README.md"), "utf8");
  for (const f of examples) {
    const src = readFileSync(join(SDK_DIR, "examples", f), "utf8");
    assert.ok(readme.includes("```ts\n" + src + "```"), `README.md does not contain examples/${f} verbatim`);
  }
});

for (const f of examples) {
  it(`example ${f} runs against a live server`, async () => {
    const auth = f === "auth.ts";
    const env: NodeJS.ProcessEnv = { ...process.env, BANDSOX_URL: (auth ? authServer : server).url };
    delete env.BANDSOX_API_KEY;
    if (auth) env.BANDSOX_ADMIN_PASSWORD = authServer.password;
    if (f === "vtrix.ts") {
      // The Vtrix example runs with authentication on: its token is an API key.
      env.BANDSOX_URL = authServer.url;
      env.BANDSOX_API_KEY = authServer.apiKey;
    }
    const js = join(SDK_DIR, "build-test", "examples", f.replace(/\.ts$/, ".js"));
    let stdout: string;
    try {
      ({ stdout } = await run(process.execPath, [js], { env, cwd: SDK_DIR, timeout: 180_000 }));
    } catch (e) {
      const err = e as { stdout?: string; stderr?: string; message: string };
      assert.fail(`${f} failed: ${err.message}\n${err.stdout ?? ""}\n${err.stderr ?? ""}\n${(auth || f === "vtrix.ts" ? authServer : server).logTail()}`);
    }
    const lines = stdout.split("\n");
    let at = 0;
    for (const re of EXPECT[f]) {
      const i = lines.findIndex((l, k) => k >= at && re.test(l));
      assert.ok(i >= 0, `${f}: no line matching ${re} after line ${at} in:\n${stdout}`);
      at = i + 1;
    }
  });
}
