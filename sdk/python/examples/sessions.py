"""BandSox sessions: a background command with stdin, and an interactive PTY."""
import time

from bandsox import BandSox

bs = BandSox()
vm = bs.create_vm("bandsox/busybox", name="example-sessions")
try:
    # A background session: output and the exit code arrive through callbacks.
    lines, exit_codes = [], []
    session_id = vm.start_session(
        "while read line; do echo \"got: $line\"; done",
        on_stdout=lines.append,
        on_exit=exit_codes.append,
    )
    vm.send_session_input(session_id, "hello\n")
    time.sleep(1)
    vm.kill_session(session_id)
    while not exit_codes:
        time.sleep(0.1)
    print("".join(lines).strip(), "| exit code", exit_codes[0])  # got: hello | exit code 143

    # session_id, pid = vm.start_session(...) works too (BandSox's tuple).

    # An interactive shell under a pseudo-terminal (the terminal WebSocket).
    screen = []
    pty = vm.start_pty_session("/bin/sh", cols=80, rows=24, on_stdout=screen.append)
    vm.resize_session(pty, 120, 40)
    vm.send_session_input(pty, "stty size; echo pty says $((6 * 7))\n")
    while "pty says 42" not in "".join(screen):
        time.sleep(0.1)
    print("terminal size", "40 120" in "".join(screen))
    vm.kill_session(pty)
finally:
    vm.delete()
