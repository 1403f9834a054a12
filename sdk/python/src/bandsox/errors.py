"""Exceptions raised by the bandsox client.

The server answers errors as RFC 9457 ``application/problem+json`` with a stable ``code`` and a
human ``detail``; :func:`error_from_problem` maps them onto the classes below. Several classes
also derive from the built-in exception BandSox's own client raised for the same situation
(``FileNotFoundError`` for 404s, ``TimeoutError``, ``ConnectionError``, ``ValueError``), so code
written against BandSox keeps catching them.
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "BandSoxError",
    "NotFoundError",
    "VmNotFoundError",
    "ImageNotFoundError",
    "SnapshotNotFoundError",
    "ConflictError",
    "AuthenticationError",
    "InvalidInputError",
    "TimeoutError",
    "BandSoxTimeoutError",
    "ServerUnavailableError",
    "AgentUnavailableError",
    "RateLimitedError",
    "UnsupportedError",
    "error_from_problem",
]


class BandSoxError(Exception):
    """Base class of every error this client raises.

    Attributes: ``status_code`` (HTTP status, ``None`` when no answer came), ``code`` (the
    server's stable problem code, or a client-side one such as ``client_timeout``), ``detail``
    (human text), ``hint`` (optional advice from the server) and ``problem`` (the whole body).
    """

    def __init__(
        self,
        detail: str,
        *,
        status_code: Optional[int] = None,
        code: Optional[str] = None,
        hint: Optional[str] = None,
        problem: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code
        self.code = code
        self.hint = hint
        self.problem: Dict[str, Any] = dict(problem or {})

    def __str__(self) -> str:
        parts = [self.detail]
        if self.code:
            parts.append(f"[{self.code}" + (f", HTTP {self.status_code}]" if self.status_code else "]"))
        if self.hint:
            parts.append(f"(hint: {self.hint})")
        return " ".join(parts)


class NotFoundError(BandSoxError, FileNotFoundError):
    """Something does not exist (HTTP 404, or a path missing inside the guest)."""


class VmNotFoundError(NotFoundError):
    """No VM with that id (``vm_not_found``)."""


class ImageNotFoundError(NotFoundError):
    """No such image (``image_not_found``)."""


class SnapshotNotFoundError(NotFoundError):
    """No snapshot with that id (``not_found`` on a snapshot route)."""


class ConflictError(BandSoxError):
    """The VM is in the wrong state for the operation (HTTP 409, ``conflict``)."""


class AuthenticationError(BandSoxError, PermissionError):
    """Missing or wrong credentials (HTTP 401) or a refused request (HTTP 403)."""


class InvalidInputError(BandSoxError, ValueError):
    """The request was rejected as invalid (HTTP 400/415/422, ``invalid_input``/``invalid_body``)."""


class TimeoutError(BandSoxError, builtins.TimeoutError):  # noqa: A001 - deliberate, like BandSox
    """A timeout: the command (``exec_timeout``), the boot (``boot_timeout``), or this client's
    own request timeout (``client_timeout``). Also a built-in ``TimeoutError``."""


BandSoxTimeoutError = TimeoutError


class ServerUnavailableError(BandSoxError, ConnectionError):
    """The server could not be reached (connection refused, reset, DNS failure)."""


class AgentUnavailableError(BandSoxError):
    """The guest agent of the VM does not answer (HTTP 502, ``agent_unavailable``)."""


class RateLimitedError(BandSoxError):
    """Too many attempts (HTTP 429, ``rate_limited``)."""


class UnsupportedError(BandSoxError, NotImplementedError):
    """The operation is not supported (yet) by this client or server."""


_BY_CODE: Dict[str, Type[BandSoxError]] = {
    "vm_not_found": VmNotFoundError,
    "image_not_found": ImageNotFoundError,
    "not_found": NotFoundError,
    "route_not_found": NotFoundError,
    "guest_not_found": NotFoundError,
    "command_not_found": NotFoundError,
    "edit_no_match": InvalidInputError,
    "edit_multiple_matches": InvalidInputError,
    "unsupported": UnsupportedError,
    "conflict": ConflictError,
    "image_in_use": ConflictError,
    "invalid_input": InvalidInputError,
    "build_failed": InvalidInputError,
    "invalid_body": InvalidInputError,
    "exec_timeout": TimeoutError,
    "boot_timeout": TimeoutError,
    "unauthorized": AuthenticationError,
    "forbidden_host": AuthenticationError,
    "cross_origin": AuthenticationError,
    "agent_unavailable": AgentUnavailableError,
    "rate_limited": RateLimitedError,
}

_BY_STATUS: Dict[int, Type[BandSoxError]] = {
    400: InvalidInputError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    415: InvalidInputError,
    422: InvalidInputError,
    429: RateLimitedError,
    504: TimeoutError,
}


def error_from_problem(
    status_code: int, body: Any, *, snapshot_route: bool = False
) -> BandSoxError:
    """Builds the exception for an error answer. ``body`` is the decoded JSON (or text)."""
    problem: Dict[str, Any] = body if isinstance(body, dict) else {}
    code = problem.get("code") if isinstance(problem.get("code"), str) else None
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        if isinstance(body, str) and body.strip():
            detail = body.strip()[:500]
        else:
            detail = f"HTTP {status_code}"
    hint = problem.get("hint") if isinstance(problem.get("hint"), str) else None
    cls: Type[BandSoxError] = BandSoxError
    if code is not None and code in _BY_CODE:
        cls = _BY_CODE[code]
    elif status_code in _BY_STATUS:
        cls = _BY_STATUS[status_code]
    if cls is NotFoundError and snapshot_route and code == "not_found":
        cls = SnapshotNotFoundError
    return cls(detail, status_code=status_code, code=code, hint=hint, problem=problem)
