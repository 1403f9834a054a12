// The dashboard in a real Chromium against a live server with auth on and real VMs: login,
// create from the form with live status, file browser, Markdown viewer, terminal, snapshot and
// restore, API keys, and hostile VM-controlled strings. Each page's screenshot lands in
// docs/dashboard/ (used by docs/DASHBOARD.md).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";

import { launchChromium, startServer } from "./harness.mjs";

const SHOTS = resolve(import.meta.dirname, "../../docs/dashboard");
const LONG = { timeout: 240_000 };
let browser;
let server;
let page;
let vmId;
const dialogs = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await launchChromium();
  server = await startServer({ auth: true });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  page = await ctx.newPage();
  page.on("pageerror", (e) => console.log("pageerror:", e.message));
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
});

after(async () => {
  if (server) {
    const [, vms] = await server.call("GET", "/api/vms");
    for (const vm of vms ?? []) await server.call("DELETE", `/api/vms/${vm.id}`).catch(() => {});
    await server.stop();
  }
  await browser?.close();
});

const shot = (name) => page.screenshot({ path: join(SHOTS, `${name}.png`) });

const termText = () => page.evaluate(() => window.bandsoxTermText());

test("auth on: / redirects to /login, a wrong password shows an error, the right one lands on /", async () => {
  const r = await fetch(server.url + "/vm_details?id=x", { redirect: "manual" });
  assert.equal(r.status, 303);
  assert.equal(r.headers.get("location"), "/login?next=/vm_details%3Fid%3Dx");
  assert.match(r.headers.get("content-security-policy") ?? "", /./);
  await page.goto(server.url + "/");
  assert.equal(new URL(page.url()).pathname, "/login");
  const csp = (await page.request.get(server.url + "/login")).headers()["content-security-policy"];
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /script-src[^;]*unsafe-inline/);
  assert.match(csp, /frame-ancestors 'none'/);
  await page.fill("input[type=password]", "not-the-password");
  await page.click("button[type=submit]");
  await page.getByRole("alert").waitFor();
  assert.match(await page.getByRole("alert").textContent(), /wrong password/);
  await shot("login");
  await page.fill("input[type=password]", server.password);
  await page.click("button[type=submit]");
  await page.waitForURL(server.url + "/");
  await page.getByRole("heading", { name: /Sandboxes/ }).waitFor();
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "bandsox_session");
  assert.ok(session?.httpOnly && session.sameSite === "Strict", JSON.stringify(session));
});

test("create a VM from the form: it appears and turns running without a reload", LONG, async () => {
  await page.click("text=Create VM");
  await page.fill("#create-vm input[name=name]", "from-the-form");
  await page.fill("#create-vm textarea[name=meta]", '{"team": "web"}');
  let reloaded = false;
  page.once("framenavigated", () => (reloaded = true));
  await page.click("#create-vm button[type=submit]");
  const row = page.locator("#vms tr", { hasText: "from-the-form" });
  await row.locator(".badge.running").waitFor({ timeout: 200_000 });
  assert.equal(reloaded, false, "the page reloaded");
  vmId = await row.getAttribute("data-vm");
  assert.match(vmId, /\S/);
  await page.click("text=Close");
  await shot("home");
});

test("file browser: /etc, upload and download byte-identical, new folder, rename, delete", LONG, async () => {
  await page.goto(`${server.url}/vm_details?id=${vmId}`);
  await page.locator("#files").waitFor();
  await page.fill("#go", "/etc");
  await page.click("#files button:text('Open')");
  await page.locator("#file-list tr[data-file=passwd]").waitFor();
  await page.fill("#go", "/tmp");
  await page.click("#files button:text('Open')");
  await page.locator("#file-list").waitFor();
  const bytes = randomBytes(300_000);
  await page.setInputFiles("#upload", { name: "blob.bin", mimeType: "application/octet-stream", buffer: bytes });
  const row = page.locator("#file-list tr[data-file='blob.bin']");
  await row.waitFor();
  const [dl] = await Promise.all([page.waitForEvent("download"), row.locator("button:text('Download')").click()]);
  const back = readFileSync(await dl.path());
  assert.ok(back.equals(bytes), `downloaded ${back.length} bytes differ from the ${bytes.length} uploaded`);
  await page.fill("#newdir", "made-here");
  await page.click("#files button:text('New folder')");
  await page.locator("#file-list tr[data-file='made-here']").waitFor();
  await page.locator("#file-list tr[data-file='made-here'] button:text('Rename')").click();
  await page.fill("#rename-to", "renamed-here");
  await page.click("#files form button:text-is('Rename')");
  const renamed = page.locator("#file-list tr[data-file='renamed-here']");
  await renamed.waitFor();
  const del = renamed.locator("button.danger");
  await del.click();
  await del.click();
  await renamed.waitFor({ state: "detached" });
  const ls = await server.exec(vmId, "ls /tmp");
  assert.doesNotMatch(ls.stdout, /made-here|renamed-here/);
  await shot("vm_details");
});

