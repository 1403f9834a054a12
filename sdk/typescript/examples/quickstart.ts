import { BandSox } from "bandsox";

const bs = new BandSox({
  baseUrl: process.env.BANDSOX_URL ?? "http://127.0.0.1:8000",
  // With authentication on: headers: { Authorization: "Bearer bsx_your_api_key_here" },
  timeout: 120_000, // ms per call (default 60 s)
});

// Spin up a VM from an image
const vm = await bs.createVm({ image: "bandsox/busybox", name: "my-sandbox", metadata: { owner: "alice" } });

// Run a command
const result = await vm.execCommand("echo Hello from a microVM!");
console.log(result.stdout); // "Hello from a microVM!\n"
console.log(result.exit_code); // 0

// Find VMs by metadata, page through all of them
const mine = await bs.listVms({ metadata_equals: { owner: "alice" } });
console.log(mine.map((v) => v.name)); // [ 'my-sandbox' ]
const { items, pagination } = await bs.listVmsPage({ limit: 10, offset: 0 });
console.log(`${items.length} of ${pagination.total} VMs`);

// Clean up
await vm.stop();
await vm.delete();
