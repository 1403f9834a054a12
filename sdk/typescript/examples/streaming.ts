import { BandSox } from "bandsox";

const bs = new BandSox({ baseUrl: process.env.BANDSOX_URL ?? "http://127.0.0.1:8000" });
const vm = await bs.createVm({ image: "bandsox/busybox" });
try {
  // Output arrives while the command runs (exec-stream WebSocket).
  const { exit_code } = await bs.execStream(vm.id, {
    command: "echo step 1; sleep 1; echo step 2",
    timeout: 60,
    onStdout: (chunk) => process.stdout.write(`[live] ${chunk}`),
    onStderr: (chunk) => process.stderr.write(chunk),
  });
  console.log("exit", exit_code);

  // Vtrix style: writers, args (shell-quoted), env and working directory.
  const finished = await vm.runCommand("echo $LANG $PWD", ["it's", "my dir"], {
    working_dir: "/tmp",
    env: { LANG: "C" },
    stdout: process.stdout,
    stderr: process.stderr,
  });
  console.log("exitCode", finished.exitCode);

  // Typed events.
  for await (const ev of vm.runCommandStream("echo out; sleep 1; echo err >&2")) {
    if (ev.type === "stdout") process.stdout.write(`stdout: ${ev.data}`);
    if (ev.type === "stderr") process.stdout.write(`stderr: ${ev.data}`);
    if (ev.type === "done") console.log("done", ev.exitCode);
  }

  // Durable background commands: keep running when the client goes away.
  const cmd = await vm.runCommandDetached("for i in 1 2 3; do echo tick $i; sleep 1; done");
  for await (const ev of cmd.logs()) process.stdout.write(`${ev.stream}: ${ev.data}`);
  const result = await cmd.wait();
  console.log("detached exit", result.exitCode, JSON.stringify(await cmd.stdout()));

  // Replay a command's output later, from its id.
  for await (const ev of vm.execLogs(cmd.cmdId)) if (ev.type === "done") console.log("replayed, exit", ev.exitCode);

  // Stop a long-running one.
  const server = await vm.runCommandDetached("sleep 300");
  await server.kill("SIGTERM");
  console.log("killed, exit", (await server.wait()).exitCode); // 143 = 128 + SIGTERM
} finally {
  await vm.delete();
}
