import { BandSox } from "bandsox";

const bs = new BandSox({ baseUrl: process.env.BANDSOX_URL ?? "http://127.0.0.1:8000" });
const vm = await bs.createVm({ image: "bandsox/busybox" });
try {
  // BandSox's methods
  await vm.writeFile({ path: "/app/config.json", content: '{"port": 3000}' });
  await vm.appendText("/app/config.json", "\n");
  console.log(await vm.readFile("/app/config.json")); // {"port": 3000}
  for (const entry of (await vm.listDir("/app")).files) console.log(`${entry.name} ${entry.size} bytes dir=${entry.is_dir}`);
  console.log((await vm.getFileInfo("/app/config.json")).size); // 15
  await vm.uploadFile("/app/data.bin", new Uint8Array([1, 2, 3]));
  const bytes: Uint8Array = await vm.downloadFile("/app/data.bin");
  console.log(bytes.length); // 3
  await vm.uploadFolder({ "src/main.sh": "echo hi", "README.md": "# Project" }, "/project");

  // Vtrix-style methods
  await vm.edit("/app/config.json", '"port": 3000', '"port": 8080');
  const read = await vm.read("/app/config.json");
  console.log(read.type, read.content?.trim(), read.truncated); // text {"port": 8080} false
  const { bytes_written } = await vm.write("/app/notes.txt", "hello\n");
  console.log(bytes_written); // 6
  await vm.writeFiles([{ path: "/app/run.sh", content: Buffer.from("#!/bin/sh\necho run\n"), mode: 0o755 }]);
  console.log((await vm.execCommand("/app/run.sh")).stdout); // run
  await vm.mkDir("/app/logs");
  console.log((await vm.listFiles("/app")).map((e) => `${e.is_dir ? "d" : "f"} ${e.name}`).join(", "));
  console.log(await vm.exists("/app/logs"), (await vm.stat("/nope")).exists); // true false
  console.log(await vm.readToBuffer("/nope")); // null
  let total = 0;
  for await (const chunk of vm.readStream("/app/notes.txt", 4)) total += chunk.length;
  console.log(total); // 6
} finally {
  await vm.delete();
}
