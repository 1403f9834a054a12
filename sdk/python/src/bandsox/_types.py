"""Result types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional


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
        return int(self)

    @property
    def output(self) -> str:
        """stdout followed by stderr."""
        return self.stdout + self.stderr

    @property
    def success(self) -> bool:
        return int(self) == 0

    def __getitem__(self, key: str) -> Any:
        if key in ("exit_code", "stdout", "stderr", "output", "success",
                   "stdout_dropped_bytes", "stderr_dropped_bytes"):
            return getattr(self, key)
        raise KeyError(key)

    def to_dict(self) -> Dict[str, Any]:
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

    items: List[Dict[str, Any]] = field(default_factory=list)
    total: int = 0
    offset: int = 0
    limit: Optional[int] = None

    def __iter__(self):  # type: ignore[no-untyped-def]
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
