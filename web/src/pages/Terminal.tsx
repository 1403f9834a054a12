import { FitAddon } from "@xterm/addon-fit";
import { Terminal as Xterm } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { useEffect, useRef, useState } from "preact/hooks";
import { api, q, Vm } from "../api";
import { param } from "../ui";

function b64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** xterm.js over `GET /api/vms/{id}/terminal` (binary output frames; the session cookie authenticates). */
export function Terminal() {
  const id = param("id");
  const host = useRef<HTMLDivElement>(null);
  const [vm, setVm] = useState<Vm | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [gen, setGen] = useState(0);
  const term = useRef<{ t: Xterm; fit: FitAddon } | null>(null);

  useEffect(() => {
    api<Vm>("GET", `/api/vms/${q(id)}`).then(setVm).catch((e) => setNotice(e.message));
    const t = new Xterm({ cursorBlink: true, fontFamily: "ui-monospace, Menlo, monospace", fontSize: 14, scrollback: 5000 });
    const fit = new FitAddon();
    t.loadAddon(fit);
    t.open(host.current!);
    fit.fit();
    term.current = { t, fit };
    (window as any).bandsoxTerm = t; // read by the browser tests
    const onResize = () => fit.fit();
    window.addEventListener("resize", onResize);
    return () => (window.removeEventListener("resize", onResize), t.dispose());
  }, [id]);

  useEffect(() => {
    const cur = term.current;
    if (!cur) return;
    const { t, fit } = cur;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/vms/${q(id)}/terminal`;
    const ws = new WebSocket(url, ["bandsox.terminal.binary"]);
    let ours = false; // closed by this page (reconnect, leaving): no notice
    ws.binaryType = "arraybuffer";
    const enc = new TextEncoder();
    const send = (m: object) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(m));
    const resize = () => send({ type: "resize", cols: t.cols, rows: t.rows });
    ws.onopen = () => {
      setNotice(null);
      fit.fit();
      resize();
      t.focus();
    };
    ws.onmessage = (e) => {
      if (typeof e.data === "string") t.write(e.data);
      else t.write(new Uint8Array(e.data));
    };
    ws.onclose = (e) => {
      if (ours) return;
      setNotice(e.code === 1000 ? "The session ended (the shell exited or the VM stopped)." : `The connection closed (code ${e.code}${e.reason ? `: ${e.reason}` : ""}).`);
      api<Vm>("GET", `/api/vms/${q(id)}`).then(setVm).catch(() => {});
    };
    const d1 = t.onData((s) => send({ type: "input", data: b64(enc.encode(s)) }));
    const d2 = t.onBinary((s) => send({ type: "input", data: btoa(s) }));
    const d3 = t.onResize(resize);
    return () => {
      ours = true;
      d1.dispose();
      d2.dispose();
      d3.dispose();
      ws.close();
    };
  }, [id, gen]);

  return (
    <div class="term-page">
      <div class="bar">
        <a href={`/vm_details?id=${q(id)}`}>← {vm ? vm.name : id}</a>
        <span class="muted">{vm?.status}</span>
        <span class="grow" />
        <span class="muted">Copy: select · Paste: Ctrl+Shift+V</span>
      </div>
      {notice && (
        <div class="notice row" role="status" id="term-notice">
          <span class="grow">{notice}</span>
          <button class="small" onClick={() => (term.current?.t.reset(), setGen(gen + 1))}>Reconnect</button>
        </div>
      )}
      <div class="term" ref={host} />
    </div>
  );
}
