"""Local mode: the server that owns a storage root, started on demand.

BandSox's ``BandSox(storage_dir=...)`` manages VMs in-process; here a ``bandsox serve`` process
owns each storage root and writes ``<root>/server.json`` (``{"pid", "url", "proxy_url",
"version"}``) once it listens. :func:`ensure_server` returns the URL of that server, or starts
one (``bandsox serve --storage ROOT --port 0 --proxy-port 0``, detached in its own session, its
log in ``<root>/server.log``) when there is none. The server and its VMs outlive the script; the
next script on the same root finds and reuses them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit

import httpx

from . import errors

#: Storage root of ``BandSox()`` without arguments (as ``bandsox serve``).
DEFAULT_STORAGE = "/var/lib/bandsox"
#: The file a server writes into its storage root.
SERVER_FILE = "server.json"
#: Log of servers this module starts.
SERVER_LOG = "server.log"
#: Lock taken while looking for / starting a server, so concurrent scripts start one.
START_LOCK = ".server-start.lock"
#: Hosts a ``server.json`` URL may name (a storage root only ever points at a local server).
_LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


def default_storage() -> Path:
    """``$BANDSOX_STORAGE``, else ``/var/lib/bandsox``."""
    return Path(os.environ.get("BANDSOX_STORAGE") or DEFAULT_STORAGE)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a server this process started that has exited) is not alive.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


def _answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a bandsox server answers at ``url`` (any HTTP answer, 401 too)."""
    try:
        httpx.get(f"{url}/api/version", timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def read_server_file(root: Union[str, "os.PathLike[str]"]) -> Optional[str]:
    """The URL in ``<root>/server.json`` when its server process lives and answers there;
    ``None`` when the file is missing, stale or not about a local server."""
    try:
        data = json.loads((Path(root) / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    url, pid = data.get("url"), data.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int) or pid <= 0:
        return None
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in _LOCAL_HOSTS or parts.path not in ("", "/"):
        return None
    if not _pid_alive(pid) or not _answers(url):
        return None
    return url.rstrip("/")


def bandsox_binary() -> str:
    """The ``bandsox`` executable: ``$BANDSOX_BIN``, else ``bandsox`` on ``PATH``."""
    env = os.environ.get("BANDSOX_BIN")
    found = env if env else shutil.which("bandsox")
    if not found or not os.access(found, os.X_OK):
        raise errors.ServerUnavailableError(
            "cannot start a local bandsox server: the `bandsox` binary was not found"
            + (f" at {env}" if env else " on PATH"),
            code="server_unavailable",
            hint="install bandsox (see the README) or set BANDSOX_BIN, or pass a server URL",
        )
    return found


def _initialised(root: Path) -> bool:
    return (root / "bandsox.db").exists() and (root / "kernels" / "vmlinux").exists()


def _log_tail(root: Path, n: int = 20) -> str:
    try:
        lines = (root / SERVER_LOG).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _spawn(binary: str, root: Path) -> int:
    """Starts ``bandsox serve`` for ``root`` in a session of its own (no controlling
    terminal, stdin from /dev/null, output appended to ``<root>/server.log``); returns its pid."""
    log = str(root / SERVER_LOG)
    args = [binary, "serve", "--storage", str(root), "--port", "0", "--proxy-port", "0"]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(binary, args, dict(os.environ), file_actions=actions, setsid=True)


def _exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not _pid_alive(pid)
    return done != 0


def _stop(pid: int) -> None:
    """Stops a server this module started that did not come up (no process is left behind)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        if _exited(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def ensure_server(root: Union[str, "os.PathLike[str]"], start_timeout: float = 60.0) -> str:
    """The URL of the server owning ``root``, started first when none runs.

    Raises :class:`ServerUnavailableError` when no server can be started (no binary, a root
    that cannot be written, ``bandsox init`` or ``bandsox serve`` failing: the message has the
    end of their output).
    """
    path = Path(root).expanduser().resolve()
    url = read_server_file(path)
    if url:
        return url
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = open(path / START_LOCK, "a+")
    except OSError as e:
        raise errors.ServerUnavailableError(
            f"no bandsox server owns {path} and one cannot be started there: {e}",
            code="server_unavailable",
            hint="start `bandsox serve --storage DIR` yourself, or pass a writable storage_dir",
        ) from e
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        # Another script may have started it while this one waited for the lock.
        url = read_server_file(path)
        if url:
            return url
        binary = bandsox_binary()
        if not _initialised(path):
            out = subprocess.run(
                [binary, "init", "--storage", str(path)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
            )
            if out.returncode != 0:
                raise errors.ServerUnavailableError(
                    f"`bandsox init --storage {path}` failed ({out.returncode}): "
                    f"{(out.stderr or out.stdout).strip()}",
                    code="server_unavailable",
                    hint="run `bandsox init --storage DIR` yourself (see docs/CLI.md)",
                )
        pid = _spawn(binary, path)
        deadline = time.monotonic() + start_timeout
        while True:
            url = read_server_file(path)
            if url:
                return url
            if _exited(pid) or time.monotonic() > deadline:
                _stop(pid)
                raise errors.ServerUnavailableError(
                    f"`{binary} serve --storage {path}` did not come up (a bandsox older than "
                    f"0.1 writes no {SERVER_FILE}):\n{_log_tail(path)}",
                    code="server_unavailable",
                    hint=f"see {path / SERVER_LOG}",
                )
            time.sleep(0.05)


__all__ = ["default_storage", "ensure_server", "read_server_file", "bandsox_binary"]
