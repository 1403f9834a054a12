"""The few primitives that differ between the async client and its generated sync twin:
sleeping, running a function in the background, and a WebSocket connection.

``tools/unasync.py`` renames ``async_*``/``Async*`` to ``sync_*``/``Sync*``, so both halves
must keep the same names and signatures.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

from websockets.asyncio.client import ClientConnection as _AsyncConn
from websockets.asyncio.client import connect as _async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection as _SyncConn
from websockets.sync.client import connect as _sync_connect

from . import errors

Frame = Union[str, bytes]


async def async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def sync_sleep(seconds: float) -> None:
    time.sleep(seconds)


# -- background work ------------------------------------------------------------------------


class AsyncTask:
    """A coroutine function running as an asyncio task."""

    def __init__(self, fn: Callable[[], Awaitable[Any]]) -> None:
        self._task = asyncio.ensure_future(fn())

    async def join(self, timeout: Optional[float] = None) -> None:
        """Waits for the task to end (at most ``timeout`` seconds); its errors are not raised."""
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except BaseException:  # noqa: BLE001 - join only waits
            pass

    def done(self) -> bool:
        return self._task.done()


class SyncTask:
    """A function running in a daemon thread."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._thread = threading.Thread(target=fn, daemon=True, name="bandsox-session")
        self._thread.start()

    def join(self, timeout: Optional[float] = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def done(self) -> bool:
        return not self._thread.is_alive()


# -- WebSockets -----------------------------------------------------------------------------


def _ws_url(base_url: str, path: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://"):] + path
    return "ws://" + base_url[len("http://"):] + path


def _connect_args(
    token: Optional[str], protocols: Optional[List[str]], timeout: float
) -> Dict[str, Any]:
    """Keyword arguments of both ``websockets`` clients' ``connect``: the credential as a
    Bearer header and as a ``bandsox.auth.<base64url>`` subprotocol (what browsers use; the
    server accepts either), no frame size limit, bounded opening and closing."""
    headers: Dict[str, str] = {}
    protos = list(protocols or [])
    if token:
        headers["Authorization"] = f"Bearer {token}"
        b64 = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        protos.append(f"bandsox.auth.{b64}")
    return {"additional_headers": headers, "subprotocols": protos or None,
            "open_timeout": timeout, "close_timeout": 5, "max_size": None}


def _handshake_error(e: Exception, url: str) -> errors.BandSoxError:
    if isinstance(e, InvalidStatus):
        resp = e.response
        body: Any = None
        try:
            import json

            body = json.loads(resp.body or b"")
        except ValueError:
            body = (resp.body or b"").decode("utf-8", "replace")
        return errors.error_from_problem(resp.status_code, body)
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return errors.TimeoutError(
            f"the WebSocket {url} did not open in time", code="client_timeout"
        )
    return errors.ServerUnavailableError(
        f"cannot open the WebSocket {url}: {e}", code="server_unavailable",
        hint="is `bandsox serve` running? (BANDSOX_URL sets the address)",
    )


def _closed_error(e: ConnectionClosed, what: str) -> errors.BandSoxError:
    rcvd = e.rcvd
    code = rcvd.code if rcvd is not None else None
    reason = rcvd.reason if rcvd is not None else ""
    if code == 4004:
        return errors.VmNotFoundError(reason or "VM not found", status_code=404, code="vm_not_found")
    detail = f"the WebSocket closed ({what})"
    if code is not None:
        detail += f": close code {code}" + (f", {reason}" if reason else "")
    else:
        detail += ": the connection dropped"
    return errors.ServerUnavailableError(detail, code="websocket_closed")


class AsyncWebSocket:
    """A client WebSocket (``websockets``' asyncio client) whose failures are BandSox errors:
    a drop raises :class:`ServerUnavailableError` (code ``websocket_closed``), a wait longer
    than ``timeout`` :class:`TimeoutError` (``client_timeout``)."""

    def __init__(self, conn: _AsyncConn) -> None:
        self._conn = conn

    @classmethod
    async def connect(
        cls, base_url: str, path: str, *, token: Optional[str] = None,
        protocols: Optional[List[str]] = None, timeout: float = 30.0,
    ) -> "AsyncWebSocket":
        url = _ws_url(base_url, path)
        try:
            conn = await _async_connect(url, **_connect_args(token, protocols, timeout))
        except (InvalidHandshake, OSError, asyncio.TimeoutError, TimeoutError) as e:
            raise _handshake_error(e, url) from e
        return cls(conn)

    @property
    def subprotocol(self) -> Optional[str]:
        return self._conn.subprotocol

    async def send(self, data: Frame) -> None:
        try:
            await self._conn.send(data)
        except ConnectionClosed as e:
            raise _closed_error(e, "while sending") from e

    async def recv(self, timeout: Optional[float] = None) -> Frame:
        try:
            return await asyncio.wait_for(self._conn.recv(), timeout)
        except ConnectionClosed as e:
            raise _closed_error(e, "while receiving") from e
        except (asyncio.TimeoutError, TimeoutError) as e:
            raise errors.TimeoutError(
                f"no message on the WebSocket within {timeout:g} s", code="client_timeout"
            ) from e

    async def close(self) -> None:
        try:
            await self._conn.close()
        except Exception:  # noqa: BLE001 - closing a dead socket is fine
            pass


class SyncWebSocket:
    """The same over ``websockets``' threaded client (``send`` may be called from one thread
    while another waits in ``recv``)."""

    def __init__(self, conn: _SyncConn) -> None:
        self._conn = conn

    @classmethod
    def connect(
        cls, base_url: str, path: str, *, token: Optional[str] = None,
        protocols: Optional[List[str]] = None, timeout: float = 30.0,
    ) -> "SyncWebSocket":
        url = _ws_url(base_url, path)
        try:
            conn = _sync_connect(url, **_connect_args(token, protocols, timeout))
        except (InvalidHandshake, OSError, TimeoutError) as e:
            raise _handshake_error(e, url) from e
        # Entering the context marks it as managed (websockets >= 17.1 warns otherwise); close()
        # below is the matching exit.
        conn.__enter__()
        return cls(conn)

    @property
    def subprotocol(self) -> Optional[str]:
        return self._conn.subprotocol

    def send(self, data: Frame) -> None:
        try:
            self._conn.send(data)
        except ConnectionClosed as e:
            raise _closed_error(e, "while sending") from e

    def recv(self, timeout: Optional[float] = None) -> Frame:
        try:
            return self._conn.recv(timeout)
        except ConnectionClosed as e:
            raise _closed_error(e, "while receiving") from e
        except TimeoutError as e:
            raise errors.TimeoutError(
                f"no message on the WebSocket within {timeout:g} s", code="client_timeout"
            ) from e

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001
            pass


__all__ = [
    "async_sleep", "sync_sleep", "AsyncTask", "SyncTask", "AsyncWebSocket", "SyncWebSocket",
]
