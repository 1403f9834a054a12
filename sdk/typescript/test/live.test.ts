/** Against a live `bandsox serve` with real VMs (QEMU/TCG here). One shared VM for most tests. */

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import {
  BandSox,
  BandSoxError,
  BandSoxTimeoutError,
  CommandNotFoundError,
  ConflictError,
  InvalidInputError,
  MicroVM,
  NotFoundError,
  ServerUnavailableError,
  SnapshotNotFoundError,
  VmNotFoundError,
  WebSocketError,
  type ExecEvent,
} from "bandsox";

import { IMAGE, type LiveServer, startProxy, startServer } from "./helpers.js";

let server: LiveServer;
let bs: BandSox;
let vm: MicroVM;
let local: string;

before(async () => {
  server = await startServer({ prefix: "bsx-ts-live-" });
  bs = new BandSox({ baseUrl: server.url });
  local = mkdtempSync(join(tmpdir(), "bsx-ts-local-"));
  try {
    vm = await bs.createVm({
      image: IMAGE,
      name: "ts-shared",
      metadata: { suite: "typescript", role: "shared" },
      env_vars: { GREETING: "hello" },
    });
  } catch (e) {
    throw new Error(`${String(e)}\nserver log:\n${server.logTail()}`);
  }
});

after(async () => {
  rmSync(local, { recursive: true, force: true });
  await server?.stop();
});

/** Asserts that `p` rejects with an instance of `cls`; returns the error. */
async function rejectsWith<T extends Error>(p: Promise<unknown>, cls: new (...a: never[]) => T): Promise<T> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
    return e as T;
  }
  assert.fail(`expected ${cls.name}, but it resolved`);
}

describe("VMs", () => {
  it("creates, gets and lists VMs with filters and pagination", async () => {
    assert.equal(vm.status, "running");
    assert.equal(vm.info?.image, IMAGE);
    assert.ok(vm.createdAt && Math.abs(vm.createdAt.getTime() - Date.now()) < 600_000, String(vm.createdAt));
    assert.equal((await bs.version()).version, "0.1.0");
    const info = await bs.getVmInfo(vm.id);
    assert.equal(info?.id, vm.id);
    assert.equal(info?.env_vars?.GREETING, "hello");
    const again = await bs.getVm(vm.id);
    assert.equal(again.id, vm.id);
    assert.equal((await vm.getInfo()).name, "ts-shared");
    assert.ok((await bs.listVms()).some((v) => v.id === vm.id));
    assert.deepEqual((await bs.listVms({ metadata_equals: { suite: "typescript" } })).map((v) => v.id), [vm.id]);
    assert.deepEqual(await bs.listVms({ metadata_equals: { suite: "nope" } }), []);
    const page = await bs.listVmsPage({ limit: 1, offset: 0, status: "running" });
    assert.equal(page.items.length, 1);
    assert.ok(page.pagination.total >= 1);
    assert.equal(page.pagination.has_more, page.pagination.total > 1);
    const past = await bs.listVmsPage({ limit: 1, offset: 1000 });
    assert.deepEqual(past.items, []);
    assert.equal(past.pagination.has_more, false);
    assert.ok((await bs.listProjects()).some((v) => v.id === vm.id));
    assert.ok((await bs.listVms({ name: "ts-sha" })).some((v) => v.id === vm.id));
    assert.match(vm.getGuestIp() ?? "", /^10\.231\./, "the per-VM host-side address");
    assert.equal(await vm.waitForAgent(5), true);
    assert.equal(bs.vm(vm.id).info, null);
  });

  it("renames and replaces metadata (handle and client)", async () => {
    assert.equal(await vm.rename("ts-renamed"), "ts-renamed");
    assert.equal(vm.name, "ts-renamed");
    assert.equal(await bs.renameVm(vm.id, "ts-shared"), "ts-shared");
    assert.equal((await bs.getVmInfo(vm.id))?.name, "ts-shared");
    const updated = await vm.updateMetadata({ suite: "typescript", role: "shared", n: 1 });
    assert.equal(updated.metadata.n, 1);
    const viaClient = await bs.updateVmMetadata(vm.id, { suite: "typescript", role: "shared" });
    assert.equal(viaClient.metadata.n, undefined);
  });

  it("extends and sets the timeout", async () => {
    const set = await vm.setTimeout(3600, "stop");
    assert.ok(set.expires_at, "expires_at set");
    const before = Number(set.expires_at);
    assert.ok(vm.timeout > 3500_000 && vm.timeout <= 3601_000, String(vm.timeout));
    assert.ok(vm.expireAt && Date.parse(vm.expireAt) > Date.now());
    const ext = await vm.extend(600);
    assert.ok(Number(ext.expires_at) >= before + 599, `${before} → ${ext.expires_at}`);
    await vm.extendTimeout(60);
    await rejectsWith(vm.extend(0), InvalidInputError);
    assert.equal((await vm.setTimeout(0)).expires_at ?? null, null);
  });
});