test("markdown viewer renders a heading, a table and a code block from the VM", async () => {
  const md = "# Results\n\n| model | score |\n| --- | --- |\n| a | 0.91 |\n\n- [x] done\n\n```python\nprint('hi')\n```\n";
  await server.writeFile(vmId, "/root/report.md", md);
  await page.goto(`${server.url}/markdown_viewer?vm_id=${vmId}&path=/root/report.md`);
  await page.locator("#markdown h1").waitFor();
  assert.equal(await page.locator("#markdown h1").textContent(), "Results");
  assert.equal(await page.locator("#markdown table td").first().textContent(), "a");
  assert.match(await page.locator("#markdown pre code").textContent(), /print\('hi'\)/);
  assert.equal(await page.locator("#markdown input[type=checkbox]").count(), 1);
  await shot("markdown");
});

test("terminal: echo $((6*7)) prints 42; resizing the window changes stty size", LONG, async () => {
  await page.goto(`${server.url}/terminal?id=${vmId}`);
  await page.waitForFunction(() => window.bandsoxTerm);
  await page.evaluate(() => {
    window.bandsoxTermText = () => {
      const b = window.bandsoxTerm.buffer.active;
      return Array.from({ length: b.length }, (_, i) => b.getLine(i)?.translateToString(true) ?? "").join("\n");
    };
  });
  await page.locator(".xterm").click();
  await page.waitForFunction(() => window.bandsoxTerm.buffer.active.length > 0);
  await page.waitForTimeout(1500);
  await page.keyboard.type("echo $((6*7))\n");
  await page.waitForFunction(
    () => {
      const b = window.bandsoxTerm.buffer.active;
      for (let i = 0; i < b.length; i++) if (b.getLine(i)?.translateToString(true).trim() === "42") return true;
      return false;
    },
    null,
    { timeout: 30_000 },
  );
  let n = 0;
  const size = async () => {
    const tag = `SZ${++n}:`;
    await page.keyboard.type(`echo ${tag}$(stty size)\n`);
    const re = new RegExp(`${tag}(\\d+ \\d+)`);
    await page.waitForFunction((src) => new RegExp(src).test(window.bandsoxTermText()), re.source, { timeout: 30_000 });
    return (await termText()).match(re)[1];
  };
  const before = await size();
  await shot("terminal");
  await page.setViewportSize({ width: 800, height: 500 });
  await page.waitForTimeout(500);
  const after = await size();
  assert.notEqual(after, before, `stty size stayed ${before}`);
  const [rows, cols] = after.split(" ").map(Number);
  assert.deepEqual([rows, cols], await page.evaluate(() => [window.bandsoxTerm.rows, window.bandsoxTerm.cols]));
  await page.setViewportSize({ width: 1280, height: 800 });
});

test("snapshot from the table, restore it: the new VM runs and has the file", LONG, async () => {
  await server.exec(vmId, "echo kept > /root/kept.txt && sync");
  await page.goto(server.url + "/");
  const row = page.locator(`#vms tr[data-vm='${vmId}']`);
  await row.locator("button:text('Snapshot')").click();
  await page.locator("form.notice input").fill("browser-snap");
  await page.click("form.notice button[type=submit]");
  const snap = page.locator("#snapshots tr", { hasText: "browser-snap" });
  await snap.waitFor({ timeout: 200_000 });
  await row.locator(".badge.running").waitFor({ timeout: 60_000 });
  await snap.locator("button:text('Restore')").click();
  await page.locator("form.notice input").first().fill("restored-in-browser");
  await page.click("form.notice button[type=submit]");
  const restored = page.locator("#vms tr", { hasText: "restored-in-browser" });
  await restored.locator(".badge.running").waitFor({ timeout: 200_000 });
  const id = await restored.getAttribute("data-vm");
  const out = await server.exec(id, "cat /root/kept.txt");
  assert.equal(out.stdout.trim(), "kept");
});

