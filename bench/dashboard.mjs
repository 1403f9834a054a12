// See bench/dashboard. A storage root with 1000 VM records (written into its SQLite database:
// stopped and failed VMs need no VMM), a real `bandsox serve` on it, and Debian's Chromium.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { gzipSync } from "node:zlib";

const repo = resolve(import.meta.dirname, "..");
const require = createRequire(join(repo, "tests/browser/package.json"));
const { chromium } = require("playwright-core");
const BIN = process.env.BANDSOX_BIN ?? join(repo, "target/release/bandsox");
const RUNS = Number(process.argv[2] ?? 15);
const VMS = 1000;
const GOAL_MS = 300;
const GOAL_KIB = 400;

const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const port = await new Promise((res) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => res(port));
  });
});

// Page weight: what each page loads, gzipped (level 9), from the build's manifest of imports.
const dist = join(repo, "web/dist/assets");
const assets = readdirSync(dist).filter((f) => /\.(js|css)$/.test(f));
const gz = Object.fromEntries(assets.map((f) => [f, gzipSync(readFileSync(join(dist, f)), { level: 9 }).length]));
const kib = (n) => (n / 1024).toFixed(1);
const total = Object.values(gz).reduce((a, b) => a + b, 0);

const root = mkdtempSync(join(tmpdir(), "bsxbench-dash-"));
const AGENT = process.env.BANDSOX_AGENT_BIN ?? join(repo, "target/x86_64-unknown-linux-gnu/release/bandsox-agent");
execFileSync(BIN, ["init", "--storage", root, "--agent", AGENT, "--no-default-image"], { stdio: "ignore" });
const rows = [];
const now = Date.now() / 1000;
for (let i = 0; i < VMS; i++) {
  const id = `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`;
  const status = i % 10 === 0 ? "failed" : "stopped";
  const meta = JSON.stringify({ team: `team-${i % 7}`, run: i });
  rows.push(`('${id}','bench-vm-${i}','bandsox/busybox','sha256:${"0".repeat(64)}','${status}',1,512,4096,${now - i},${now - i},NULL,NULL,'${meta}','{}')`);
}
execFileSync(
  "python3",
  ["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.stdin.read()); c.commit()", join(root, "bandsox.db")],
  {
    input: `INSERT INTO vms (id,name,image,image_digest,status,vcpu,mem_mib,disk_size_mib,created_at,updated_at,pid,error,metadata,env_vars) VALUES ${rows.join(",")}`,
  },
);

const server = spawn(BIN, ["serve", "--port", String(port), "--proxy-port", "0", "--storage", root], {
  stdio: ["ignore", "ignore", "ignore"],
});
const url = `http://127.0.0.1:${port}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"],
});
try {
  for (let i = 0; ; i++) {
    try {
      await fetch(`${url}/api/version`);
      break;
    } catch {
      if (i > 200) throw new Error("server did not come up");
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const api = [];
  for (let i = 0; i < RUNS; i++) {
    const t = performance.now();
    const list = await (await fetch(`${url}/api/vms`)).json();
    api.push(performance.now() - t);
    if (list.length !== VMS) throw new Error(`the server lists ${list.length} VMs`);
  }
  const render = [];
  const floor = [];
  const loaded = new Set();
  // The same shell without VM data: /keys (no keys), until its empty table shows.
  for (let i = 0; i < RUNS + 1; i++) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    await page.goto(url + "/keys", { waitUntil: "commit" });
    const ms = await (
      await page.waitForFunction(() => document.querySelector("#keys tbody td") && performance.now(), null, {
        polling: "raf",
        timeout: 30_000,
      })
    ).jsonValue();
    if (i > 0) floor.push(ms);
    await ctx.close();
  }
  for (let i = 0; i < RUNS + 1; i++) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } }); // cold cache
    const page = await ctx.newPage();
    page.on("request", (r) => r.url().includes("/assets/") && loaded.add(r.url().split("/assets/")[1]));
    await page.goto(url + "/", { waitUntil: "commit" });
    // Milliseconds from navigation start until the VM table shows its first page of rows and counts all 1000.
    const ms = await (
      await page.waitForFunction(
        (n) =>
          document.querySelectorAll("#vms tr[data-vm]").length >= 50 &&
          document.getElementById("vms-h")?.textContent?.includes(`(${n})`) &&
          performance.now(),
        VMS,
        { polling: "raf", timeout: 30_000 },
      )
    ).jsonValue();
    if (process.env.BENCH_DEBUG)
      console.log(
        ms.toFixed(0),
        JSON.stringify(
          await page.evaluate(() =>
            performance.getEntriesByType("resource").map((e) => [e.name.split("/").pop().slice(0, 14), Math.round(e.startTime), Math.round(e.responseEnd)]),
          ),
        ),
        Math.round(await page.evaluate(() => performance.getEntriesByType("navigation")[0].responseEnd)),
      );
    const heading = await page.locator("#vms-h").textContent();
    if (!heading.includes(`(${VMS})`)) throw new Error(`heading says ${heading}`);
    if (i > 0) render.push(ms); // the first load warms the server and Chromium
    await ctx.close();
  }
  const home = [...loaded].reduce((a, f) => a + (gz[f] ?? 0), 0);
  const p50 = pct(render, 50);
  console.log(`bench/dashboard: ${VMS} VM records, ${RUNS} cold loads of / in headless Chromium`);
  const { loadavg } = await import("node:os");
  console.log(`  (load average ${loadavg().map((l) => l.toFixed(2)).join(" ")} on ${(await import("node:os")).cpus().length} CPUs)`);
  console.log(`  GET /api/vms (1000 VMs)          p50 ${pct(api, 50).toFixed(1)} ms   p95 ${pct(api, 95).toFixed(1)} ms`);
  console.log(`  first render of /keys (no data)  p50 ${pct(floor, 50).toFixed(1)} ms   p95 ${pct(floor, 95).toFixed(1)} ms`);
  console.log(`  first render of / (50 rows)      p50 ${p50.toFixed(1)} ms   p95 ${pct(render, 95).toFixed(1)} ms   goal ${GOAL_MS} ms   ratio to goal ${(p50 / GOAL_MS).toFixed(2)}, to /keys ${(p50 / pct(floor, 50)).toFixed(2)}`);
  console.log(`  JS+CSS gzipped, home page        ${kib(home)} KiB   (${[...loaded].sort().join(", ")})`);
  console.log(`  JS+CSS gzipped, every page       ${kib(total)} KiB   goal ${GOAL_KIB} KiB   ratio to goal ${(total / 1024 / GOAL_KIB).toFixed(2)}`);
  for (const f of assets.sort()) console.log(`    ${f.padEnd(32)} ${kib(gz[f]).padStart(6)} KiB`);
} finally {
  await browser.close();
  server.kill("SIGTERM");
  rmSync(root, { recursive: true, force: true });
}