describe("commands", () => {
  it("execCommand returns output and exit code", async () => {
    const r = await vm.execCommand("echo out; echo err >&2; exit 7");
    assert.deepEqual([r.exit_code, r.stdout, r.stderr], [7, "out\n", "err\n"]);
    const e = await vm.execCommand("echo $GREETING-$X; pwd", 10, { env: { X: "y" }, cwd: "/tmp" });
    assert.equal(e.stdout, "hello-y\n/tmp\n");
  });

  it("createVmFromDockerfile builds in a VM, then boots a VM of the result", async () => {
    const built = await bs.createVmFromDockerfile(`FROM ${IMAGE}\nENV BUILT=yes\nRUN echo made > /made\n`, {
      tag: "ts/built:1",
      name: "ts-built",
    });
    try {
      assert.equal(built.info?.image, "ts/built:1");
      const r = await built.execCommand("cat /made; echo $BUILT");
      assert.equal(r.stdout, "made\nyes\n");
    } finally {
      await built.delete();
    }
  });

  it("createVmFromDockerfile sends a context folder: COPY of a file and a folder, .dockerignore, no way out", async () => {
    const ctx = mkdtempSync(join(local, "ctx-"));
    mkdirSync(join(ctx, "src", "sub"), { recursive: true });
    writeFileSync(join(ctx, "config.txt"), "cfg\n");
    writeFileSync(join(ctx, "src", "main.sh"), "echo main\n");
    writeFileSync(join(ctx, "src", "sub", "deep.txt"), "deep\n");
    writeFileSync(join(ctx, "src", "debug.log"), "log\n");
    writeFileSync(join(ctx, "secret.env"), "TOKEN=x\n");
    writeFileSync(join(ctx, ".dockerignore"), "secret.env\n**/*.log\n");
    const long = `${"d".repeat(60)}/${"f".repeat(70)}.txt`; // > 100 bytes: a PAX record
    mkdirSync(join(ctx, "d".repeat(60)));
    writeFileSync(join(ctx, long), "long\n");
    const text = `FROM ${IMAGE}\nARG WORD=hi\nCOPY config.txt /etc/app.conf\nCOPY src /app/src\nCOPY ${long} /long.txt\nRUN echo $WORD > /word\n`;
    const built = await bs.createVmFromDockerfile(text, { tag: "ts/ctx:1", context: ctx, build_args: { WORD: "hello" } });
    try {
      const r = await built.execCommand("cat /etc/app.conf /app/src/main.sh /app/src/sub/deep.txt /long.txt /word; ls -A /app/src");
      assert.equal(r.stdout, "cfg\necho main\ndeep\nlong\nhello\nmain.sh\nsub\n", r.stderr);
    } finally {
      await built.delete();
    }
    writeFileSync(join(local, "outside.txt"), "host\n");
    const out = await rejectsWith(
      bs.createVmFromDockerfile(`FROM ${IMAGE}\nCOPY ../outside.txt /x\n`, { context: ctx }),
      InvalidInputError,
    );
    assert.match(out.message, /outside the build context/);
  });

  it("execPython answers with a clear error on an image without Python", async () => {
    const r = await vm.execPython({ code: "print(1)", timeout: 20 });
    assert.equal(r.success, false);
    assert.match(String(r.error), /python3 not found/);
  });

  it("execStream delivers chunks before the command ends", async () => {
    const t0 = Date.now();
    const seen: Array<[string, number]> = [];
    const r = await bs.execStream(vm.id, {
      command: "echo first; sleep 2; echo second >&2",
      timeout: 30,
      onStdout: (c) => seen.push([c, Date.now() - t0]),
      onStderr: (c) => seen.push([`E:${c}`, Date.now() - t0]),
    });
    const end = Date.now() - t0;
    assert.equal(r.exit_code, 0);
    assert.deepEqual(seen.map((s) => s[0]), ["first\n", "E:second\n"]);
    assert.ok(end - seen[0][1] >= 1500, `first chunk at ${seen[0][1]} ms, end at ${end} ms`);
  });

  it("runCommand streams to writers live; args, env, cwd, sudo-less, stdin", async () => {
    const t0 = Date.now();
    const chunks: Array<[string, number]> = [];
    const r = await vm.runCommand("echo a; sleep 2; echo b", undefined, {
      stdout: { write: (c: string) => chunks.push([c, Date.now() - t0]) },
    });
    const end = Date.now() - t0;
    assert.equal(r.exitCode, 0);
    assert.equal(r.output, "a\nb\n");
    assert.equal(chunks[0][0], "a\n");
    assert.ok(end - chunks[0][1] >= 1500, `first chunk at ${chunks[0][1]} ms, end at ${end} ms`);

    const q = await vm.runCommand("printf '%s|' ", ["it's", "a b", "$HOME"], {});
    assert.equal(await q.stdout(), "it's|a b|$HOME|");
    const w = await vm.runCommand("echo $FOO; pwd; echo oops >&2; exit 4", undefined, { env: { FOO: "bar baz" }, working_dir: "/tmp" });
    assert.deepEqual([w.exitCode, w.stdoutText, w.stderrText], [4, "bar baz\n/tmp\n", "oops\n"]);
    let fed = "";
    const s = await vm.runCommand("tr a-z A-Z", undefined, { stdin: "hello stdin\n", stdout: { write: (c: string) => (fed += c) } });
    assert.equal(s.exitCode, 0);
    assert.equal(fed, "HELLO STDIN\n");
    assert.ok(s.cmdId, "stdin runs as a durable command");
  });

  it("runCommandStream yields typed events live", async () => {
    const t0 = Date.now();
    const events: Array<ExecEvent & { at: number }> = [];
    for await (const ev of vm.runCommandStream("echo one; sleep 2; echo two >&2; exit 3")) {
      events.push({ ...ev, at: Date.now() - t0 });
    }
    assert.deepEqual(
      events.map((e) => e.type),
      ["start", "stdout", "stderr", "done"],
    );
    const out = events[1] as { data: string; at: number };
    const done = events[3] as { exitCode: number; at: number };
    assert.equal(out.data, "one\n");
    assert.equal(done.exitCode, 3);
    assert.ok(done.at - out.at >= 1500, `stdout at ${out.at} ms, done at ${done.at} ms`);
  });

  it("runCommandDetached → Command: wait, stdout, stderr, logs, execLogs, getCommand, listCommands", async () => {
    const cmd = await vm.runCommandDetached("echo start; sleep 2; echo end; echo warn >&2; exit 5", undefined, { working_dir: "/tmp" });
    assert.ok(cmd.cmdId && cmd.pid > 0);
    assert.equal(cmd.cwd, "/tmp");
    const t0 = Date.now();
    const logs: Array<[string, string, number]> = [];
    for await (const ev of cmd.logs()) logs.push([ev.stream, ev.data, Date.now() - t0]);
    const end = Date.now() - t0;
    assert.equal(logs.filter((l) => l[0] === "stdout").map((l) => l[1]).join(""), "start\nend\n");
    assert.equal(logs.filter((l) => l[0] === "stderr").map((l) => l[1]).join(""), "warn\n");
    assert.ok(end - logs[0][2] >= 1000, `first log at ${logs[0][2]} ms, end at ${end} ms`);
    const done = await cmd.wait();
    assert.equal(done.exitCode, 5);
    assert.equal(cmd.exitCode, 5);
    assert.equal(done.output, "start\nend\nwarn\n");
    assert.equal(await cmd.stdout(), "start\nend\n");
    assert.equal(await cmd.stderr(), "warn\n");
    assert.equal(await cmd.collectOutput("both"), "start\nend\nwarn\n");
    // Replay after the fact.
    const replay: ExecEvent[] = [];
    for await (const ev of vm.execLogs(cmd.cmdId)) replay.push(ev);
    assert.equal(replay[0].type, "start");
    assert.deepEqual(replay.at(-1), { type: "done", exitCode: 5 });
    assert.equal(replay.filter((e) => e.type === "stdout").map((e) => (e as { data: string }).data).join(""), "start\nend\n");
    const handle = vm.getCommand(cmd.cmdId);
    assert.equal((await handle.wait()).exitCode, 5);
    assert.ok((await vm.listCommands()).some((c) => c.cmd_id === cmd.cmdId && !c.running));
    const state = await handle.refresh();
    assert.equal(state.status?.exit_code, 5);
  });

  it("kill signals a detached command; wait with a timeout", async () => {
    const cmd = await vm.runCommandDetached("sleep 100");
    await rejectsWith(cmd.wait({ timeout: 1 }), BandSoxTimeoutError);
    await cmd.kill("SIGKILL");
    const done = await cmd.wait({ timeout: 20 });
    assert.equal(done.exitCode, 128 + 9);
    const other = await vm.runCommandDetached("sleep 100");
    await vm.kill(other.cmdId);
    assert.equal((await other.wait({ timeout: 20 })).exitCode, 128 + 15);
    const sin = await vm.runCommandDetached("cat", undefined, { stdinOpen: true });
    await sin.sendStdin("bytes\n");
    await sin.sendStdin(new TextEncoder().encode("more\n"), { close: true });
    assert.equal((await sin.wait({ timeout: 20 })).stdoutText, "bytes\nmore\n");
  });

  it("a command over its timeout is a BandSoxTimeoutError (exec and exec-stream)", async () => {
    const e = await rejectsWith(vm.execCommand("sleep 10", 1), BandSoxTimeoutError);
    assert.equal(e.code, "exec_timeout");
    assert.equal(e.statusCode, 504);
    const s = await rejectsWith(vm.runCommand("sleep 10", undefined, { timeout_sec: 1 }), BandSoxTimeoutError);
    assert.equal(s.code, "exec_timeout");
  });
});

