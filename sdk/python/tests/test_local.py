"""Local mode: ``BandSox(storage_dir=...)`` / ``BandSox()`` with no server started by hand.

The SDK finds the server owning a storage root through ``<root>/server.json`` or starts
``bandsox serve --storage ROOT`` detached; the server and its VMs outlive the script, and the
next script on the same root reuses them (BandSox's seed examples, image changed to ours).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator, List

import pytest

from bandsox import BandSox, ServerUnavailableError, _local

from .conftest import IMAGE, _kill_naming, _remove_vm_namespaces


@pytest.fixture
def root() -> Iterator[Path]:
    """A fresh storage root; at the end every process naming it (the server the SDK started
    and its VMMs) is killed."""
    d = Path(tempfile.mkdtemp(prefix="bsx-py-local-"))
    yield d
    _kill_naming(str(d))
    _remove_vm_namespaces(d)
    shutil.rmtree(d, ignore_errors=True)


def _servers_of(root: Path) -> List[int]:
    """PIDs of `bandsox serve` processes for `root`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(root).encode() in argv:
            out.append(int(entry))
    return out


def _script(code: str, *args: str, env: "dict[str, str] | None" = None) -> str:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, f"script failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


SEED_QUICKSTART = f"""
    import sys
    from bandsox.core import BandSox

    # 1. Initialize the manager (no server is running: the SDK starts one)
    manager = BandSox(storage_dir=sys.argv[1])

    # 2. Create a VM
    vm = manager.create_vm("{IMAGE}", name="local-seed", vcpu=1, mem_mib=128)
    print(f"VM Created with ID: {{vm.vm_id}}")

    # 3. Execute a command inside the VM
    result = vm.exec_command("echo Hello from Firecracker!")
    print(f"Command exit code: {{result}}")
    print("output", result.stdout.strip())
    print("guest_ip", vm.get_guest_ip())
    print("url", manager.server_url, manager.local)
    # The script ends with the VM running: it outlives the script.
"""

SECOND_SCRIPT = """
    import sys
    from bandsox.core import BandSox

    manager = BandSox(sys.argv[1])            # BandSox's positional storage_dir
    print("url", manager.server_url)
    print("names", [v["name"] for v in manager.list_vms()])
    with manager.get_vm(sys.argv[2]) as vm:   # deleted when the block ends
        print("again", vm.exec_command("echo still running").stdout.strip())
    print("left", len(manager.list_vms()))
"""


def test_seed_quickstart_starts_a_server_and_a_second_script_reuses_it(root: Path) -> None:
    assert _servers_of(root) == []
    out = _script(SEED_QUICKSTART, str(root))
    assert "Command exit code: 0" in out and "output Hello from Firecracker!" in out, out
    vm_id = out.split("VM Created with ID: ", 1)[1].split()[0]
    url = out.split("url ", 1)[1].split()[0]
    assert out.split("url ", 1)[1].split()[1] == "True"
    # get_guest_ip() is known right after create_vm (BandSox's is never None).
    assert "guest_ip 10.231." in out, out

    # The server outlived the script and announces itself in the root.
    info = json.loads((root / "server.json").read_text())
    assert info["url"] == url and _servers_of(root) == [info["pid"]]

    out2 = _script(SECOND_SCRIPT, str(root), vm_id)
    assert f"url {url}" in out2, out2
    assert "names ['local-seed']" in out2 and "again still running" in out2 and "left 0" in out2
    assert _servers_of(root) == [info["pid"]], "the second script must not start a server"

    # BandSox() without arguments goes to the server of $BANDSOX_STORAGE.
    env = dict(os.environ, BANDSOX_STORAGE=str(root))
    out3 = _script("from bandsox import BandSox\nb = BandSox()\nprint(b.server_url, b.local)",
                   env=env)
    assert out3.split() == [url, "True"]


def test_concurrent_scripts_start_one_server(root: Path) -> None:
    code = "import sys\nfrom bandsox import BandSox\nprint(BandSox(storage_dir=sys.argv[1]).server_url)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    urls = set()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        urls.add(out.strip())
    assert len(urls) == 1
    assert len(_servers_of(root)) == 1


def test_a_stale_server_file_is_replaced(root: Path) -> None:
    # A server that died without cleaning up (SIGKILL) leaves server.json behind.
    first = BandSox(storage_dir=root)
    pid = json.loads((root / "server.json").read_text())["pid"]
    first.close()
    os.kill(pid, 9)
    assert (root / "server.json").exists()
    second = BandSox(storage_dir=root)
    assert second.version()["version"]
    new_pid = json.loads((root / "server.json").read_text())["pid"]
    assert new_pid != pid and _servers_of(root) == [new_pid]
    second.close()


def test_a_server_that_cannot_start_is_an_error_and_leaves_nothing(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `bandsox init` passes, `serve` exits at once.
    fake = tmp_path / "bandsox"
    real = os.environ["BANDSOX_BIN"]
    fake.write_text(f'#!/bin/sh\n[ "$1" = init ] && exec "{real}" "$@"\n'
                    'echo "serve: no luck" >&2\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("BANDSOX_BIN", str(fake))
    with pytest.raises(ServerUnavailableError) as ei:
        BandSox(storage_dir=root)
    assert "no luck" in str(ei.value) and ei.value.code == "server_unavailable"
    assert _servers_of(root) == [] and not (root / "server.json").exists()
    # No binary at all: one clear error naming the fix.
    monkeypatch.setenv("BANDSOX_BIN", str(tmp_path / "missing"))
    with pytest.raises(ServerUnavailableError) as ei:
        BandSox(storage_dir=root)
    assert "BANDSOX_BIN" in (ei.value.hint or "")


def test_server_file_must_name_a_live_local_server(root: Path) -> None:
    f = root / "server.json"
    for body in ('{"pid": 1, "url": "http://example.com:80"}',   # not local
                 '{"pid": 999999999, "url": "http://127.0.0.1:9"}',  # no such process
                 f'{{"pid": {os.getpid()}, "url": "http://127.0.0.1:9"}}',  # nothing answers
                 'not json', '[]'):
        f.write_text(body)
        assert _local.read_server_file(root) is None, body
