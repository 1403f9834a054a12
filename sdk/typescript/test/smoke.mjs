// ESM consumer: import from "bandsox" (the package's "import" export, dist/esm), one sandbox
// through the Vtrix-style Client against $BANDSOX_URL with $BANDSOX_API_KEY as the token.
import { BandSox, Client } from "bandsox";

const client = new Client({ baseURL: process.env.BANDSOX_URL, token: process.env.BANDSOX_API_KEY, projectID: "smoke-esm" });
const sb = await client.create({ user_id: "smoke" });
try {
  const r = await sb.runCommand("echo hello");
  await client.delete(sb.id);
  const bs = new BandSox({ baseUrl: process.env.BANDSOX_URL, apiKey: process.env.BANDSOX_API_KEY });
  const gone = (await bs.getVmInfo(sb.id)) === null;
  console.log(`esm exit=${r.exitCode} out=${r.output.trim()} ${sb.status} deleted=${gone}`);
} finally {
  sb.close();
}