test("keys: create (shown once), use it → 200, revoke → 401; change the password", async () => {
  await page.goto(`${server.url}/keys`);
  await page.fill("#key-name", "from-the-browser");
  await page.click("button:text('Create key')");
  const key = (await page.locator("#new-key").textContent()).trim();
  assert.match(key, /^bsx_/);
  const get = (k) => fetch(`${server.url}/api/vms`, { headers: { authorization: `Bearer ${k}` } }).then((r) => r.status);
  assert.equal(await get(key), 200);
  await shot("keys");
  await page.reload();
  await page.locator("#keys tr[data-key='from-the-browser']").waitFor();
  assert.equal(await page.locator("#new-key").count(), 0, "the secret is shown again after a reload");
  assert.doesNotMatch(await page.content(), new RegExp(key));
  const revoke = page.locator("#keys tr[data-key='from-the-browser'] button.danger");
  await revoke.click();
  await revoke.click();
  await revoke.waitFor({ state: "detached" });
  assert.equal(await get(key), 401);

  const fresh = "a-new-admin-password-42";
  await page.fill("input[autocomplete=current-password]", server.password);
  await page.fill("input[autocomplete=new-password]", fresh);
  await page.click("button:text('Change password')");
  await page.locator("text=Password changed.").waitFor();
  assert.equal((await page.request.get(`${server.url}/api/vms`)).status(), 200, "the page's session did not survive its own password change");
  const login = (password) =>
    fetch(`${server.url}/api/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ password }) }).then((r) => r.status);
  assert.equal(await login(server.password), 401);
  assert.equal(await login(fresh), 200);
  server.password = fresh;
});

test("XSS: hostile VM name, metadata, file name and Markdown run nothing", LONG, async () => {
  const evil = "<img src=x onerror=alert(1)>";
  assert.equal((await server.call("PUT", `/api/vms/${vmId}/name`, { name: evil }))[0], 200);
  const [st] = await server.call("PUT", `/api/vms/${vmId}/metadata`, {
    metadata: { note: "<script>alert(2)</script>", html: "<b onmouseover=alert(3)>x</b><img src=x onerror=window.__pwned=1>" },
  });
  assert.equal(st, 200);
  const md = [
    "# Hostile",
    "<script>window.__pwned = 1; alert(4)</script>",
    "<img src=x onerror=\"window.__pwned=1;alert(5)\">",
    "[click](javascript:alert(6)) <a href=\"javascript:alert(7)\" id=jl>raw</a>",
    "<iframe src=\"javascript:alert(8)\"></iframe><svg onload=alert(9)></svg>",
  ].join("\n\n");
  await server.writeFile(vmId, "/root/<svg onload=alert(1)>.md", md);
  await server.writeFile(vmId, "/root/<img src=x onerror=alert(10)>", "x");

  await page.goto(server.url + "/");
  const link = page.locator(`#vms tr[data-vm='${vmId}'] a.vm-name`);
  await link.waitFor();
  assert.equal(await link.textContent(), evil);
  assert.equal(await page.locator("#vms img").count(), 0);
  assert.match(await page.locator("#vms").textContent(), /<script>alert\(2\)<\/script>/);
  await page.goto(`${server.url}/vm_details?id=${vmId}`);
  assert.equal(await page.locator("#vm-title").textContent(), evil);
  await page.fill("#go", "/root");
  await page.click("#files button:text('Open')");
  const mdRow = page.locator("#file-list tr", { hasText: "<svg onload=alert(1)>.md" });
  await mdRow.waitFor();
  await page.locator("#file-list tr", { hasText: "<img src=x onerror=alert(10)>" }).waitFor();
  await shot("xss");
  await mdRow.locator("a:text('Markdown')").click();
  await page.locator("#markdown h1").waitFor();
  await page.waitForTimeout(500);
  assert.equal(await page.locator("#markdown script, #markdown iframe, #markdown svg").count(), 0);
  for (const a of await page.locator("#markdown a").all()) {
    const href = (await a.getAttribute("href")) ?? "";
    assert.doesNotMatch(href, /^javascript:/i);
    await a.click({ noWaitAfter: true }).catch(() => {});
  }
  await page.waitForTimeout(500);
  await page.locator("#markdown").hover();
  assert.equal(await page.evaluate(() => window.__pwned ?? null), null);
  assert.deepEqual(dialogs, []);
});

test("dark mode and phone width: the home and details pages fit a 390 px screen", async () => {
  const ctx = await browser.newContext({
    viewport: { width: 390, height: 844 },
    colorScheme: "dark",
    storageState: await page.context().storageState(),
  });
  const phone = await ctx.newPage();
  try {
    for (const [path, name] of [["/", "phone_home"], [`/vm_details?id=${vmId}`, "phone_vm_details"]]) {
      await phone.goto(server.url + path);
      await phone.locator("main h1, main h2").first().waitFor();
      await phone.waitForTimeout(300);
      const [scroll, bg] = await phone.evaluate(() => [
        document.documentElement.scrollWidth,
        getComputedStyle(document.body).backgroundColor,
      ]);
      assert.ok(scroll <= 391, `${path} is ${scroll} px wide at 390`);
      assert.equal(bg, "rgb(15, 18, 23)", "dark theme not applied");
      await phone.screenshot({ path: join(SHOTS, `${name}.png`) });
    }
  } finally {
    await ctx.close();
  }
});
