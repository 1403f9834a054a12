import { Client } from "bandsox";

const client = new Client({
  baseURL: process.env.BANDSOX_URL ?? "http://127.0.0.1:8000",
  token: process.env.BANDSOX_API_KEY, // a bandsox API key when authentication is on
  projectID: "your-project-id",
});

// Create a sandbox and wait for it to become active
const sb = await client.create({
  user_id: "user-123",
  spec: { cpu: "1", memory: "256Mi" },
  ttl_hours: 2,
  env: { NODE_ENV: "production" },
});

// Run a command and get the result
const result = await sb.runCommand("echo hello && uname -s");
console.log(`exit_code=${result.exitCode}`);
console.log(result.output);

// Detached commands, files, listing
const cmd = await sb.runCommandDetached("sleep 1; echo $NODE_ENV", undefined, { working_dir: "/tmp" });
const finished = await cmd.wait();
console.log(`detached: ${finished.output.trim()} (started ${cmd.startedAt instanceof Date})`);
await sb.write("/app/config.json", '{"port": 3000}');
await sb.edit("/app/config.json", '"port": 3000', '"port": 8080');
console.log((await sb.read("/app/config.json")).content);
const { items, pagination } = await client.list({ user_id: "user-123", status: "active" });
console.log(`Found ${pagination.total} sandboxes: ${items[0].status}`);

sb.close();
await client.delete(sb.id);
