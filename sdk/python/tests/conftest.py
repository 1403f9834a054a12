"""Fixtures: real `bandsox serve` processes (with real VMs) on temporary storage roots.

The `bandsox` binary comes from $BANDSOX_BIN, else target/debug or target/release of the repo;
the static guest agent from $BANDSOX_AGENT_BIN, else
target/x86_64-unknown-linux-gnu/release/bandsox-agent. At teardown the server is stopped and
every process whose command line names the temporary storage root (the VMMs, which outlive the
server by design) is killed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import httpx
import pytest

from bandsox import BandSox, MicroVM

REPO = Path(__file__).resolve().parents[3]
IMAGE = "bandsox/busybox"


def _bandsox_bin() -> Path:
    env = os.environ.get("BANDSOX_BIN")
    candidates = [Path(env)] if env else [
        REPO / "target" / "debug" / "bandsox",
        REPO / "target" / "release" / "bandsox",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.exit(
        f"bandsox binary not found (tried {', '.join(map(str, candidates))}); "
        "run `cargo build -p bandsox-cli` or set BANDSOX_BIN",
        returncode=2,
    )


def _agent_bin() -> Path:
    p = Path(
        os.environ.get("BANDSOX_AGENT_BIN")
        or REPO / "target" / "x86_64-unknown-linux-gnu" / "release" / "bandsox-agent"
    )
    if not p.is_file():
        pytest.exit(
            f"guest agent not found at {p}; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" "
            "cargo build --release -p bandsox-agent --target x86_64-unknown-linux-gnu "
            "or set BANDSOX_AGENT_BIN",
            returncode=2,
        )
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_naming(needle: str) -> None:
    """SIGKILLs every process whose command line contains `needle` (not this process)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle.encode() in cmd:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def _remove_vm_namespaces(storage: Path) -> None:
    """Deletes the network namespaces (`bsx-<id>`) of VMs killed above."""
    vms = Path(storage) / "vms"
    for d in vms.iterdir() if vms.is_dir() else []:
        if Path(f"/run/netns/bsx-{d.name}").exists():
            subprocess.run(["ip", "netns", "delete", f"bsx-{d.name}"], check=False)


@dataclass
class Server:
    url: str
    storage: Path
    bin: Path
    proc: subprocess.Popen
    log: Path
    api_key: Optional[str] = None
    password: Optional[str] = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _run(args: List[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _start_server(prefix: str, auth: bool) -> Iterator[Server]:
    binp = _bandsox_bin()
    agent = _agent_bin()
    storage = Path(tempfile.mkdtemp(prefix=prefix))
    proc = None
    try:
        _run([str(binp), "init", "--storage", str(storage), "--agent", str(agent)])
        key = password = None
        if auth:
            out = _run([str(binp), "auth", "init", "--storage", str(storage)],
                       stdin=subprocess.DEVNULL).stdout
            m = re.search(r"^API key\s+(\S+)", out, re.M)
            p = re.search(r"^admin password\s+(\S+)", out, re.M)
            assert m and p, f"cannot parse `bandsox auth init` output:\n{out}"
            key, password = m.group(1), p.group(1)
        port = _free_port()
        log = storage / "serve.log"
        logf = open(log, "wb")
        proc = subprocess.Popen(
            [str(binp), "serve", "--port", str(port), "--proxy-port", "0", "--storage", str(storage)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        )
        logf.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/api/version", timeout=1)  # any answer (401 too) means up
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bandsox serve did not come up:\n{log.read_text()}")
                time.sleep(0.05)
        yield Server(url=url, storage=storage, bin=binp, proc=proc, log=log,
                     api_key=key, password=password)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _kill_naming(str(storage))
        _remove_vm_namespaces(storage)
        shutil.rmtree(storage, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _hermetic_env(tmp_path_factory) -> Iterator[None]:
    """No ambient BANDSOX_URL/BANDSOX_API_KEY, an empty HOME (no ~/.bandsox/credentials), a
    temporary default storage root (``BandSox()`` never touches /var/lib/bandsox) and the
    binaries under test for servers the SDK starts itself."""
    names = ("BANDSOX_URL", "BANDSOX_API_KEY", "HOME", "SUDO_USER", "BANDSOX_STORAGE",
             "BANDSOX_BIN", "BANDSOX_AGENT_BIN")
    saved = {k: os.environ.get(k) for k in names}
    for k in ("BANDSOX_URL", "BANDSOX_API_KEY", "SUDO_USER"):
        os.environ.pop(k, None)
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    default_storage = tmp_path_factory.mktemp("default-storage")
    os.environ["BANDSOX_STORAGE"] = str(default_storage)
    os.environ["BANDSOX_BIN"] = str(_bandsox_bin())
    os.environ["BANDSOX_AGENT_BIN"] = str(_agent_bin())
    yield
    # A server the SDK started there (README's local-mode block) and its VMs.
    _kill_naming(str(default_storage))
    _remove_vm_namespaces(default_storage)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def server(_hermetic_env) -> Iterator[Server]:
    yield from _start_server("bsx-py-", auth=False)


@pytest.fixture(scope="session")
def auth_server(_hermetic_env) -> Iterator[Server]:
    yield from _start_server("bsx-py-auth-", auth=True)


@pytest.fixture(scope="session")
def bs(server: Server) -> Iterator[BandSox]:
    client = BandSox(server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def vm(bs: BandSox, server: Server) -> Iterator[MicroVM]:
    """One VM shared by most tests (boots take seconds under TCG)."""
    try:
        v = bs.create_vm(
            IMAGE,
            name="py-shared",
            metadata={"suite": "python", "role": "shared"},
            env_vars={"GREETING": "hello", "API_TOKEN": "s3cret"},
        )
    except Exception as e:
        raise RuntimeError(f"{e}\nserver log:\n{server.log_tail()}") from e
    yield v
    try:
        bs.delete_vm(v.vm_id)
    except Exception:
        pass
