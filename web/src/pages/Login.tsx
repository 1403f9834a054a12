import { useEffect, useState } from "preact/hooks";
import { api } from "../api";
import { ErrorBox, param } from "../ui";

/** Where to go after login: a path on this origin only (never `//host` or a scheme). */
export function safeNext(next: string): string {
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

export function Login() {
  const [password, setPassword] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  // Already in (a live session, or auth is off): no login step.
  useEffect(() => {
    api<{ authenticated: boolean }>("GET", "/api/auth/check")
      .then((r) => r.authenticated && location.replace(safeNext(param("next"))))
      .catch(() => {});
  }, []);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api("POST", "/api/auth/login", { password });
      location.assign(safeNext(param("next")));
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  return (
    <main>
      <section class="card login">
        <h1>
          <img src="/favicon.svg" width={22} height={22} alt="" /> bandsox
        </h1>
        <form onSubmit={submit}>
          <label>
            Admin password
            <input
              type="password"
              name="password"
              autocomplete="current-password"
              autofocus
              value={password}
              onInput={(e) => setPassword(e.currentTarget.value)}
            />
          </label>
          <ErrorBox error={error} />
          <button class="primary" type="submit" disabled={busy || !password}>
            Log in
          </button>
        </form>
      </section>
    </main>
  );
}
