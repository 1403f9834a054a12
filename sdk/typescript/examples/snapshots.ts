import { BandSox } from "bandsox";

const bs = new BandSox({ baseUrl: process.env.BANDSOX_URL ?? "http://127.0.0.1:8000" });
const vm = await bs.createVm({ image: "bandsox/busybox", name: "worker" });
await vm.write("/root/my-state-file", "state\n");

// Pause and resume: a paused VM uses no CPU.
await vm.pause();
await vm.resume();

// Metadata and names
await vm.updateMetadata({ env: "staging" });
await vm.rename("staging-worker-1");

// Snapshot, then restore into a new VM
const snapId = await vm.snapshot({ name: "checkpoint-1" });
await vm.stop();
const restored = await bs.restoreVm(snapId, { name: "restored-vm" });
console.log((await restored.execCommand("cat /root/my-state-file")).stdout); // state

for (const s of await bs.listSnapshots()) console.log(s.id === snapId, s.name);
await bs.renameSnapshot(snapId, "checkpoint-renamed");

// Clean up
await restored.delete();
await bs.deleteVm(vm.id);
await bs.deleteSnapshot(snapId);
