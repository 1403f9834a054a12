"""Live output: callbacks get each chunk while the command still runs."""
import time

from bandsox import BandSox

bs = BandSox()
vm = bs.create_vm("bandsox/busybox", name="example-streaming")
try:
    t0 = time.monotonic()

    def show(text):
        print(f"[{time.monotonic() - t0:4.1f}s] {text}", end="")

    # exec_command streams over the exec-stream WebSocket when given callbacks.
    code = vm.exec_command(
        "for i in 1 2 3; do echo tick $i; sleep 1; done; echo done >&2",
        on_stdout=show,
        on_stderr=show,
        timeout=30,
    )
    print("exit code", code)

    # run_command does the same over a durable command (which outlives the client).
    result = vm.run_command("echo compiling; sleep 1; echo linked", on_stdout=show)
    print("output:", result.stdout.split())
finally:
    vm.delete()
