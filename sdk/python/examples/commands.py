"""Durable commands: start in the background, read logs from an offset, wait, kill."""
import time

from bandsox import BandSox

bs = BandSox()
vm = bs.create_vm("bandsox/busybox", name="example-commands")
try:
    # Runs to the end; args are shell-quoted, stdin is written and closed.
    r = vm.run_command("wc", ["-c"], stdin="twelve bytes")
    print("wc says", r.stdout.strip(), "exit", int(r))

    server = vm.run_command_detached("while true; do echo beat; sleep 1; done")
    time.sleep(2.5)
    first = server.logs()                      # everything so far
    print("beats so far:", first["stdout"].count("beat"))
    time.sleep(1)
    more = server.logs(stdout_from=first["stdout_offset"])  # only what is new
    print("new output:", more["stdout"].split())
    server.kill("SIGTERM")
    print("exit code after SIGTERM:", int(server.wait(timeout=10)))   # 143

    # A handle can be rebuilt from the id alone, from any client.
    again = vm.get_command(server.cmd_id)
    print("still running:", again.info()["running"])
finally:
    vm.delete()
