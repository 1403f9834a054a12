// CommonJS consumer: require("bandsox") (the package's "require" export, dist/cjs), one sandbox
// through the Vtrix-style Client against $BANDSOX_URL with $BANDSOX_API_KEY as the token.
const { Client, BandSox } = require("bandsox");

async function main() {
  const client = new Client({ baseURL: process.env.BANDSOX_URL, token: process.env.BANDSOX_API_KEY, projectID: "smoke-cjs" });
  const sb = await client.create({ user_id: "smoke" });
  try {
    const r = await sb.runCommand("echo hello");
    console.log(`commonjs exit=${r.exitCode} out=${r.output.trim()} ${sb.status} deleted=${await done(client, sb)}`);
  } finally {
    sb.close();
  }
}

async function done(client, sb) {
  await client.delete(sb.id);
  const bs = new BandSox({ baseUrl: process.env.BANDSOX_URL, apiKey: process.env.BANDSOX_API_KEY });
  return (await bs.getVmInfo(sb.id)) === null;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
