import { useEffect, useState } from "preact/hooks";
import { api, fmtTime, q } from "../api";
import { ErrorBox, Frame, useAction } from "../ui";
import { ConfirmButton } from "./Home";

interface Key {
  id: string;
  name: string;
  created_at: number;
  last_used_at?: number | null;
}

export function Keys() {
  const [keys, setKeys] = useState<Key[]>([]);
  const [name, setName] = useState("");
  const [secret, setSecret] = useState<string | null>(null);
  const [copied, setCopied] = useState(false);
  const [error, busy, run] = useAction();
  const load = () => api<Key[]>("GET", "/api/auth/keys").then(setKeys).catch((e) => run(() => Promise.reject(e)));
  useEffect(() => {
    load();
  }, []);
  return (
    <Frame page="keys">
      <h1>Keys & account</h1>
      <section class="card">
        <h2>API keys</h2>
        <form
          class="row"
          onSubmit={(e) => {
            e.preventDefault();
            run(async () => {
              const k = await api("POST", "/api/auth/keys", { name });
              setSecret(k.key);
              setCopied(false);
              setName("");
              await load();
            });
          }}
        >
          <label>
            Name
            <input id="key-name" value={name} onInput={(e) => setName(e.currentTarget.value)} placeholder="ci" />
          </label>
          <button class="primary" type="submit" disabled={busy || !name}>Create key</button>
        </form>
        {secret && (
          <div class="notice" role="status">
            <p>Copy the key now: it is shown only once.</p>
            <div class="row">
              <code class="secret grow" id="new-key">{secret}</code>
              <button onClick={() => navigator.clipboard?.writeText(secret).then(() => setCopied(true))}>{copied ? "Copied" : "Copy"}</button>
              <button onClick={() => setSecret(null)}>Done</button>
            </div>
          </div>
        )}
        <ErrorBox error={error} />
        <table id="keys">
          <thead>
            <tr><th>Name</th><th>ID</th><th>Created</th><th>Last used</th><th></th></tr>
          </thead>
          <tbody>
            {keys.map((k) => (
              <tr key={k.id} data-key={k.name}>
                <td>{k.name}</td>
                <td class="mono">{k.id}</td>
                <td>{fmtTime(k.created_at)}</td>
                <td>{fmtTime(k.last_used_at)}</td>
                <td>
                  <ConfirmButton label="Revoke" onConfirm={() => run(async () => (await api("DELETE", `/api/auth/keys/${q(k.id)}`), await load()))} />
                </td>
              </tr>
            ))}
            {!keys.length && (
              <tr><td colSpan={5} class="muted">No keys.</td></tr>
            )}
          </tbody>
        </table>
      </section>
      <Password />
    </Frame>
  );
}

function Password() {
  const [cur, setCur] = useState("");
  const [next, setNext] = useState("");
  const [done, setDone] = useState(false);
  const [error, busy, run] = useAction();
  return (
    <section class="card">
      <h2>Admin password</h2>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          setDone(false);
          run(async () => {
            await api("PUT", "/api/auth/password", { current_password: cur, new_password: next });
            // The change ends every session, this one too: log in again with the new password.
            await api("POST", "/api/auth/login", { password: next });
            setCur("");
            setNext("");
            setDone(true);
          });
        }}
      >
        <label>
          Current password
          <input type="password" autocomplete="current-password" value={cur} onInput={(e) => setCur(e.currentTarget.value)} />
        </label>
        <label>
          New password (8+ characters)
          <input type="password" autocomplete="new-password" minLength={8} value={next} onInput={(e) => setNext(e.currentTarget.value)} />
        </label>
        <button type="submit" disabled={busy || !cur || next.length < 8}>Change password</button>
      </form>
      <ErrorBox error={error} />
      {done && <p class="notice" role="status">Password changed. Other sessions have been logged out.</p>}
    </section>
  );
}
