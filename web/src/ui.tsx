// Shared pieces: the page frame, error display, small helpers. Text reaches the DOM only
// through JSX (escaped); nothing here sets innerHTML.
import type { ComponentChildren } from "preact";
import { useState } from "preact/hooks";
import { api, ApiError } from "./api";

export function Frame({ page, children }: { page: string; children: ComponentChildren }) {
  const link = (href: string, label: string, key: string) => (
    <a href={href} aria-current={page === key ? "page" : undefined}>
      {label}
    </a>
  );
  return (
    <>
      <header class="top">
        <a class="brand" href="/">
          <img src="/favicon.svg" width={22} height={22} alt="" /> bandsox
        </a>
        <nav aria-label="main">
          {link("/", "Sandboxes", "home")}
          {link("/keys", "Keys & account", "keys")}
          <a href="/api/docs">API</a>
        </nav>
        <button
          class="small"
          onClick={async () => {
            await api("POST", "/api/auth/logout").catch(() => {});
            location.assign("/login");
          }}
        >
          Log out
        </button>
      </header>
      <main>{children}</main>
    </>
  );
}

export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  const msg = error instanceof Error ? error.message : String(error);
  const hint = error instanceof ApiError ? error.hint : undefined;
  return (
    <div class="error-box" role="alert">
      {msg}
      {hint && <span class="hint">hint: {hint}</span>}
    </div>
  );
}

/** Runs an action, keeping its error and a busy flag. */
export function useAction(): [unknown, boolean, (f: () => Promise<unknown>) => Promise<void>, (e: unknown) => void] {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const run = async (f: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await f();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return [error, busy, run, setError];
}

export function Status({ s }: { s: string }) {
  return <span class={`badge ${s}`}>{s}</span>;
}

export function param(name: string): string {
  return new URLSearchParams(location.search).get(name) ?? "";
}

/** A JSON object typed by hand; throws a readable error. */
export function parseObject(text: string, what: string): Record<string, unknown> {
  if (!text.trim()) return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} must be JSON: ${(e as Error).message}`);
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error(`${what} must be a JSON object`);
  return v as Record<string, unknown>;
}

/** `KEY=value` lines to an object. */
export function parseEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t) continue;
    const i = t.indexOf("=");
    if (i <= 0) throw new Error(`environment line "${t}" is not KEY=value`);
    out[t.slice(0, i)] = t.slice(i + 1);
  }
  return out;
}
