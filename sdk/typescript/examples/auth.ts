import { AuthenticationError, BandSox } from "bandsox";

const baseUrl = process.env.BANDSOX_URL ?? "http://127.0.0.1:8000";

// Without credentials, a server with authentication answers 401.
try {
  await new BandSox({ baseUrl }).listVms();
} catch (err) {
  console.log(err instanceof AuthenticationError, (err as AuthenticationError).statusCode); // true 401
}

// Log in with the admin password: the SDK keeps the session token for later calls.
const bs = new BandSox({ baseUrl });
await bs.login(process.env.BANDSOX_ADMIN_PASSWORD ?? "");
console.log(await bs.authCheck()); // { authenticated: true }
const created = await bs.createApiKey("ci-runner");

// API keys go in the Authorization header (or `apiKey`).
const ci = new BandSox({ baseUrl, headers: { Authorization: `Bearer ${created.key}` } });
console.log((await ci.listVms()).length); // 0

console.log((await bs.listApiKeys()).map((k) => k.name));
await bs.revokeApiKey(created.key_id);
await bs.logout();
