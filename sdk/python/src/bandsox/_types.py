"""Result types.

The server's objects (VMs, snapshots, file entries, command states, ...) are returned as
plain ``dict``s, exactly the JSON the server sent (so ``vm_info["status"]`` works as with
BandSox, and fields added by newer servers are kept); the ``TypedDict``s below describe them
to type checkers. Every key is optional to the checker (``total=False``): read those a server
may leave out with ``.get``.
"""

from __future__ import annotations

import base64
import json as _json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, TypedDict

import httpx


class ExecResult(int):
    """Result of :meth:`MicroVM.exec_command`.

    It *is* the exit code (an ``int``, as BandSox's ``exec_command`` returns), so
    ``if vm.exec_command("true") == 0`` works; it also carries the output:
    ``.stdout``, ``.stderr``, ``.exit_code`` and dict-style ``result["stdout"]``.
    """

    stdout: str
    stderr: str
    stdout_dropped_bytes: int
    stderr_dropped_bytes: int

    def __new__(
        cls,
        exit_code: int,
        stdout: str = "",
        stderr: str = "",
        stdout_dropped_bytes: int = 0,
        stderr_dropped_bytes: int = 0,
    ) -> "ExecResult":
        obj = super().__new__(cls, exit_code)
        obj.stdout = stdout
        obj.stderr = stderr
        obj.stdout_dropped_bytes = stdout_dropped_bytes
        obj.stderr_dropped_bytes = stderr_dropped_bytes
        return obj

    @property
    def exit_code(self) -> int:
        """The exit code (the value itself)."""
        return int(self)

    @property
    def output(self) -> str:
        """stdout followed by stderr."""
        return self.stdout + self.stderr

    @property
    def success(self) -> bool:
        """Whether the exit code is 0."""
        return int(self) == 0

    def __getitem__(self, key: str) -> Any:
        if key in ("exit_code", "stdout", "stderr", "output", "success",
                   "stdout_dropped_bytes", "stderr_dropped_bytes"):
            return getattr(self, key)
        raise KeyError(key)

    def to_dict(self) -> Dict[str, Any]:
        """BandSox's ``{"exit_code", "stdout", "stderr"}``."""
        return {"exit_code": int(self), "stdout": self.stdout, "stderr": self.stderr}

    def __str__(self) -> str:
        return str(int(self))

    def __repr__(self) -> str:
        return (f"ExecResult(exit_code={int(self)}, stdout={self.stdout!r}, "
                f"stderr={self.stderr!r})")


@dataclass
class VmPage:
    """One page of :meth:`BandSox.list_vms_page`: the VMs and the number of matches before
    ``offset``/``limit`` (the server's ``X-Total-Count``)."""

    items: List["VmInfo"] = field(default_factory=list)
    total: int = 0
    offset: int = 0
    limit: Optional[int] = None

    def __iter__(self) -> Iterator["VmInfo"]:
        """Iterates over the VMs of the page."""
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class SessionId(str):
    """What :meth:`MicroVM.start_session` returns: the session id (a ``str``, as BandSox's
    docs use it) that also unpacks as BandSox's ``(session_id, pid)`` tuple."""

    pid: Optional[int]

    def __new__(cls, session_id: str, pid: Optional[int] = None) -> "SessionId":
        obj = super().__new__(cls, session_id)
        obj.pid = pid
        return obj

    def __iter__(self) -> "Iterator[Any]":
        return iter((str(self), self.pid))


class HttpResponse(Dict[str, Any]):
    """What :meth:`MicroVM.send_http_request` returns: a response object shaped like
    ``requests.Response`` (``status_code``, ``headers``, ``text``, ``content``, ``json()``,
    ``ok``, ``raise_for_status()``) that is also the dict BandSox's remote client returned
    (``r["status_code"]``, ``r["headers"]``, ``r["body"]``, and ``r["body_base64"]`` when the
    body is not UTF-8)."""

    @property
    def status_code(self) -> int:
        """The guest's HTTP status code."""
        return int(self.get("status_code", 0))

    @property
    def headers(self) -> "httpx.Headers":
        """The answer's headers (case-insensitive keys)."""
        return httpx.Headers(self.get("headers") or {})

    @property
    def content(self) -> bytes:
        """The exact body bytes."""
        b64 = self.get("body_base64")
        if isinstance(b64, str):
            return base64.b64decode(b64)
        return str(self.get("body") or "").encode()

    @property
    def text(self) -> str:
        """The body as text (invalid UTF-8 replaced)."""
        return str(self.get("body") or "")

    @property
    def ok(self) -> bool:
        """Whether the status code is below 400."""
        return self.status_code < 400

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return _json.loads(self.content)

    def raise_for_status(self) -> "HttpResponse":
        """Raises :class:`bandsox.BandSoxError` (code ``http_error``) for a status of 400 or
        more; returns the response otherwise."""
        if not self.ok:
            from .errors import BandSoxError

            raise BandSoxError(
                f"the guest answered HTTP {self.status_code}", status_code=self.status_code,
                code="http_error",
            )
        return self

    def __repr__(self) -> str:
        return f"<HttpResponse [{self.status_code}]>"


