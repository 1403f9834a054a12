// A hostile guest page opened through the port proxy in a real Chromium, with auth off and with
// a logged-in session: it must not land on the API's origin, read the API, touch cookies or
// storage, run a command (by POST or WebSocket), or read another VM's page.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchChromium, startServer } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
});

/** The attack page: every result lands in `#out` as JSON, then the title says "done". */
function attackPage(api, victim, other) {
  return `<!doctype html><pre id=out></pre><script>
const API = ${JSON.stringify(api)};
const r = {};
async function attempt(name, f) {
  try { r[name] = await f(); } catch (e) { r[name] = "blocked: " + e.name; }
}
(async () => {
  await attempt("read", async () => {
    const x = await fetch(API + "/api/vms", {credentials: "include"});
    return "status " + x.status + " " + (await x.text()).slice(0, 60);
  });
  await attempt("cookie", () => "readable: " + document.cookie);
  await attempt("setcookie", () => { document.cookie = "bandsox_session=planted; path=/"; return "set"; });
  await attempt("storage", () => { localStorage.setItem("x", "1"); return "usable"; });
  await attempt("exec", async () => {
    await fetch(API + "/api/vms/${victim}/exec", {method: "POST", credentials: "include", mode: "no-cors",
      headers: {"Content-Type": "text/plain"}, body: JSON.stringify({command: "touch /tmp/pwned"})});
    return "sent";
  });
  await attempt("form", async () => {
    const f = document.createElement("form");
    f.method = "POST"; f.action = API + "/api/vms/${victim}/stop"; f.target = "sink";
    const i = document.createElement("iframe"); i.name = "sink"; document.body.append(i, f);
    f.submit();
    return "submitted";
  });
  await attempt("other", async () => {
    const x = await fetch("/api/vms/${other}/ports/8080/", {credentials: "include"});
    return "status " + x.status + " " + (await x.text()).slice(0, 40);
  });
  r.ws = await new Promise((res) => {
    try {
      const ws = new WebSocket(API.replace("http", "ws") + "/api/vms/${victim}/exec-stream");
      ws.onopen = () => { ws.send(JSON.stringify({command: "touch /tmp/pwned-ws"})); res("open"); };
      ws.onerror = () => res("blocked");
    } catch (e) { res("blocked: " + e.name); }
  });
  document.getElementById("out").textContent = JSON.stringify(r);
  document.title = "done";
})();
</script>`;
}

async function contained(auth) {
  const server = await startServer({ auth });
  try {
    const [, version] = await server.call("GET", "/api/version");
    assert.ok(version.proxy_url && version.proxy_url !== server.url, JSON.stringify(version));
    const victim = await server.createVm();
    const other = await server.createVm();
    await server.writeFile(victim, "/www/index.html", attackPage(server.url, victim, other));
    await server.exec(victim, "httpd -p 8080 -h /www");
    await server.writeFile(other, "/www/index.html", "secret-of-the-other-vm");
    await server.exec(other, "httpd -p 8080 -h /www");

    const ctx = await browser.newContext();
    if (auth) {
      const r = await ctx.request.post(`${server.url}/api/auth/login`, { data: { password: server.password } });
      assert.equal(r.status(), 200);
    }
    const page = await ctx.newPage();
    const dialogs = [];
    page.on("dialog", (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    // Opened through the API port, as a user might: it is sent to the proxy's origin.
    const resp = await page.goto(`${server.url}/api/vms/${victim}/ports/8080/`);
    assert.equal(resp.status(), 200);
    assert.equal(new URL(page.url()).origin, version.proxy_url, "the guest page is on the proxy origin");
    await page.waitForFunction(() => document.title === "done", null, { timeout: 30_000 });
    const r = JSON.parse(await page.textContent("#out"));
    await new Promise((res) => setTimeout(res, 1000)); // let a stray request land
    for (const k of ["read", "cookie", "setcookie", "storage", "other"]) {
      assert.match(r[k], /^blocked/, `${k}: ${r[k]}`);
    }
    assert.equal(r.ws, "blocked");
    const left = await server.exec(victim, "ls /tmp/pwned /tmp/pwned-ws 2>&1; true");
    assert.match(left.stdout, /pwned: No such file.*\n.*pwned-ws: No such file/s, left.stdout);
    const [, info] = await server.call("GET", `/api/vms/${victim}`);
    assert.equal(info.status, "running", "a cross-site form stopped the VM");
    const cookies = await ctx.cookies(server.url);
    assert.ok(!cookies.some((c) => c.value === "planted"), "a cookie was planted");
    assert.deepEqual(dialogs, []);
    await ctx.close();
  } finally {
    await server.stop();
  }
}

test("a guest page cannot reach the API (auth off)", { timeout: 300_000 }, () => contained(false));
test("a guest page cannot reach the API (auth on, logged in)", { timeout: 300_000 }, () => contained(true));