describe("files", () => {
  it("BandSox file methods", async () => {
    await vm.writeFile({ path: "/app/config.json", content: '{"debug": true}' });
    await vm.appendText("/app/config.json", "\nline2");
    await vm.appendFile("/app/config.json", Buffer.from("\nline3").toString("base64"), "base64");
    assert.equal(await vm.readFile("/app/config.json"), '{"debug": true}\nline2\nline3');
    const info = await vm.getFileInfo("/app/config.json");
    assert.equal(info.size, 27);
    assert.equal(info.is_file, true);
    await vm.writeFile({ path: "/app/run.sh", content: "#!/bin/sh\necho ran\n", mode: "755" });
    assert.equal((await vm.getFileInfo("/app/run.sh")).mode, "755");
    assert.equal((await vm.execCommand("/app/run.sh")).stdout, "ran\n");
    const listing = await vm.listDir("/app");
    assert.deepEqual(listing.files.map((f) => f.name).sort(), ["config.json", "run.sh"]);
    const bytes = new Uint8Array(300_000).map((_, i) => (i * 7) % 256);
    await vm.uploadFile("/app/data.bin", bytes);
    const back = await vm.downloadFile("/app/data.bin");
    assert.ok(Buffer.from(back).equals(Buffer.from(bytes)));
    await vm.uploadFile("/app/text.txt", "uploaded text");
    assert.equal(await vm.readFile("/app/text.txt"), "uploaded text");
    await vm.uploadFolder({ "src/main.py": "print('hello')", "src/lib/utils.py": "x = 1", "README.md": "# P" }, "/proj");
    assert.equal(await vm.readFile("/proj/src/lib/utils.py"), "x = 1");
    assert.equal(await vm.readFile("/proj/README.md"), "# P");
    const nf = await rejectsWith(vm.getFileInfo("/nope/missing"), NotFoundError);
    assert.equal(nf.statusCode, 404);
  });

  it("Vtrix-style file methods", async () => {
    const w = await vm.write("/work/a.txt", "héllo port 3000\n");
    assert.equal(w.bytes_written, 17);
    const r = await vm.read("/work/a.txt");
    assert.deepEqual([r.type, r.content, r.truncated], ["text", "héllo port 3000\n", false]);
    assert.deepEqual(await vm.edit("/work/a.txt", "3000", "8080"), { message: "edited" });
    assert.equal((await vm.read("/work/a.txt")).content, "héllo port 8080\n");
    const noMatch = await rejectsWith(vm.edit("/work/a.txt", "zzz", "y"), BandSoxError);
    assert.equal(noMatch.code, "edit_no_match");
    // Big file: read() truncates at 200 KB, readStream/readToBuffer give it all.
    const big = "0123456789abcdef".repeat(20_000); // 320 000 bytes
    await vm.write("/work/big.txt", big);
    const rb = await vm.read("/work/big.txt");
    assert.equal(rb.truncated, true);
    assert.equal(rb.content?.length, 200 * 1024);
    const chunks: Buffer[] = [];
    for await (const c of vm.readStream("/work/big.txt", 100_000)) chunks.push(c);
    assert.deepEqual(chunks.map((c) => c.length), [100_000, 100_000, 100_000, 20_000]);
    assert.equal(Buffer.concat(chunks).toString(), big);
    assert.equal((await vm.readToBuffer("/work/big.txt"))?.toString(), big);
    assert.equal(await vm.readToBuffer("/work/none"), null);
    // An image comes back as base64 with its MIME type.
    const png = Buffer.from(
      "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
      "base64",
    );
    await vm.writeFiles([
      { path: "/work/bin/run.sh", content: Buffer.from("#!/bin/sh\necho batch\n"), mode: 0o755 },
      { path: "/work/pixel.png", content: png },
    ]);
    const img = await vm.read("/work/pixel.png");
    assert.equal(img.type, "image");
    assert.equal(img.mime_type, "image/png");
    assert.ok(Buffer.from(img.data ?? "", "base64").equals(png));
    assert.equal((await vm.runCommand("/work/bin/run.sh")).stdoutText, "batch\n");
    await vm.mkDir("/work/deep/er/dir");
    await vm.mkDir("/work/deep/er/dir"); // exists: fine
    const st = await vm.stat("/work/deep/er/dir");
    assert.deepEqual([st.exists, st.is_dir, st.is_file], [true, true, false]);
    assert.ok(st.modified_at && !Number.isNaN(Date.parse(st.modified_at)));
    assert.deepEqual(await vm.stat("/work/missing"), { exists: false, is_file: false, is_dir: false, size: 0, modified_at: undefined });
    assert.equal(await vm.exists("/work/a.txt"), true);
    assert.equal(await vm.exists("/work/missing"), false);
    const entries = await vm.listFiles("/work");
    assert.deepEqual(entries.map((e) => `${e.is_dir ? "d" : "f"} ${e.name}`).sort(), ["d bin", "d deep", "f a.txt", "f big.txt", "f pixel.png"]);
    await rejectsWith(vm.listFiles("/work/missing"), NotFoundError);
    await vm.remove("/work/deep", true);
    assert.equal(await vm.exists("/work/deep"), false);
  });

  it("uploads and downloads local files", async () => {
    const src = join(local, "model.bin");
    const data = randomBytes(8 << 20); // streamed from disk both ways
    writeFileSync(src, data);
    await vm.uploadLocalFile(src, "/up/nested/model.bin", { mkdirRecursive: true });
    assert.equal((await vm.stat("/up/nested/model.bin")).size, 8 << 20);
    const md5 = createHash("md5").update(data).digest("hex");
    assert.equal((await vm.execCommand("md5sum /up/nested/model.bin")).stdout.split(" ")[0], md5);
    const dst = await vm.downloadFile("/up/nested/model.bin", join(local, "out", "m.bin"), { mkdirRecursive: true });
    assert.equal(dst, join(local, "out", "m.bin"));
    assert.ok(readFileSync(dst!).equals(data));
    assert.equal(await vm.downloadFile("/up/none", join(local, "none.bin")), null);
    const many = await vm.downloadFiles([
      { sandboxPath: "/up/nested/model.bin", localPath: join(local, "d1.bin") },
      { sandboxPath: "/proj/README.md", localPath: join(local, "d2.md") },
      { sandboxPath: "/up/missing", localPath: join(local, "d3") },
    ]);
    assert.deepEqual([...many.entries()].sort(), [
      ["/proj/README.md", join(local, "d2.md")],
      ["/up/missing", null],
      ["/up/nested/model.bin", join(local, "d1.bin")],
    ]);
    assert.equal(readFileSync(join(local, "d2.md"), "utf8"), "# P");
  });
});

