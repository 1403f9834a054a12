"""Live output: exec_command callbacks over the exec-stream WebSocket, BandSox sessions (durable
commands and PTYs over the terminal WebSocket), Vtrix-style durable commands; sync and async."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bandsox import AsyncBandSox, Command, MicroVM, SessionId, errors

from .conftest import Server


def _wait_for(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_exec_callbacks_stream_before_the_command_ends(vm: MicroVM):
    events = []  # (monotonic time, stream, text)
    t0 = time.monotonic()
    r = vm.exec_command(
        "echo first; echo err1 >&2; sleep 2; echo second; exit 4",
        on_stdout=lambda s: events.append((time.monotonic(), "out", s)),
        on_stderr=lambda s: events.append((time.monotonic(), "err", s)),
        timeout=20,
    )
    end = time.monotonic()
    assert r == 4
    assert r.stdout == "first\nsecond\n" and r.stderr == "err1\n"
    assert "".join(s for _, k, s in events if k == "out") == "first\nsecond\n"
    first = next(t for t, k, s in events if "first" in s)
    # The first chunk came while the command was still sleeping.
    assert end - first >= 1.5, (first - t0, end - t0)
    assert end - t0 >= 2.0


def test_exec_stream_env_cwd_timeout_and_errors(vm: MicroVM, bs):
    got = []
    r = vm.exec_command("pwd; echo $X $GREETING", env={"X": "it's"}, cwd="/tmp",
                        on_stdout=got.append)
    assert r == 0 and r.stdout == "/tmp\nit's hello\n" and "".join(got) == r.stdout
    with pytest.raises(errors.TimeoutError) as ei:
        vm.exec_command("sleep 30", on_stdout=got.append, timeout=1)
    assert ei.value.code == "exec_timeout"
    with pytest.raises(errors.InvalidInputError):
        vm.exec_command("true", env={"BAD NAME": "x"}, on_stdout=got.append)
    ghost = MicroVM(bs, "no-such-vm")
    with pytest.raises(errors.VmNotFoundError):
        ghost.exec_command("true", on_stdout=got.append)


def test_session_with_stdin_and_callbacks(vm: MicroVM):
    out, exits = [], []
    sid = vm.start_session("while read l; do echo got:$l; done; echo bye >&2; exit 7",
                           on_stdout=out.append, on_stderr=out.append, on_exit=exits.append)
    assert isinstance(sid, SessionId) and isinstance(sid, str)
    session_id, pid = sid  # BandSox's (session_id, pid)
    assert session_id == sid and isinstance(pid, int) and pid > 0
    vm.send_session_input(sid, "one\n")
    assert _wait_for(lambda: "got:one\n" in "".join(out)), out
    assert not exits  # still running: output arrived live
    vm.send_session_input(sid, "dHdvCg==", encoding="base64")  # "two\n"
    assert _wait_for(lambda: "got:two\n" in "".join(out)), out
    vm.get_command(sid).close_stdin()
    assert _wait_for(lambda: exits == [7]), exits
    assert "bye\n" in "".join(out)
    vm.resize_session(sid, 100, 30)  # no terminal: a no-op, but the session must exist
    with pytest.raises(errors.NotFoundError):
        vm.resize_session("nope", 1, 1)


def test_kill_session(vm: MicroVM):
    exits = []
    sid = vm.start_session("sleep 100", on_exit=exits.append)
    vm.kill_session(sid)
    assert _wait_for(lambda: exits == [128 + 15]), exits
    with pytest.raises(errors.NotFoundError):
        vm.kill_session("no-such-session")


def test_pty_session(vm: MicroVM):
    out, exits = [], []
    lock = threading.Lock()

    def on_out(s: str) -> None:
        with lock:
            out.append(s)

    sid = vm.start_pty_session("/bin/sh", cols=80, rows=24, on_stdout=on_out,
                               on_exit=exits.append)
    vm.send_session_input(sid, "tty; echo pty-$((6*7))\n")
    assert _wait_for(lambda: "pty-42" in "".join(out)), out
    assert "/dev/pts/" in "".join(out)
    vm.resize_session(sid, 123, 45)
    vm.send_session_input(sid, "stty size\n")
    assert _wait_for(lambda: "45 123" in "".join(out)), out
    vm.kill_session(sid)
    assert _wait_for(lambda: len(exits) == 1)


def test_pty_session_runs_a_command(vm: MicroVM):
    out, exits = [], []
    sid = vm.start_pty_session("cat", on_stdout=out.append, on_exit=exits.append)
    vm.send_session_input(sid, "echo-me\n")
    assert _wait_for(lambda: "".join(out).count("echo-me") >= 2), repr("".join(out))  # tty echo + cat
    vm.send_session_input(sid, b"\x04")  # EOF: cat ends, so does the session
    assert _wait_for(lambda: exits == [0]), (exits, out)


def test_run_command_and_handle(vm: MicroVM):
    r = vm.run_command("echo", ["a b", "$HOME"], cwd="/tmp")
    assert r == 0 and r.stdout == "a b $HOME\n"
    r = vm.run_command(["sh", "-c", "cat; echo e >&2; exit 3"], stdin="fed\n")
    assert (int(r), r.stdout, r.stderr) == (3, "fed\n", "e\n")
    chunks = []
    t0 = time.monotonic()
    r = vm.run_command("echo early; sleep 2; echo late",
                       on_stdout=lambda s: chunks.append((time.monotonic(), s)))
    end = time.monotonic()
    assert r.stdout == "early\nlate\n"
    assert end - chunks[0][0] >= 1.5, [(t - t0, s) for t, s in chunks]
    slow = vm.run_command_detached("sleep 30", timeout=1)
    with pytest.raises(errors.TimeoutError) as ei:
        slow.wait(timeout=30)
    assert ei.value.code == "exec_timeout", slow.info()
    with pytest.raises(errors.TimeoutError) as ei:
        vm.run_command("sleep 30", timeout=1)
    assert ei.value.code == "exec_timeout"

    cmd = vm.run_command_detached("echo out; echo err >&2; sleep 60")
    assert isinstance(cmd, Command) and cmd.pid
    assert _wait_for(lambda: cmd.logs()["stdout"] == "out\n")
    logs = cmd.logs()
    assert logs["stderr"] == "err\n" and logs["stdout_offset"] == 4
    assert cmd.logs(stdout_from=2)["stdout"] == "t\n"
    assert cmd.info()["running"] is True
    assert cmd.cmd_id in [c["cmd_id"] for c in vm.list_commands()]
    with pytest.raises(errors.TimeoutError) as ei:
        cmd.wait(timeout=1)
    assert ei.value.code == "client_timeout"
    cmd.kill("SIGKILL")
    r = vm.get_command(cmd.cmd_id).wait(timeout=20)
    assert r == 128 + 9 and r.stdout == "out\n" and cmd.stderr() == "err\n"
    with pytest.raises(errors.NotFoundError):
        vm.get_command("no-such-command").info()

    fed = vm.run_command_detached("tr a-z A-Z", stdin=True)
    fed.write_stdin("abc ")
    fed.write_stdin(b"def\n", close=True)
    assert fed.wait(timeout=20).stdout == "ABC DEF\n"
    with pytest.raises(errors.BandSoxError):
        fed.write_stdin("late")  # the command has ended


def test_async_streaming_and_sessions(server: Server, vm: MicroVM):
    async def run():
        async with AsyncBandSox(server.url) as abs_:
            avm = await abs_.get_vm(vm.vm_id)
            seen = []
            r = await avm.exec_command("echo x; sleep 1; echo y", on_stdout=seen.append)
            assert r.stdout == "x\ny\n" and "".join(seen) == "x\ny\n"
            out, exits = [], []
            sid = await avm.start_session("cat", on_stdout=out.append, on_exit=exits.append)
            await avm.send_session_input(sid, "async-in\n")
            for _ in range(200):
                if "async-in" in "".join(out):
                    break
                await asyncio.sleep(0.05)
            assert "async-in\n" == "".join(out)
            await avm.kill_session(sid)
            pout = []
            psid = await avm.start_pty_session("/bin/sh", on_stdout=pout.append)
            await avm.send_session_input(psid, "echo apty-$((2+3))\n")
            for _ in range(200):
                if "apty-5" in "".join(pout):
                    break
                await asyncio.sleep(0.05)
            assert "apty-5" in "".join(pout)
            await avm.kill_session(psid)
            cmd = await avm.run_command_detached("echo det")
            assert (await cmd.wait(timeout=20)).stdout == "det\n"
            live = []
            r = await avm.run_command("echo one; sleep 1; echo two", on_stdout=live.append)
            assert r.stdout == "one\ntwo\n" == "".join(live) and len(live) >= 2
            await avm.write_files([{"path": "/tmp/async-stream.bin", "content": b"z" * 70000}])
            chunks = [c async for c in avm.read_stream("/tmp/async-stream.bin", 65536)]
            assert b"".join(chunks) == b"z" * 70000 and len(chunks) == 2
            assert (await avm.read("/tmp/async-stream.bin", max_bytes=10))["truncated"] is True

    asyncio.run(run())
