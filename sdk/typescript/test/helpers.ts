/**
 * Live-server fixtures: a real `bandsox serve` on a temporary storage root (like the Python
 * SDK's conftest). The binary comes from $BANDSOX_BIN, else ../../target/debug/bandsox, else
 * `bandsox` on PATH; the guest agent from $BANDSOX_AGENT_BIN, else
 * ../../target/x86_64-unknown-linux-gnu/release/bandsox-agent. At teardown the server is
 * stopped and every process whose command line names the storage root (the VMMs, which outlive
 * the server by design) is killed.
 */

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** sdk/typescript (this file is build-test/test/helpers.js once compiled). */
export const SDK_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const REPO = resolve(SDK_DIR, "..", "..");
export const IMAGE = "bandsox/busybox";

export function bandsoxBin(): string {
  if (process.env.BANDSOX_BIN) return process.env.BANDSOX_BIN;
  const local = join(REPO, "target", "debug", "bandsox");
  return existsSync(local) ? local : "bandsox";
}

export function agentBin(): string {
  const p = process.env.BANDSOX_AGENT_BIN ?? join(REPO, "target", "x86_64-unknown-linux-gnu", "release", "bandsox-agent");
  if (!existsSync(p)) {
    throw new Error(`guest agent not found at ${p}; build it (see README) or set BANDSOX_AGENT_BIN`);
  }
  return p;
}

function run(args: string[]): string {
  const r = spawnSync(bandsoxBin(), args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 300_000 });
  if (r.error) throw new Error(`${bandsoxBin()} ${args.join(" ")}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${bandsoxBin()} ${args.join(" ")} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

export async function freePort(): Promise<number> {
  return await new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => res(port));
    });
  });
}

/** SIGKILLs every process (not this one) whose command line contains `needle`. */
export function killNaming(needle: string): void {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${entry}/cmdline`, "latin1");
    } catch {
      continue;
    }
    if (cmd.includes(needle)) {
      try {
        process.kill(Number(entry), "SIGKILL");
      } catch {
        // gone already
      }
    }
  }
}

/** Deletes the network namespaces (`bsx-<id>`) of the VMs of `storage` (killed above). */
export function removeVmNamespaces(storage: string): void {
  let ids: string[] = [];
  try {
    ids = readdirSync(join(storage, "vms"));
  } catch {
    return;
  }
  for (const id of ids) {
    if (existsSync(`/run/netns/bsx-${id}`)) spawnSync("ip", ["netns", "delete", `bsx-${id}`]);
  }
}

export interface LiveServer {
  url: string;
  storage: string;
  apiKey?: string;
  password?: string;
  logTail(): string;
  stop(): Promise<void>;
}

export async function startServer(opts: { auth?: boolean; prefix?: string } = {}): Promise<LiveServer> {
  const storage = mkdtempSync(join(tmpdir(), opts.prefix ?? "bsx-ts-"));
  let proc: ChildProcess | null = null;
  const log = join(storage, "serve.log");
  const stop = async () => {
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const p = proc;
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      const t = setTimeout(() => p.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    }
    killNaming(storage);
    removeVmNamespaces(storage);
    rmSync(storage, { recursive: true, force: true });
  };
  try {
    run(["init", "--storage", storage, "--agent", agentBin()]);
    let apiKey: string | undefined;
    let password: string | undefined;
    if (opts.auth) {
      const out = run(["auth", "init", "--storage", storage]);
      apiKey = /^API key\s+(\S+)/m.exec(out)?.[1];
      password = /^admin password\s+(\S+)/m.exec(out)?.[1];
      if (!apiKey || !password) throw new Error(`cannot parse \`bandsox auth init\` output:\n${out}`);
    }
    const port = await freePort();
    const fd = openSync(log, "w");
    proc = spawn(bandsoxBin(), ["serve", "--port", String(port), "--proxy-port", "0", "--storage", storage], {
      stdio: ["ignore", fd, fd],
    });
    closeSync(fd);
    const url = `http://127.0.0.1:${port}`;
    const end = Date.now() + 30_000;
    for (;;) {
      try {
        await fetch(`${url}/api/version`); // any answer (401 too) means up
        break;
      } catch {
        if (proc.exitCode !== null || Date.now() > end) {
          throw new Error(`bandsox serve did not come up:\n${readFileSync(log, "utf8")}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const logTail = () => {
      try {
        return readFileSync(log, "utf8").split("\n").slice(-40).join("\n");
      } catch {
        return "";
      }
    };
    return { url, storage, apiKey, password, logTail, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * A TCP proxy in front of the server that can cut every connection: how the tests drop a
 * WebSocket for real. `hang: true` accepts connections and never answers (call timeouts).
 */
export async function startProxy(target: string, opts: { hang?: boolean } = {}) {
  const { connect } = await import("node:net");
  const u = new URL(target);
  const sockets = new Set<import("node:net").Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => undefined);
    if (opts.hang) return;
    const up = connect(Number(u.port), u.hostname);
    sockets.add(up);
    up.on("close", () => sockets.delete(up));
    up.on("error", () => client.destroy());
    client.on("error", () => up.destroy());
    client.pipe(up);
    up.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    /** Destroys every open connection (both directions). */
    cut(): void {
      for (const s of sockets) s.destroy();
    },
    async close(): Promise<void> {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
