import { BandSox, BandSoxError, BandSoxTimeoutError, VmNotFoundError } from "bandsox";

const bs = new BandSox({ baseUrl: process.env.BANDSOX_URL ?? "http://127.0.0.1:8000" });

try {
  await bs.getVm("nonexistent-id");
} catch (err) {
  if (err instanceof BandSoxError) {
    console.log(err.statusCode); // 404
    console.log(err.code); // vm_not_found
    console.log(err instanceof VmNotFoundError); // true
    console.log(err.message); // VM `nonexistent-id` not found
  }
}

// Every call has a timeout (the client's `timeout`, or per call):
try {
  await bs.listVms({}, { timeout: 1 });
} catch (err) {
  console.log(err instanceof BandSoxTimeoutError ? "timed out" : `answered in time (${String(err)})`);
}
