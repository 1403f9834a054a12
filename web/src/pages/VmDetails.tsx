import { useEffect, useRef, useState } from "preact/hooks";
import { api, apiRaw, FileEntry, fmtBytes, fmtTime, q, upload, Vm, vmIp } from "../api";
import { ErrorBox, Frame, param, parseObject, Status, useAction } from "../ui";
import { ConfirmButton } from "./Home";

const IMAGE_EXT = /\.(png|jpe?g|gif|webp|bmp|ico)$/i;

export function VmDetails() {
  const id = param("id");
  const [vm, setVm] = useState<Vm | null>(null);
  const [proxy, setProxy] = useState<string | null>(null);
  const [loadErr, setLoadErr] = useState<unknown>(null);
  const [error, busy, run] = useAction();
  const load = () =>
    api<Vm>("GET", `/api/vms/${q(id)}`)
      .then((v) => (setVm(v), setLoadErr(null)))
      .catch(setLoadErr);
  useEffect(() => {
    load();
    api("GET", "/api/version").then((v) => setProxy(v.proxy_url ?? null)).catch(() => {});
    const es = new EventSource("/api/events");
    es.addEventListener("vm", (e) => {
      const ev = JSON.parse((e as MessageEvent).data);
      if (ev.id === id) setVm(ev.vm);
    });
    return () => es.close();
  }, [id]);
  if (loadErr) return <Frame page="vm"><ErrorBox error={loadErr} /></Frame>;
  if (!vm) return <Frame page="vm"><p class="muted">Loading…</p></Frame>;
  const act = (a: string) => run(async () => (a === "delete" ? (await api("DELETE", `/api/vms/${q(id)}`), location.assign("/")) : api("POST", `/api/vms/${q(id)}/${a}`)));
  const running = vm.status === "running";
  return (
    <Frame page="vm">
      <div class="row spread">
        <h1 class="row">
          <span id="vm-title">{vm.name}</span> <Status s={vm.status} />
        </h1>
        <div class="actions">
          {running && <button onClick={() => act("pause")}>Pause</button>}
          {vm.status === "paused" && <button onClick={() => act("resume")}>Resume</button>}
          {running && <button onClick={() => act("stop")}>Stop</button>}
          {(vm.status === "stopped" || vm.status === "failed") && <button onClick={() => act("start")}>Start</button>}
          {running && <button onClick={() => act("restart")}>Restart</button>}
          {running && <a class="button" href={`/terminal?id=${q(id)}`}>Terminal</a>}
          <ConfirmButton label="Delete" class="danger" onConfirm={() => act("delete")} />
        </div>
      </div>
      <ErrorBox error={error} />
      <div class="cols">
        <section class="card">
          <h2>Info</h2>
          <dl class="info">
            <dt>ID</dt><dd class="mono">{vm.id}</dd>
            <dt>Image</dt><dd>{vm.image}</dd>
            <dt>vCPU / memory</dt><dd>{vm.vcpu} / {vm.mem_mib} MiB</dd>
            <dt>Disk</dt><dd>{vm.disk_size_mib} MiB</dd>
            <dt>IP</dt><dd class="mono">{vmIp(vm)}</dd>
            <dt>VMM</dt><dd>{vm.vmm}</dd>
            <dt>Created</dt><dd>{fmtTime(vm.created_at)}</dd>
            <dt>Expires</dt><dd>{vm.expires_at ? `${fmtTime(vm.expires_at)} (${vm.timeout_action})` : "never"}</dd>
            {vm.restored_from && (<><dt>Restored from</dt><dd class="mono">{vm.restored_from}</dd></>)}
            {vm.error && (<><dt>Error</dt><dd>{vm.error}</dd></>)}
            <dt>Environment</dt><dd class="mono">{Object.entries(vm.env_vars ?? {}).map(([k, v]) => `${k}=${v}`).join("  ") || "—"}</dd>
          </dl>
          <Ttl vm={vm} onChange={load} />
          {proxy && vm.network_config && <Ports id={id} proxy={proxy} />}
        </section>
        <Metadata vm={vm} onSaved={load} busy={busy} />
      </div>
      {running && <Exec id={id} />}
      {running && <Commands id={id} />}
      {running && <Files id={id} />}
    </Frame>
  );
}

