import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api, fmtBytes, fmtTime, Image, q, Snapshot, Vm, vmIp } from "../api";
import { ErrorBox, Frame, parseEnv, parseObject, Status, useAction } from "../ui";

const PAGE = 50;
const STATUSES = ["all", "running", "paused", "stopped", "creating", "failed"];

/**
 * Follows VMs through `GET /api/events` (a `snapshot` of every VM, then changes); polls the
 * list while the feed is down. The feed opens as soon as this module runs, before the first
 * render, and the page subscribes to it.
 */
const feed = {
  vms: null as Map<string, Vm> | null,
  live: false,
  listeners: new Set<() => void>(),
  started: false,
};

function startFeed() {
  if (feed.started) return;
  feed.started = true;
  const emit = () => feed.listeners.forEach((f) => f());
  const reload = () =>
    api<Vm[]>("GET", "/api/vms")
      .then((list) => ((feed.vms = new Map(list.map((v) => [v.id, v]))), emit()))
      .catch(() => {});
  let poll: number | undefined;
  const es = new EventSource("/api/events");
  es.onopen = () => {
    feed.live = true;
    if (poll) clearInterval(poll);
    poll = undefined;
    emit();
  };
  // Events come in bursts: apply them once per 50 ms.
  let pending: [string, Vm | null][] = [];
  let queued = false;
  const flush = () => {
    queued = false;
    const n = new Map(feed.vms ?? []);
    for (const [id, vm] of pending) vm ? n.set(id, vm) : n.delete(id);
    pending = [];
    feed.vms = n;
    emit();
  };
  const push = (id: string, vm: Vm | null) => {
    pending.push([id, vm]);
    if (!queued) {
      queued = true;
      setTimeout(flush, 50);
    }
  };
  es.addEventListener("snapshot", (e) => {
    pending = [];
    const list: Vm[] = JSON.parse((e as MessageEvent).data);
    feed.vms = new Map(list.map((v) => [v.id, v]));
    emit();
  });
  es.addEventListener("vm", (e) => {
    const ev = JSON.parse((e as MessageEvent).data);
    push(ev.id, ev.vm);
  });
  es.addEventListener("vm_deleted", (e) => {
    const ev = JSON.parse((e as MessageEvent).data);
    push(ev.id, null);
  });
  es.onerror = () => {
    feed.live = false;
    emit();
    if (!poll) {
      reload();
      poll = window.setInterval(reload, 5000);
    }
  };
  return reload;
}

let reloadFeed: (() => Promise<void>) | undefined;
if (location.pathname === "/") reloadFeed = startFeed();

function useVms(): [Map<string, Vm>, boolean, () => void] {
  const [, setTick] = useState(0);
  useEffect(() => {
    reloadFeed ??= startFeed();
    const f = () => setTick((t) => t + 1);
    feed.listeners.add(f);
    f();
    return () => void feed.listeners.delete(f);
  }, []);
  return [feed.vms ?? new Map(), feed.live, () => reloadFeed?.()];
}

function matches(vm: Vm, text: string): boolean {
  if (!text) return true;
  const t = text.toLowerCase();
  return (
    vm.name.toLowerCase().includes(t) ||
    vm.id.toLowerCase().includes(t) ||
    JSON.stringify(vm.metadata ?? {}).toLowerCase().includes(t)
  );
}

/** A button that asks for a second click before it acts (no browser dialogs). */
export function ConfirmButton({ label, onConfirm, class: cls = "small danger" }: { label: string; onConfirm: () => void; class?: string }) {
  const [armed, setArmed] = useState(false);
  useEffect(() => {
    if (!armed) return;
    const t = setTimeout(() => setArmed(false), 4000);
    return () => clearTimeout(t);
  }, [armed]);
  return (
    <button class={cls} onClick={() => (armed ? (setArmed(false), onConfirm()) : setArmed(true))}>
      {armed ? `Confirm ${label.toLowerCase()}` : label}
    </button>
  );
}

type Edit = { kind: "rename" | "snapshot" | "restore" | "rename-snapshot"; id: string; value: string; net?: boolean } | null;

