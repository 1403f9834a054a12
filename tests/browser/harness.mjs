// A live `bandsox serve` on a throw-away storage root (real VMs under QEMU), and Debian's
// Chromium driven by playwright-core. BANDSOX_BIN and BANDSOX_AGENT_BIN name the binaries
// (scripts/test sets them).
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const repo = resolve(import.meta.dirname, "../..");
export const BIN = process.env.BANDSOX_BIN ?? join(repo, "target/debug/bandsox");
const AGENT =
  process.env.BANDSOX_AGENT_BIN ?? join(repo, "target/x86_64-unknown-linux-gnu/release/bandsox-agent");

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

/** A server on its own storage root; `auth` runs `bandsox auth init` first. */
export async function startServer({ auth = false } = {}) {
  const root = mkdtempSync(join(tmpdir(), "bsxbrowser-"));
  execFileSync(BIN, ["init", "--storage", root, "--agent", AGENT], { stdio: "ignore" });
  let password;
  let key;
  if (auth) {
    const out = execFileSync(BIN, ["auth", "init", "--storage", root], {
      env: { ...process.env, HOME: root },
    }).toString();
    password = out.match(/admin password\s+(\S+)/)[1];
    key = out.match(/API key\s+(\S+)/)[1];
  }
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const proc = spawn(BIN, ["serve", "--port", String(port), "--proxy-port", "0", "--storage", root], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  const vms = [];
  const headers = { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) };
  const server = {
    url,
    password,
    key,
    /** JSON in, [status, JSON] out. */
    async call(method, path, body) {
      const r = await fetch(url + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await r.text();
      return [r.status, text ? JSON.parse(text) : null];
    },
    async createVm(body = {}) {
      const [st, vm] = await server.call("POST", "/api/vms", { image: "bandsox/busybox", ...body });
      if (st !== 200) throw new Error(`create answered ${st}: ${JSON.stringify(vm)}`);
      vms.push(vm.id);
      return vm.id;
    },
    async exec(id, command) {
      const [st, out] = await server.call("POST", `/api/vms/${id}/exec`, { command, timeout: 60 });
      if (st !== 200) throw new Error(`exec answered ${st}: ${JSON.stringify(out)}`);
      return out;
    },
    async writeFile(id, path, content, encoding) {
      const [st, out] = await server.call("POST", `/api/vms/${id}/write-file`, { path, content, encoding });
      if (st !== 200) throw new Error(`write-file answered ${st}: ${JSON.stringify(out)}`);
    },
    async stop() {
      for (const id of vms) await server.call("DELETE", `/api/vms/${id}`).catch(() => {});
      proc.kill("SIGTERM");
      await new Promise((r) => (proc.exitCode === null ? proc.on("exit", r) : r()));
      try {
        execFileSync("pkill", ["-9", "-f", `qemu-system.*${root}`]);
      } catch {
        // nothing left to kill
      }
      rmSync(root, { recursive: true, force: true });
    },
  };
  for (let i = 0; ; i++) {
    try {
      await fetch(`${url}/api/auth/check`);
      break;
    } catch (e) {
      if (i > 300 || proc.exitCode !== null) throw new Error(`server did not come up: ${e}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return server;
}

/** Debian's Chromium, headless, with the flags this closed network needs. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
