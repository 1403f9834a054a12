// The public REST API, as the SDKs use it: JSON in and out, errors as RFC 9457 problems.
// The browser's session cookie (HttpOnly, SameSite=Strict) authenticates; no token ever goes
// into a URL or into script-readable storage.

export interface Problem {
  title: string;
  status: number;
  detail?: string;
  code?: string;
  hint?: string;
}

export class ApiError extends Error {
  constructor(public problem: Problem) {
    super(problem.detail ? `${problem.title}: ${problem.detail}` : problem.title);
  }
  get hint() {
    return this.problem.hint;
  }
}

export interface Vm {
  id: string;
  name: string;
  image: string;
  status: string;
  vcpu: number;
  mem_mib: number;
  disk_size_mib: number;
  created_at: number;
  updated_at: number;
  error?: string | null;
  metadata: Record<string, unknown>;
  env_vars: Record<string, string>;
  network_config?: { guest_ip?: string; ip?: string; [k: string]: unknown } | null;
  expires_at?: number | null;
  timeout_action: string;
  restored_from?: string | null;
  vmm: string;
}

export interface Snapshot {
  id: string;
  name: string;
  source_vm_id: string;
  image: string;
  vcpu: number;
  mem_mib: number;
  size_bytes: number;
  created_at: number;
  metadata: Record<string, unknown>;
}

export interface Image {
  reference?: string;
  name?: string;
  digest?: string;
  size_bytes?: number;
  created_at?: number;
  [k: string]: unknown;
}

export interface FileEntry {
  name: string;
  path: string;
  size: number;
  is_dir: boolean;
  is_file: boolean;
  is_symlink: boolean;
  mode: string;
  mtime: number;
}

async function problemOf(r: Response): Promise<ApiError> {
  let p: Problem = { title: r.statusText || `HTTP ${r.status}`, status: r.status };
  try {
    const body = await r.json();
    if (body && typeof body.title === "string") p = body;
  } catch {
    // not a problem body
  }
  return new ApiError(p);
}

/** Sends JSON, answers JSON; a non-2xx answer throws its problem. 401 on a page sends you to login. */
export async function api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  const r = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) {
    if (r.status === 401 && !path.startsWith("/api/auth/")) toLogin();
    throw await problemOf(r);
  }
  const text = await r.text();
  return (text ? JSON.parse(text) : null) as T;
}

export async function apiRaw(path: string, init?: RequestInit): Promise<Response> {
  const r = await fetch(path, { credentials: "same-origin", ...init });
  if (!r.ok) throw await problemOf(r);
  return r;
}

export function toLogin() {
  const next = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(next)}`);
}

export const q = encodeURIComponent;

/** Upload with progress (XHR: fetch has no upload progress). */
export function upload(vmId: string, remotePath: string, file: Blob, onProgress: (f: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("remote_path", remotePath);
    form.append("file", file);
    const x = new XMLHttpRequest();
    x.open("POST", `/api/vms/${q(vmId)}/upload`);
    x.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    x.onload = () => {
      if (x.status >= 200 && x.status < 300) return resolve();
      let p: Problem = { title: `HTTP ${x.status}`, status: x.status };
      try {
        p = JSON.parse(x.responseText);
      } catch {
        // keep the status line
      }
      reject(new ApiError(p));
    };
    x.onerror = () => reject(new ApiError({ title: "network error", status: 0 }));
    x.send(form);
  });
}

export function fmtTime(s?: number | null): string {
  if (!s) return "—";
  const d = new Date(s * 1000);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

export function fmtBytes(n?: number): string {
  if (n === undefined || n === null) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(1) : v} ${u[i]}`;
}

export function vmIp(vm: Vm): string {
  const n = vm.network_config;
  if (!n) return "—";
  const ip = (n.guest_ip ?? n.ip ?? (n as any).ip_address) as string | undefined;
  return typeof ip === "string" ? ip : "—";
}