describe("terminal", () => {
  it("connectTerminal: input, output, resize", async () => {
    const term = vm.connectTerminal(100, 30);
    let out = "";
    const errors: Error[] = [];
    term.onOutput((d) => (out += d));
    term.onError((e) => errors.push(e));
    term.sendInput("stty size; echo hi-$((40+2))\n");
    await term.ready;
    await waitFor(() => out.includes("hi-42"), 15_000, () => out);
    assert.match(out, /30 100/);
    term.resize(120, 40);
    term.sendInput("stty size\n");
    await waitFor(() => out.includes("40 120"), 15_000, () => out);
    term.sendInput("exit\n");
    assert.equal(await term.closed, 1000);
    assert.deepEqual(errors, []);
  });

  it("a terminal on an unknown VM reports an error", async () => {
    const term = bs.vm("no-such-vm").connectTerminal();
    const err = await new Promise<Error>((r) => term.onError(r));
    assert.ok(err instanceof BandSoxError);
  });
});

describe("snapshots and lifecycle", () => {
  it("pause/resume/stop/start/restart, snapshot, restore, delete", async () => {
    const v = await bs.createVm({ image: IMAGE, name: "ts-life" });
    try {
      await v.write("/root/state.txt", "kept\n");
      await v.pause();
      assert.equal((await v.getInfo()).status, "paused");
      const c = await rejectsWith(v.execCommand("true"), ConflictError);
      assert.equal(c.statusCode, 409);
      await v.resume();
      await bs.pauseVm(v.id);
      await bs.resumeVm(v.id);
      assert.equal((await v.execCommand("cat /root/state.txt")).stdout, "kept\n");

      const snapId = await v.snapshot({ name: "ts-snap", metadata: { k: "v" } });
      assert.ok((await bs.listSnapshots()).some((s) => s.id === snapId && s.name === "ts-snap"));
      assert.equal((await bs.getSnapshot(snapId)).metadata.k, "v");
      assert.equal(await bs.renameSnapshot(snapId, "ts-snap-2"), "ts-snap-2");
      assert.equal((await bs.updateSnapshotMetadata(snapId, { k: "w" })).metadata.k, "w");
      const snap2 = await bs.snapshotVm(v.id, { name: "ts-snap-b" });

      const restored = await bs.restoreVm(snapId, { name: "ts-restored" });
      try {
        assert.equal((await restored.execCommand("cat /root/state.txt")).stdout, "kept\n");
        assert.equal(restored.info?.restored_from ?? snapId, snapId);
      } finally {
        await restored.delete();
      }
      await bs.deleteSnapshot(snap2);
      await bs.deleteSnapshot(snapId);
      await rejectsWith(bs.getSnapshot(snapId), SnapshotNotFoundError);

      await v.stop();
      assert.equal((await v.getInfo()).status, "stopped");
      await rejectsWith(v.execCommand("true"), ConflictError);
      await v.start();
      assert.equal(await v.waitForAgent(60), true);
      assert.equal((await v.execCommand("cat /root/state.txt")).stdout, "kept\n");
      await v.restart();
      assert.equal((await v.execCommand("echo up")).stdout, "up\n");
      await bs.stopVm(v.id);
      assert.equal((await v.getInfo()).status, "stopped");
      await bs.startVm(v.id);
      await bs.restartVm(v.id);
      assert.equal((await v.execCommand("cat /root/state.txt")).stdout, "kept\n");
    } finally {
      await bs.deleteVm(v.id).catch(() => undefined);
    }
    await rejectsWith(bs.getVm(v.id), VmNotFoundError);
  });
});