export function Home() {
  const [vms, live, reload] = useVms();
  const [snaps, setSnaps] = useState<Snapshot[]>([]);
  const [images, setImages] = useState<Image[]>([]);
  const [status, setStatus] = useState("all");
  const [search, setSearch] = useState("");
  const [page, setPage] = useState(0);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [edit, setEdit] = useState<Edit>(null);
  const [error, busy, run] = useAction();

  const loadSnaps = () => api<Snapshot[]>("GET", "/api/snapshots").then(setSnaps).catch(() => {});
  const loadImages = () => api<Image[]>("GET", "/api/images").then(setImages).catch(() => {});
  useEffect(() => {
    loadSnaps();
    loadImages();
  }, []);

  const rows = useMemo(() => {
    const all = [...vms.values()].filter((v) => (status === "all" || v.status === status) && matches(v, search));
    all.sort((a, b) => b.created_at - a.created_at || a.id.localeCompare(b.id));
    return all;
  }, [vms, status, search]);
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  const cur = Math.min(page, pages - 1);
  const shown = rows.slice(cur * PAGE, cur * PAGE + PAGE);

  const act = (id: string, action: string) =>
    run(async () => {
      if (action === "delete") await api("DELETE", `/api/vms/${q(id)}`);
      else await api("POST", `/api/vms/${q(id)}/${action}`);
    });
  const bulk = (action: string) =>
    run(async () => {
      const ids = [...selected];
      const errs: string[] = [];
      await Promise.all(
        ids.map((id) =>
          (action === "delete" ? api("DELETE", `/api/vms/${q(id)}`) : api("POST", `/api/vms/${q(id)}/${action}`)).catch((e) =>
            errs.push(`${id}: ${e.message}`),
          ),
        ),
      );
      setSelected(new Set());
      if (errs.length) throw new Error(errs.join("; "));
    });
  const toggle = (id: string) =>
    setSelected((s) => {
      const n = new Set(s);
      n.has(id) ? n.delete(id) : n.add(id);
      return n;
    });

  const submitEdit = (e: Event) => {
    e.preventDefault();
    if (!edit) return;
    run(async () => {
      if (edit.kind === "rename") await api("PUT", `/api/vms/${q(edit.id)}/name`, { name: edit.value });
      if (edit.kind === "snapshot") await api("POST", `/api/vms/${q(edit.id)}/snapshot`, { name: edit.value });
      if (edit.kind === "rename-snapshot") await api("PUT", `/api/snapshots/${q(edit.id)}/name`, { name: edit.value });
      if (edit.kind === "restore")
        await api("POST", `/api/snapshots/${q(edit.id)}/restore`, { name: edit.value || undefined, enable_networking: !!edit.net });
      setEdit(null);
      loadSnaps();
    });
  };

  return (
    <Frame page="home">
      <CreateVm onCreated={() => reload()} images={images} onPulled={loadImages} />
      <section class="card" aria-labelledby="vms-h">
        <div class="row spread">
          <h2 id="vms-h">
            Sandboxes <span class="muted">({rows.length})</span>
          </h2>
          <span class="muted" title="status changes arrive from /api/events">
            {live ? "● live" : "○ polling"}
          </span>
        </div>
        <div class="row">
          <label class="sr-only" for="vm-search">
            Search
          </label>
          <input
            id="vm-search"
            type="search"
            placeholder="Search name, id, metadata"
            value={search}
            onInput={(e) => (setSearch(e.currentTarget.value), setPage(0))}
          />
          <label class="sr-only" for="vm-status">
            Status
          </label>
          <select id="vm-status" value={status} onChange={(e) => (setStatus(e.currentTarget.value), setPage(0))}>
            {STATUSES.map((s) => (
              <option value={s}>{s === "all" ? "All statuses" : s}</option>
            ))}
          </select>
          <span class="grow" />
          <span class="muted">{selected.size} selected</span>
          <button class="small" disabled={!selected.size || busy} onClick={() => bulk("pause")}>
            Pause
          </button>
          <button class="small" disabled={!selected.size || busy} onClick={() => bulk("stop")}>
            Stop
          </button>
          <button class="small danger" disabled={!selected.size || busy} onClick={() => bulk("delete")}>
            Delete selected
          </button>
        </div>
        <ErrorBox error={error} />
        {edit && (
          <form class="row notice" onSubmit={submitEdit}>
            <label>
              {edit.kind === "rename" || edit.kind === "rename-snapshot" ? "New name" : edit.kind === "snapshot" ? "Snapshot name" : "New VM name (optional)"}
              <input autofocus value={edit.value} onInput={(e) => setEdit({ ...edit, value: e.currentTarget.value })} />
            </label>
            {edit.kind === "restore" && (
              <label>
                Networking
                <input type="checkbox" checked={edit.net} onChange={(e) => setEdit({ ...edit, net: e.currentTarget.checked })} />
              </label>
            )}
            <button class="primary" type="submit" disabled={busy}>
              {edit.kind === "snapshot" ? "Take snapshot" : edit.kind === "restore" ? "Restore" : "Rename"}
            </button>
            <button type="button" onClick={() => setEdit(null)}>
              Cancel
            </button>
          </form>
        )}
        <div class="table-wrap">
          <table id="vms">
            <thead>
              <tr>
                <th>
                  <input
                    type="checkbox"
                    aria-label="select all on this page"
                    checked={shown.length > 0 && shown.every((v) => selected.has(v.id))}
                    onChange={(e) => setSelected(e.currentTarget.checked ? new Set(shown.map((v) => v.id)) : new Set())}
                  />
                </th>
                <th>Name</th>
                <th>Status</th>
                <th class="opt">Image</th>
                <th class="opt">vCPU / memory</th>
                <th class="opt">IP</th>
                <th class="opt">Created</th>
                <th class="opt">Expires</th>
                <th class="opt">Metadata</th>
                <th>Actions</th>
              </tr>
            </thead>
            <tbody>
              {shown.map((vm) => (
                <tr key={vm.id} data-vm={vm.id}>
                  <td>
                    <input type="checkbox" aria-label={`select ${vm.name}`} checked={selected.has(vm.id)} onChange={() => toggle(vm.id)} />
                  </td>
                  <td class="wrap">
                    <a class="vm-name" href={`/vm_details?id=${q(vm.id)}`}>
                      {vm.name}
                    </a>
                    <div class="muted mono">{vm.id}</div>
                  </td>
                  <td>
                    <Status s={vm.status} />
                  </td>
                  <td class="opt wrap">{vm.image}</td>
                  <td class="opt">
                    {vm.vcpu} / {vm.mem_mib} MiB
                  </td>
                  <td class="opt mono">{vmIp(vm)}</td>
                  <td class="opt">{fmtTime(vm.created_at)}</td>
                  <td class="opt">{fmtTime(vm.expires_at)}</td>
                  <td class="opt wrap mono">{Object.keys(vm.metadata ?? {}).length ? JSON.stringify(vm.metadata) : ""}</td>
                  <td>
                    <div class="actions">
                      {vm.status === "running" && (
                        <>
                          <button class="small" onClick={() => act(vm.id, "pause")}>Pause</button>
                          <button class="small" onClick={() => act(vm.id, "stop")}>Stop</button>
                          <button class="small" onClick={() => act(vm.id, "restart")}>Restart</button>
                          <a class="button small" href={`/terminal?id=${q(vm.id)}`}>Terminal</a>
                          <button class="small" onClick={() => setEdit({ kind: "snapshot", id: vm.id, value: `${vm.name}-snap` })}>Snapshot</button>
                        </>
                      )}
                      {vm.status === "paused" && <button class="small" onClick={() => act(vm.id, "resume")}>Resume</button>}
                      {(vm.status === "stopped" || vm.status === "failed") && (
                        <button class="small" onClick={() => act(vm.id, "start")}>Start</button>
                      )}
                      <button class="small" onClick={() => setEdit({ kind: "rename", id: vm.id, value: vm.name })}>Rename</button>
                      <a class="button small" href={`/vm_details?id=${q(vm.id)}`}>Details</a>
                      <ConfirmButton label="Delete" onConfirm={() => act(vm.id, "delete")} />
                    </div>
                  </td>
                </tr>
              ))}
              {!shown.length && (
                <tr>
                  <td colSpan={10} class="muted">
                    No sandboxes{search || status !== "all" ? " match" : " yet: create one above"}.
                  </td>
                </tr>
              )}
            </tbody>
          </table>
        </div>
        {pages > 1 && (
          <nav class="pager" aria-label="pages">
            <button class="small" disabled={cur === 0} onClick={() => setPage(cur - 1)}>
              Previous
            </button>
            <span>
              Page {cur + 1} of {pages}
            </span>
            <button class="small" disabled={cur >= pages - 1} onClick={() => setPage(cur + 1)}>
              Next
            </button>
          </nav>
        )}
      </section>

      <div class="cols">
        <section class="card" aria-labelledby="snaps-h">
          <h2 id="snaps-h">Snapshots</h2>
          <div class="table-wrap">
            <table id="snapshots">
              <thead>
                <tr>
                  <th>Name</th>
                  <th class="opt">From VM</th>
                  <th class="opt">Size</th>
                  <th class="opt">Created</th>
                  <th>Actions</th>
                </tr>
              </thead>
              <tbody>
                {snaps.map((s) => (
                  <tr key={s.id} data-snapshot={s.id}>
                    <td class="wrap">
                      {s.name}
                      <div class="muted mono">{s.id}</div>
                    </td>
                    <td class="opt mono">{s.source_vm_id}</td>
                    <td class="opt">{fmtBytes(s.size_bytes)}</td>
                    <td class="opt">{fmtTime(s.created_at)}</td>
                    <td>
                      <div class="actions">
                        <button class="small" onClick={() => setEdit({ kind: "restore", id: s.id, value: "", net: false })}>Restore</button>
                        <button class="small" onClick={() => setEdit({ kind: "rename-snapshot", id: s.id, value: s.name })}>Rename</button>
                        <ConfirmButton
                          label="Delete"
                          onConfirm={() => run(async () => (await api("DELETE", `/api/snapshots/${q(s.id)}`), loadSnaps()))}
                        />
                      </div>
                    </td>
                  </tr>
                ))}
                {!snaps.length && (
                  <tr>
                    <td colSpan={5} class="muted">No snapshots.</td>
                  </tr>
                )}
              </tbody>
            </table>
          </div>
        </section>
        <section class="card" aria-labelledby="images-h">
          <h2 id="images-h">Images</h2>
          <div class="table-wrap">
            <table id="images">
              <thead>
                <tr>
                  <th>Reference</th>
                  <th class="opt">Size</th>
                  <th class="opt">Pulled</th>
                  <th>Actions</th>
                </tr>
              </thead>
              <tbody>
                {images.map((im) => (
                  <tr key={String(im.reference)}>
                    <td class="wrap">
                      {String(im.reference)}
                      <div class="muted mono">{String(im.digest ?? "").slice(0, 19)}</div>
                    </td>
                    <td class="opt">{fmtBytes(im.size_bytes)}</td>
                    <td class="opt">{fmtTime(im.created_at)}</td>
                    <td>
                      <ConfirmButton
                        label="Delete"
                        onConfirm={() => run(async () => (await api("DELETE", `/api/images/${String(im.reference)}`), loadImages()))}
                      />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </section>
      </div>
    </Frame>
  );
}

function CreateVm({ onCreated, images, onPulled }: { onCreated: () => void; images: Image[]; onPulled: () => void }) {
  const [open, setOpen] = useState(false);
  const [f, setF] = useState({ image: "", name: "", vcpu: "1", mem: "512", disk: "", net: false, env: "", meta: "", timeout: "" });
  const [error, busy, run] = useAction();
  const [pull, setPull] = useState({ ref: "", phase: "", done: 0, total: 0 });
  const [pullErr, pulling, runPull] = useAction();
  const set = (k: keyof typeof f) => (e: Event) => {
    const t = e.currentTarget as HTMLInputElement;
    setF({ ...f, [k]: t.type === "checkbox" ? t.checked : t.value });
  };
  const image = f.image || String(images[0]?.reference ?? "");
  const submit = (e: Event) => {
    e.preventDefault();
    run(async () => {
      const body: Record<string, unknown> = {
        image,
        vcpu: Number(f.vcpu) || 1,
        mem_mib: Number(f.mem) || 512,
        enable_networking: f.net,
        env_vars: parseEnv(f.env),
        metadata: parseObject(f.meta, "metadata"),
      };
      if (f.name) body.name = f.name;
      if (f.disk) body.disk_size_mib = Number(f.disk);
      if (f.timeout) body.timeout_s = Number(f.timeout);
      await api("POST", "/api/vms", body);
      setF({ ...f, name: "" });
      onCreated();
    });
  };
  const layers = useRef(new Map<string, [number, number]>());
  const doPull = (e: Event) => {
    e.preventDefault();
    layers.current.clear();
    runPull(async () => {
      const r = await fetch("/api/images/pull", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", accept: "application/x-ndjson" },
        body: JSON.stringify({ reference: pull.ref }),
      });
      if (!r.ok || !r.body) throw new Error((await r.json().catch(() => ({ title: `HTTP ${r.status}` }))).title);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (!line) continue;
          const ev = JSON.parse(line);
          if (ev.event === "phase") setPull((p) => ({ ...p, phase: ev.phase }));
          if (ev.event === "layer") {
            layers.current.set(ev.digest, [ev.bytes_done, ev.bytes_total]);
            let d = 0;
            let t = 0;
            for (const [a, b] of layers.current.values()) (d += a), (t += b);
            setPull((p) => ({ ...p, phase: "downloading", done: d, total: t }));
          }
          if (ev.event === "error") throw new Error(ev.hint ? `${ev.title}: ${ev.detail} (hint: ${ev.hint})` : `${ev.title}: ${ev.detail}`);
          if (ev.event === "done") setPull((p) => ({ ...p, phase: "done" }));
        }
      }
      onPulled();
    });
  };
  return (
    <section class="card" aria-labelledby="create-h">
      <div class="row spread">
        <h2 id="create-h">New sandbox</h2>
        <button class={open ? "" : "primary"} aria-expanded={open} onClick={() => setOpen(!open)}>
          {open ? "Close" : "Create VM"}
        </button>
      </div>
      {open && (
        <>
          <form id="create-vm" onSubmit={submit}>
            <div class="form-grid">
              <label>
                Image
                <select name="image" value={image} onChange={set("image")}>
                  {images.map((im) => (
                    <option value={String(im.reference)}>{String(im.reference)}</option>
                  ))}
                </select>
              </label>
              <label>
                Name
                <input name="name" value={f.name} onInput={set("name")} placeholder="generated if empty" />
              </label>
              <label>
                vCPU
                <input name="vcpu" type="number" min={1} max={32} value={f.vcpu} onInput={set("vcpu")} />
              </label>
              <label>
                Memory (MiB)
                <input name="mem" type="number" min={64} step={64} value={f.mem} onInput={set("mem")} />
              </label>
              <label>
                Disk (MiB)
                <input name="disk" type="number" min={0} value={f.disk} onInput={set("disk")} placeholder="image size" />
              </label>
              <label>
                Timeout (s)
                <input name="timeout" type="number" min={0} value={f.timeout} onInput={set("timeout")} placeholder="none" />
              </label>
              <label>
                Networking
                <input name="net" type="checkbox" checked={f.net} onChange={set("net")} />
              </label>
            </div>
            <div class="form-grid" style="margin-top:12px">
              <label>
                Environment (KEY=value lines)
                <textarea name="env" rows={3} value={f.env} onInput={set("env")} />
              </label>
              <label>
                Metadata (JSON object)
                <textarea name="meta" rows={3} value={f.meta} onInput={set("meta")} placeholder='{"team": "ml"}' />
              </label>
            </div>
            <ErrorBox error={error} />
            <div class="row" style="margin-top:12px">
              <button class="primary" type="submit" disabled={busy || !image}>
                {busy ? "Creating…" : "Create"}
              </button>
            </div>
          </form>
          <form class="row" style="margin-top:16px" onSubmit={doPull}>
            <label class="grow">
              Pull an image from a registry
              <input value={pull.ref} onInput={(e) => setPull({ ...pull, ref: e.currentTarget.value })} placeholder="docker.io/library/alpine:3" />
            </label>
            <button type="submit" disabled={pulling || !pull.ref}>
              Pull
            </button>
            {(pulling || pull.phase) && (
              <span class="row" aria-live="polite">
                <span class="muted">{pull.phase}</span>
                {pull.total > 0 && (
                  <>
                    <span class="progress" role="progressbar" aria-valuenow={Math.round((100 * pull.done) / pull.total)}>
                      <div style={`width:${(100 * pull.done) / pull.total}%`} />
                    </span>
                    <span class="muted">
                      {fmtBytes(pull.done)} / {fmtBytes(pull.total)}
                    </span>
                  </>
                )}
              </span>
            )}
          </form>
          <ErrorBox error={pullErr} />
        </>
      )}
    </section>
  );
}
