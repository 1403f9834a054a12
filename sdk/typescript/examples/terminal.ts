import { BandSox } from "bandsox";

const bs = new BandSox({ baseUrl: process.env.BANDSOX_URL ?? "http://127.0.0.1:8000" });
const vm = await bs.createVm({ image: "bandsox/busybox" });
try {
  const terminal = vm.connectTerminal(120, 40);
  let screen = "";
  terminal.onOutput((data) => (screen += data));
  terminal.onError((err) => console.error(err));
  terminal.sendInput("stty size\n");
  terminal.resize(100, 30);
  terminal.sendInput("stty size; exit\n");
  await terminal.closed; // the shell exited
  console.log(screen.includes("30 100") ? "resized to 100x30" : screen);
} finally {
  await vm.delete();
}