describe("templates and fork", () => {
  it("builds, lists and deletes a template; forks a running VM", async () => {
    const t = await bs.buildTemplate({ image: IMAGE, enable_networking: false });
    assert.equal(t.image, IMAGE);
    assert.ok((await bs.listTemplates()).some((x) => x.id === t.id));
    const [child] = await vm.fork(1);
    try {
      assert.notEqual(child.id, vm.id);
      assert.equal((await child.execCommand("echo forked")).stdout, "forked\n");
    } finally {
      await child.delete();
    }
    const [named] = await bs.forkVm(vm.id, 1, ["ts-fork-b"]);
    try {
      assert.equal((await named.getInfo()).name, "ts-fork-b");
    } finally {
      await named.delete();
    }
    assert.equal((await vm.execCommand("echo still")).stdout, "still\n");
    await bs.deleteTemplate(t.id);
    assert.ok(!(await bs.listTemplates()).some((x) => x.id === t.id));
  });
});

describe("persistent VM socket", () => {
  /** A connected handle, or null when this server has no /socket route yet. */
  async function connected(client: BandSox): Promise<MicroVM | null> {
    const h = client.vm(vm.id);
    try {
      await h.connect();
    } catch (e) {
      if (e instanceof NotFoundError && e.code === "route_not_found") return null;
      throw e;
    }
    return h;
  }

  it("runs operations and streamed commands over one socket", async (t) => {
    const h = await connected(bs);
    if (!h) return t.skip("this server has no /api/vms/{id}/socket");
    try {
      assert.equal(h.connected, true);
      // Many at once, answered in completion order.
      const [slow, fast, st] = await Promise.all([
        h.execCommand("sleep 1; echo slow"),
        h.execCommand("echo fast"),
        h.stat("/etc/passwd"),
      ]);
      assert.deepEqual([slow.stdout, fast.stdout, st.exists], ["slow\n", "fast\n", true]);
      await h.write("/sock/a.txt", "over the socket");
      assert.equal((await h.read("/sock/a.txt")).content, "over the socket");
      assert.ok((await h.listFiles("/sock")).some((e) => e.name === "a.txt"));
      await rejectsWith(h.getFileInfo("/sock/missing"), NotFoundError);
      const t0 = Date.now();
      let firstAt = -1;
      const r = await h.runCommand("echo a; sleep 2; echo b", undefined, {
        stdout: { write: () => (firstAt = firstAt < 0 ? Date.now() - t0 : firstAt) },
      });
      assert.equal(r.output, "a\nb\n");
      assert.ok(Date.now() - t0 - firstAt >= 1500, `first chunk at ${firstAt} ms`);
      const cmd = await h.runCommandDetached("echo detached; exit 2");
      assert.equal((await cmd.wait({ timeout: 20 })).exitCode, 2);
      assert.equal(await cmd.stdout(), "detached\n");
      await rejectsWith(h.runCommand("sleep 10", undefined, { timeout_sec: 1 }), BandSoxTimeoutError);
    } finally {
      h.close();
    }
    assert.equal(h.connected, false);
    assert.equal((await h.execCommand("echo http")).stdout, "http\n"); // back on HTTP
  });

  it("a dropped socket rejects pending calls with WebSocketError", async (t) => {
    const proxy = await startProxy(server.url);
    try {
      const h = await connected(new BandSox({ baseUrl: proxy.url }));
      if (!h) return t.skip("this server has no /api/vms/{id}/socket");
      const pending = h.execCommand("sleep 5");
      await new Promise((r) => setTimeout(r, 300));
      proxy.cut();
      const e = await rejectsWith(pending, WebSocketError);
      assert.equal(e.code, "websocket_closed");
      assert.equal(h.connected, false);
    } finally {
      await proxy.close();
    }
  });
});