function Ttl({ vm, onChange }: { vm: Vm; onChange: () => void }) {
  const [secs, setSecs] = useState("600");
  const [error, busy, run] = useAction();
  return (
    <form
      class="row"
      style="margin-top:12px"
      onSubmit={(e) => {
        e.preventDefault();
        run(async () => {
          if (vm.expires_at) await api("POST", `/api/vms/${q(vm.id)}/extend`, { seconds: Number(secs) });
          else await api("POST", `/api/vms/${q(vm.id)}/timeout`, { timeout_s: Number(secs) });
          onChange();
        });
      }}
    >
      <label>
        {vm.expires_at ? "Extend by (s)" : "Set a timeout (s)"}
        <input type="number" min={1} value={secs} onInput={(e) => setSecs(e.currentTarget.value)} />
      </label>
      <button type="submit" disabled={busy}>{vm.expires_at ? "Extend" : "Set timeout"}</button>
      <ErrorBox error={error} />
    </form>
  );
}

function Ports({ id, proxy }: { id: string; proxy: string }) {
  const [port, setPort] = useState("8080");
  const url = `${proxy}/api/vms/${q(id)}/ports/${Number(port) || 0}/`;
  return (
    <div class="row" style="margin-top:12px">
      <label>
        Guest port
        <input type="number" min={1} max={65535} value={port} onInput={(e) => setPort(e.currentTarget.value)} />
      </label>
      <a href={url} target="_blank" rel="noopener noreferrer" class="mono">{url}</a>
    </div>
  );
}

function Metadata({ vm, onSaved, busy: outerBusy }: { vm: Vm; onSaved: () => void; busy: boolean }) {
  const [text, setText] = useState(JSON.stringify(vm.metadata ?? {}, null, 2));
  const [error, busy, run] = useAction();
  useEffect(() => setText(JSON.stringify(vm.metadata ?? {}, null, 2)), [JSON.stringify(vm.metadata)]);
  return (
    <section class="card">
      <h2>Metadata</h2>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          run(async () => (await api("PUT", `/api/vms/${q(vm.id)}/metadata`, { metadata: parseObject(text, "metadata") }), onSaved()));
        }}
      >
        <label class="sr-only" for="meta">Metadata JSON</label>
        <textarea id="meta" rows={8} value={text} onInput={(e) => setText(e.currentTarget.value)} />
        <ErrorBox error={error} />
        <button type="submit" disabled={busy || outerBusy}>Save metadata</button>
      </form>
    </section>
  );
}

function Exec({ id }: { id: string }) {
  const [cmd, setCmd] = useState("");
  const [out, setOut] = useState<{ exit_code: number; stdout: string; stderr: string } | null>(null);
  const [error, busy, run] = useAction();
  return (
    <section class="card">
      <h2>Run a command</h2>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          run(async () => setOut(await api("POST", `/api/vms/${q(id)}/exec`, { command: cmd, timeout: 60 })));
        }}
      >
        <label class="grow">
          Command (sh -c)
          <input id="exec-cmd" class="mono" value={cmd} onInput={(e) => setCmd(e.currentTarget.value)} placeholder="uname -a" />
        </label>
        <button class="primary" type="submit" disabled={busy || !cmd}>Run</button>
        <button
          type="button"
          disabled={busy || !cmd}
          onClick={() => run(async () => (await api("POST", `/api/vms/${q(id)}/commands`, { command: cmd }), setCmd("")))}
        >
          Run in background
        </button>
      </form>
      <ErrorBox error={error} />
      {out && (
        <div id="exec-out">
          <p>
            exit code <strong>{out.exit_code}</strong>
          </p>
          {out.stdout && <pre class="stdout">{out.stdout}</pre>}
          {out.stderr && <pre class="stderr">{out.stderr}</pre>}
        </div>
      )}
    </section>
  );
}

interface Cmd {
  cmd_id: string;
  command: string[];
  running: boolean;
  status?: { code?: number; signal?: number } | null;
}