class VmInfo(TypedDict, total=False):
    """A VM object (``GET /api/vms/{id}``, items of ``list_vms``)."""

    id: str
    name: str
    image: str
    image_digest: str
    #: ``creating``, ``running``, ``paused``, ``stopped``, ``failed``, ...
    status: str
    vcpu: int
    mem_mib: int
    disk_size_mib: int
    created_at: float
    updated_at: float
    pid: Optional[int]
    agent_ready: bool
    error: Optional[str]
    metadata: Dict[str, Any]
    #: Values whose names look secret read ``<redacted>``.
    env_vars: Dict[str, str]
    #: ``{"guest_ip", "host_ip", ...}``; ``None`` without networking.
    network_config: Optional[Dict[str, Any]]
    vsock_config: Optional[Dict[str, Any]]
    restored_from: Optional[str]
    expires_at: Optional[float]
    timeout_action: str
    vmm: str
    #: Why the VM last left the running state (``user``, ``timeout``, ``guest_poweroff``,
    #: ``vmm_exited``, ``host_restart``, ``boot_failed``); ``None`` while it runs.
    stop_reason: Optional[str]
    #: Unix seconds at which it did.
    stopped_at: Optional[float]


class SnapshotInfo(TypedDict, total=False):
    """A snapshot object (``list_snapshots``, ``get_snapshot``)."""

    id: str
    name: str
    #: Same as ``name`` (BandSox's field).
    snapshot_name: str
    source_vm_id: str
    image: str
    image_digest: str
    vcpu: int
    mem_mib: int
    disk_size_mib: int
    size_bytes: int
    created_at: float
    metadata: Dict[str, Any]


class ServerVersion(TypedDict, total=False):
    """``GET /api/version``."""

    version: str
    backend: str
    accelerator: str
    proxy_url: Optional[str]


class ApiKey(TypedDict, total=False):
    """An API key as listed (the secret is never shown again)."""

    id: str
    name: str
    created_at: float
    last_used_at: Optional[float]


class NewApiKey(TypedDict, total=False):
    """What :meth:`BandSox.create_api_key` returns: the only time ``key`` is shown."""

    key_id: str
    key: str
    name: str


class FileEntry(TypedDict, total=False):
    """A directory entry (``list_dir``) or the answer of ``stat``."""

    name: str
    path: str
    size: int
    is_dir: bool
    is_file: bool
    is_symlink: bool
    #: Permission bits as octal text, e.g. ``"755"``.
    mode: str
    mtime: float
    #: ``file``, ``directory``, ``symlink``, ... (BandSox's field).
    type: str


class FileInfo(TypedDict, total=False):
    """``get_file_info``: BandSox's ``{"size","mode","mtime"}``."""

    size: int
    mode: str
    mtime: float


class ReadResult(TypedDict, total=False):
    """``read``: ``type`` is ``text`` (``content``) or ``image`` (``data`` in base64)."""

    type: str
    content: str
    data: str
    mime_type: Optional[str]
    size: Optional[int]
    truncated: bool


class WriteResult(TypedDict):
    """``write``: how many bytes were written."""

    bytes_written: int


class ExecPythonResult(TypedDict, total=False):
    """``exec_python_capture``."""

    exit_code: int
    stdout: str
    stderr: str
    #: stdout followed by stderr.
    output: str
    success: bool
    error: Optional[str]


class CommandInfo(TypedDict, total=False):
    """State of a durable command. ``status`` is ``None`` while it runs, then
    ``{"exit_code", "signal", "timed_out", ...}``."""

    cmd_id: str
    pid: Optional[int]
    command: str
    running: bool
    status: Optional[Dict[str, Any]]
    stdout_end: int
    stderr_end: int


class CommandLogs(TypedDict, total=False):
    """Output of a durable command from byte offsets (pass ``stdout_offset``/``stderr_offset``
    back to read on)."""

    stdout: str
    stderr: str
    stdout_offset: int
    stderr_offset: int
    info: CommandInfo