describe("errors", () => {
  it("maps problem codes to classes with statusCode, code and detail", async () => {
    const e = await rejectsWith(bs.getVm("nonexistent-id"), VmNotFoundError);
    assert.ok(e instanceof NotFoundError && e instanceof BandSoxError);
    assert.deepEqual([e.statusCode, e.code], [404, "vm_not_found"]);
    assert.match(e.message, /not found/);
    assert.equal(e.detail, e.message);
    await rejectsWith(bs.deleteSnapshot("no-such-snap"), SnapshotNotFoundError);
    const cmd = await rejectsWith(vm.getCommand("cmd-999999").refresh(), CommandNotFoundError);
    assert.equal(cmd.code, "command_not_found");
    const inv = await rejectsWith(bs.createVm({ image: IMAGE, vcpu: 0 }), InvalidInputError);
    assert.ok([400, 422].includes(inv.statusCode ?? 0));
    const copy = await rejectsWith(bs.createVmFromDockerfile(`FROM ${IMAGE}\nCOPY . /x\n`), InvalidInputError);
    assert.match(copy.message, /COPY\/ADD need a build context/);
    const failed = await rejectsWith(bs.createVmFromDockerfile(`FROM ${IMAGE}\nRUN exit 4\n`), InvalidInputError);
    assert.equal(failed.code, "build_failed");
    // Nothing listens on port 9 in the guest: the server answers 502 guest_unreachable.
    const http = await rejectsWith(vm.sendHttpRequest({ port: 9, path: "/health", timeout: 2 }), BandSoxError);
    assert.deepEqual([http.statusCode, http.code], [502, "guest_unreachable"]);
    // Bytes go out exactly: a listener records the request and never answers (504).
    // (nc shuts its side when its stdin ends, so stdin is a pipe that stays open.)
    await vm.execCommand("(sleep 10 | nc -l -p 8082 > /tmp/req.bin 2>/dev/null &) ; sleep 0.3");
    const body = Uint8Array.from({ length: 256 }, (_, i) => i);
    const hung = await rejectsWith(vm.sendHttpRequest({ port: 8082, method: "POST", body, timeout: 2 }), BandSoxError);
    assert.equal(hung.statusCode, 504);
    const recorded = await vm.readToBuffer("/tmp/req.bin");
    assert.ok(recorded && recorded.subarray(recorded.length - 256).equals(Buffer.from(body)), "body sent byte for byte");
    const stream = await rejectsWith(bs.execStream("no-such-vm", { command: "true" }), VmNotFoundError);
    assert.equal(stream.code, "vm_not_found");
  });

  it("an unreachable server is a ServerUnavailableError", async () => {
    const { freePort } = await import("./helpers.js");
    const dead = new BandSox({ baseUrl: `http://127.0.0.1:${await freePort()}` });
    await rejectsWith(dead.listVms(), ServerUnavailableError);
  });

  it("a call timeout fires (server accepts and never answers)", async () => {
    const proxy = await startProxy(server.url, { hang: true });
    try {
      const slow = new BandSox({ baseUrl: proxy.url, timeout: 300 });
      const t0 = Date.now();
      const e = await rejectsWith(slow.listVms(), BandSoxTimeoutError);
      assert.equal(e.code, "client_timeout");
      assert.ok(Date.now() - t0 < 3000);
      // Per-call override, and the WebSocket handshake too.
      const t1 = Date.now();
      await rejectsWith(new BandSox({ baseUrl: proxy.url }).getVmInfo("x", { timeout: 200 }), BandSoxTimeoutError);
      assert.ok(Date.now() - t1 < 3000);
      await rejectsWith(slow.vm(vm.id).runCommand("true"), BandSoxTimeoutError);
      const ctl = new AbortController();
      const p = new BandSox({ baseUrl: proxy.url }).listVms({}, { signal: ctl.signal });
      ctl.abort();
      const ab = await rejectsWith(p, BandSoxError);
      assert.equal(ab.code, "aborted");
    } finally {
      await proxy.close();
    }
  });

  it("a WebSocket drop mid-command surfaces as a WebSocketError", async () => {
    const proxy = await startProxy(server.url);
    try {
      const viaProxy = new BandSox({ baseUrl: proxy.url }).vm(vm.id);
      let first = "";
      const p = viaProxy.runCommand("echo a; sleep 5; echo b", undefined, {
        stdout: {
          write: (c: string) => {
            first ||= c;
            proxy.cut();
          },
        },
      });
      const e = await rejectsWith(p, WebSocketError);
      assert.equal(first, "a\n");
      assert.equal(e.code, "websocket_closed");
      // Terminal: the drop reaches onError.
      const term = new BandSox({ baseUrl: proxy.url }).vm(vm.id).connectTerminal();
      const errs: Error[] = [];
      term.onError((err) => errs.push(err));
      await term.ready;
      proxy.cut();
      await term.closed;
      assert.ok(errs.some((x) => x instanceof WebSocketError), String(errs));
    } finally {
      await proxy.close();
    }
  });
});

async function waitFor(cond: () => boolean, ms: number, show: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting; got ${JSON.stringify(show())}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