function Commands({ id }: { id: string }) {
  const [cmds, setCmds] = useState<Cmd[]>([]);
  const [open, setOpen] = useState<string | null>(null);
  const [error, , run] = useAction();
  useEffect(() => {
    const load = () => api<Cmd[]>("GET", `/api/vms/${q(id)}/commands`).then(setCmds).catch(() => {});
    load();
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, [id]);
  if (!cmds.length) return null;
  return (
    <section class="card">
      <h2>Background commands</h2>
      <ErrorBox error={error} />
      <table>
        <thead>
          <tr><th>Command</th><th>State</th><th>Actions</th></tr>
        </thead>
        <tbody>
          {cmds.map((c) => (
            <tr key={c.cmd_id}>
              <td class="wrap mono">{c.command.join(" ")}</td>
              <td>{c.running ? "running" : `exited ${c.status?.code ?? ""}${c.status?.signal ? ` (signal ${c.status.signal})` : ""}`}</td>
              <td class="actions">
                <button class="small" onClick={() => setOpen(open === c.cmd_id ? null : c.cmd_id)}>Logs</button>
                {c.running && (
                  <button class="small danger" onClick={() => run(() => api("POST", `/api/vms/${q(id)}/commands/${q(c.cmd_id)}/kill`, {}))}>Kill</button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {open && <Logs id={id} cmd={open} />}
    </section>
  );
}

function Logs({ id, cmd }: { id: string; cmd: string }) {
  const [text, setText] = useState("");
  useEffect(() => {
    let from = [0, 0];
    let stop = false;
    setText("");
    const tick = async () => {
      if (stop) return;
      try {
        const l = await api("GET", `/api/vms/${q(id)}/commands/${q(cmd)}/logs?stdout_from=${from[0]}&stderr_from=${from[1]}`);
        from = [l.stdout_offset, l.stderr_offset];
        if (l.stdout || l.stderr) setText((t) => (t + l.stdout + l.stderr).slice(-200000));
        if (l.info?.running === false) return;
      } catch {
        return;
      }
      setTimeout(tick, 1000);
    };
    tick();
    return () => {
      stop = true;
    };
  }, [id, cmd]);
  return <pre class="cmd-logs">{text || "(no output yet)"}</pre>;
}

function Files({ id }: { id: string }) {
  const [dir, setDir] = useState("/");
  const [entries, setEntries] = useState<FileEntry[]>([]);
  const [view, setView] = useState<{ path: string; text?: string; img?: string } | null>(null);
  const [renaming, setRenaming] = useState<{ from: string; to: string } | null>(null);
  const [newDir, setNewDir] = useState("");
  const [prog, setProg] = useState<{ name: string; f: number } | null>(null);
  const [over, setOver] = useState(false);
  const [truncated, setTruncated] = useState(false);
  const [error, busy, run] = useAction();
  const input = useRef<HTMLInputElement>(null);
  const join = (d: string, n: string) => (d.endsWith("/") ? d + n : `${d}/${n}`);
  const load = (d = dir) =>
    run(async () => {
      const r = await api<{ files: FileEntry[]; truncated: boolean }>("GET", `/api/vms/${q(id)}/files?path=${q(d)}`);
      const list = r.files;
      setTruncated(r.truncated);
      list.sort((a, b) => Number(b.is_dir) - Number(a.is_dir) || a.name.localeCompare(b.name));
      setEntries(list);
      setDir(d);
    });
  useEffect(() => {
    load("/");
  }, [id]);
  useEffect(() => () => view?.img && URL.revokeObjectURL(view.img), [view]);
  const parts = dir.split("/").filter(Boolean);
  const uploadFiles = (files: FileList | null) =>
    files &&
    run(async () => {
      for (const f of Array.from(files)) {
        setProg({ name: f.name, f: 0 });
        await upload(id, join(dir, f.name), f, (x) => setProg({ name: f.name, f: x }));
      }
      setProg(null);
      await load();
    });
  const download = (e: FileEntry) =>
    run(async () => {
      const r = await apiRaw(`/api/vms/${q(id)}/download?path=${q(e.path)}`);
      const url = URL.createObjectURL(await r.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = e.name;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  const open = (e: FileEntry) =>
    run(async () => {
      if (IMAGE_EXT.test(e.name)) {
        const r = await apiRaw(`/api/vms/${q(id)}/download?path=${q(e.path)}`);
        setView({ path: e.path, img: URL.createObjectURL(await r.blob()) });
      } else {
        const r = await api("GET", `/api/vms/${q(id)}/read-file?path=${q(e.path)}&max_bytes=1048576`);
        setView({ path: e.path, text: r.content + (r.truncated ? "\n… (truncated at 1 MiB)" : "") });
      }
    });
  return (
    <section
      class={`card drop ${over ? "over" : ""}`}
      id="files"
      onDragOver={(e) => (e.preventDefault(), setOver(true))}
      onDragLeave={() => setOver(false)}
      onDrop={(e) => (e.preventDefault(), setOver(false), uploadFiles(e.dataTransfer?.files ?? null))}
    >
      <div class="row spread">
        <h2>Files</h2>
        <nav class="crumbs row" aria-label="path">
          <button onClick={() => load("/")}>/</button>
          {parts.map((p, i) => (
            <>
              <button onClick={() => load("/" + parts.slice(0, i + 1).join("/"))}>{p}</button>
              {i < parts.length - 1 && <span class="muted">/</span>}
            </>
          ))}
        </nav>
      </div>
      <div class="row">
        <form class="row" onSubmit={(e) => (e.preventDefault(), load((e.currentTarget.elements.namedItem("go") as HTMLInputElement).value || "/"))}>
          <label class="sr-only" for="go">Go to path</label>
          <input id="go" name="go" class="mono" placeholder="/etc" />
          <button type="submit">Open</button>
        </form>
        <form
          class="row"
          onSubmit={(e) => (
            e.preventDefault(),
            run(async () => (await api("POST", `/api/vms/${q(id)}/files/mkdir`, { path: join(dir, newDir) }), setNewDir(""), await load()))
          )}
        >
          <label class="sr-only" for="newdir">New folder name</label>
          <input id="newdir" placeholder="new folder" value={newDir} onInput={(e) => setNewDir(e.currentTarget.value)} />
          <button type="submit" disabled={!newDir || busy}>New folder</button>
        </form>
        <input ref={input} type="file" multiple class="sr-only" id="upload" onChange={(e) => uploadFiles(e.currentTarget.files)} />
        <button onClick={() => input.current?.click()}>Upload…</button>
        {prog && (
          <span class="row" aria-live="polite">
            {prog.name}
            <span class="progress" role="progressbar" aria-valuenow={Math.round(prog.f * 100)}>
              <div style={`width:${prog.f * 100}%`} />
            </span>
          </span>
        )}
        <span class="muted">or drop files here</span>
      </div>
      <ErrorBox error={error} />
      {renaming && (
        <form
          class="row notice"
          onSubmit={(e) => (
            e.preventDefault(),
            run(async () => (await api("POST", `/api/vms/${q(id)}/files/rename`, { from: renaming.from, to: join(dir, renaming.to) }), setRenaming(null), await load()))
          )}
        >
          <label>
            Rename to
            <input id="rename-to" autofocus value={renaming.to} onInput={(e) => setRenaming({ ...renaming, to: e.currentTarget.value })} />
          </label>
          <button class="primary" type="submit">Rename</button>
          <button type="button" onClick={() => setRenaming(null)}>Cancel</button>
        </form>
      )}
      <div class="table-wrap">
        <table id="file-list">
          <thead>
            <tr><th>Name</th><th>Size</th><th class="opt">Mode</th><th class="opt">Modified</th><th>Actions</th></tr>
          </thead>
          <tbody>
            {dir !== "/" && (
              <tr>
                <td colSpan={5}>
                  <button class="small" onClick={() => load("/" + parts.slice(0, -1).join("/"))}>..</button>
                </td>
              </tr>
            )}
            {entries.map((e) => (
              <tr key={e.path} data-file={e.name}>
                <td class="wrap">
                  {e.is_dir ? (
                    <button class="small file-name" onClick={() => load(e.path)}>{e.name}/</button>
                  ) : (
                    <span class="file-name">{e.name}</span>
                  )}
                  {e.is_symlink && <span class="muted"> (link)</span>}
                </td>
                <td>{e.is_dir ? "—" : fmtBytes(e.size)}</td>
                <td class="opt mono">{e.mode}</td>
                <td class="opt">{fmtTime(e.mtime)}</td>
                <td class="actions">
                  {e.is_file && <button class="small" onClick={() => open(e)}>View</button>}
                  {e.is_file && /\.md$/i.test(e.name) && (
                    <a class="button small" href={`/markdown_viewer?vm_id=${q(id)}&path=${q(e.path)}`}>Markdown</a>
                  )}
                  {e.is_file && <button class="small" onClick={() => download(e)}>Download</button>}
                  <button class="small" onClick={() => setRenaming({ from: e.path, to: e.name })}>Rename</button>
                  <ConfirmButton
                    label="Delete"
                    onConfirm={() => run(async () => (await api("POST", `/api/vms/${q(id)}/files/remove`, { path: e.path, recursive: e.is_dir }), await load()))}
                  />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {truncated && <p class="muted">The listing was cut short: the directory holds more entries than one answer carries.</p>}
      {view && (
        <div class="notice" id="file-view">
          <div class="row spread">
            <strong class="mono">{view.path}</strong>
            <button class="small" onClick={() => setView(null)}>Close</button>
          </div>
          {view.text !== undefined && <pre>{view.text}</pre>}
          {view.img && <img src={view.img} alt={view.path} style="max-width:100%" />}
        </div>
      )}
    </section>
  );
}
