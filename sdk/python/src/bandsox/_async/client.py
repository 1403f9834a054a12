"""The bandsox client.

Written once, as async code, in ``bandsox/_async/client.py``; ``bandsox/_sync/client.py`` is
generated from it by ``tools/unasync.py`` (a test checks it is up to date). Edit the async file,
then run ``python tools/unasync.py``.
"""

from __future__ import annotations

import base64
import fnmatch
import json as _json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union
from urllib.parse import quote

import httpx

from .. import errors
from .._backends import async_sleep
from .._config import resolve
from .._types import ExecResult, VmPage

__all__ = ["AsyncBandSox", "AsyncMicroVM"]

OutputCallback = Callable[[str], Any]
JsonDict = Dict[str, Any]
StrPath = Union[str, "os.PathLike[str]"]

#: Extra seconds the client waits beyond a command's own timeout.
_EXEC_MARGIN_S = 30.0
_SESSIONS_UNSUPPORTED = (
    "{what} is not supported yet: it needs the exec-stream/terminal WebSocket, which the "
    "server does not serve yet; use exec_command for now"
)


def _drop_none(d: Mapping[str, Any]) -> JsonDict:
    return {k: v for k, v in d.items() if v is not None}


def _vm_id(vm: Union[str, "AsyncMicroVM"]) -> str:
    return vm if isinstance(vm, str) else vm.vm_id


def _q(segment: str) -> str:
    """One URL path segment (ids and names never add path levels)."""
    return quote(segment, safe="")


class AsyncBandSox:
    """Client of a ``bandsox serve`` server.

    ``AsyncBandSox()`` talks to ``$BANDSOX_URL`` (default ``http://127.0.0.1:8000``) with the API
    key from ``$BANDSOX_API_KEY`` or ``~/.bandsox/credentials``; ``AsyncBandSox(url,
    headers={...})`` to any server. ``timeout`` (seconds) bounds every request; operations that
    boot a VM wait at least ``boot_timeout``, commands their own timeout plus 30 s.
    """

    def __init__(
        self,
        server_url: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: float = 60.0,
        *,
        api_key: Optional[str] = None,
        boot_timeout: float = 180.0,
        storage_dir: Optional[str] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        # BandSox's first positional parameter is a storage directory; a path there (not a URL)
        # means "the local installation", which is the local server here.
        if server_url is not None and not server_url.startswith(("http://", "https://")):
            storage_dir, server_url = server_url, None
        self.storage_dir = storage_dir
        self.server_url, self.headers = resolve(server_url, headers, api_key)
        self.timeout = float(timeout)
        self.boot_timeout = float(boot_timeout)
        self._client = httpx.AsyncClient(
            base_url=self.server_url,
            headers=self.headers,
            timeout=self.timeout,
            transport=transport,
        )

    # -- plumbing -----------------------------------------------------------------------------

    async def __aenter__(self) -> "AsyncBandSox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.server_url!r})"

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        snapshot_route: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        t = self.timeout if timeout is None else max(float(timeout), self.timeout)
        try:
            resp = await self._client.request(
                method,
                path,
                json=json,
                params=_drop_none(params or {}),
                timeout=httpx.Timeout(t, connect=min(t, 10.0)),
                **kwargs,
            )
        except httpx.TimeoutException as e:
            raise errors.TimeoutError(
                f"no answer from {self.server_url} within {t:g} s ({method} {path})",
                code="client_timeout",
            ) from e
        except httpx.TransportError as e:
            raise errors.ServerUnavailableError(
                f"cannot reach the bandsox server at {self.server_url}: {e}",
                code="server_unavailable",
                hint="is `bandsox serve` running? (BANDSOX_URL sets the address)",
            ) from e
        if resp.status_code >= 400:
            await resp.aread()
            try:
                body: Any = resp.json()
            except ValueError:
                body = resp.text
            raise errors.error_from_problem(resp.status_code, body, snapshot_route=snapshot_route)
        return resp

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = await self._send(method, path, **kwargs)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise errors.BandSoxError(
                f"the server answered {method} {path} with something that is not JSON",
                status_code=resp.status_code,
                code="bad_response",
            ) from e

    def _vm(self, vm_id: str, info: Optional[JsonDict] = None) -> "AsyncMicroVM":
        return AsyncMicroVM(self, vm_id, info)

    # -- server -------------------------------------------------------------------------------

    async def version(self) -> JsonDict:
        """``{"version", "backend", "accelerator"}`` of the server."""
        return await self._json("GET", "/api/version")

    # -- VMs ----------------------------------------------------------------------------------

    async def create_vm(
        self,
        docker_image: Optional[str] = None,
        name: Optional[str] = None,
        vcpu: int = 1,
        mem_mib: int = 128,
        kernel_path: Optional[str] = None,
        enable_networking: bool = True,
        enable_vsock: bool = True,
        force_rebuild: bool = False,
        disk_size_mib: int = 4096,
        env_vars: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        mcp: Optional[Mapping[str, Any]] = None,
        *,
        image: Optional[str] = None,
        timeout_s: int = 0,
        timeout_action: Optional[str] = None,
    ) -> "AsyncMicroVM":
        """Creates a VM from an image and returns it once its agent answers.

        ``kernel_path`` and ``enable_vsock`` are accepted for BandSox compatibility and ignored
        (the server chooses). ``timeout_s``/``timeout_action`` (``stop``, ``pause``, ``delete``)
        schedule an action ``timeout_s`` seconds from now (0 = never).
        """
        img = image if image is not None else docker_image
        if not img:
            raise errors.InvalidInputError("create_vm needs an image", code="invalid_input")
        if mcp:
            raise errors.UnsupportedError(
                "MCP server injection (mcp=...) is not supported", code="unsupported"
            )
        body = _drop_none(
            {
                "image": img,
                "name": name,
                "vcpu": vcpu,
                "mem_mib": mem_mib,
                "enable_networking": enable_networking,
                "force_rebuild": force_rebuild,
                "disk_size_mib": disk_size_mib,
                "env_vars": dict(env_vars) if env_vars is not None else None,
                "metadata": dict(metadata) if metadata is not None else None,
                "timeout_s": timeout_s,
                "timeout_action": timeout_action,
            }
        )
        out = await self._json("POST", "/api/vms", json=body, timeout=self.boot_timeout)
        return self._vm(out["id"])

    async def create_vm_from_dockerfile(
        self, dockerfile_path: str, tag: Optional[str] = None, **kwargs: Any
    ) -> "AsyncMicroVM":
        """Not supported yet: the server cannot build Dockerfiles. Build and push the image
        elsewhere, then ``bandsox image pull`` it and use :meth:`create_vm`."""
        raise errors.UnsupportedError(
            "create_vm_from_dockerfile is not supported yet: the bandsox server cannot build "
            "Dockerfiles; build the image elsewhere, `bandsox image pull`/`import` it and call "
            "create_vm",
            code="unsupported",
        )

    async def list_vms(
        self,
        limit: Optional[int] = None,
        metadata_equals: Optional[Mapping[str, Any]] = None,
        *,
        status: Optional[str] = None,
        name: Optional[str] = None,
        offset: Optional[int] = None,
    ) -> List[JsonDict]:
        """VM objects, newest first. ``metadata_equals`` keeps VMs whose metadata has all these
        key/value pairs; ``status`` an exact state; ``name`` a substring of the name."""
        return (
            await self.list_vms_page(
                limit=limit,
                metadata_equals=metadata_equals,
                status=status,
                name=name,
                offset=offset,
            )
        ).items

    async def list_vms_page(
        self,
        limit: Optional[int] = None,
        metadata_equals: Optional[Mapping[str, Any]] = None,
        *,
        status: Optional[str] = None,
        name: Optional[str] = None,
        offset: Optional[int] = None,
    ) -> VmPage:
        """Like :meth:`list_vms`, plus ``total``: how many VMs match before paging."""
        params = {
            "limit": limit,
            "offset": offset,
            "status": status,
            "name": name,
            "metadata_equals": _json.dumps(dict(metadata_equals))
            if metadata_equals is not None
            else None,
        }
        resp = await self._send("GET", "/api/vms", params=params)
        items = resp.json()
        try:
            total = int(resp.headers.get("x-total-count", len(items)))
        except ValueError:
            total = len(items)
        return VmPage(items=items, total=total, offset=offset or 0, limit=limit)

    async def get_vm_info(self, vm_id: str) -> JsonDict:
        """The VM object (raises :class:`VmNotFoundError`)."""
        return await self._json("GET", f"/api/vms/{_q(vm_id)}")

    async def get_vm(self, vm_id: str) -> "AsyncMicroVM":
        """The VM as an object with methods (raises :class:`VmNotFoundError`)."""
        info = await self.get_vm_info(vm_id)
        return self._vm(info.get("id", vm_id), info)

    async def delete_vm(self, vm_id: Union[str, "AsyncMicroVM"]) -> None:
        """Stops the VM and removes it with its disk."""
        await self._json("DELETE", f"/api/vms/{_q(_vm_id(vm_id))}", timeout=60.0)

    async def rename_vm(self, vm_id: Union[str, "AsyncMicroVM"], new_name: str) -> str:
        """Renames a VM; returns the new name."""
        out = await self._json("PUT", f"/api/vms/{_q(_vm_id(vm_id))}/name", json={"name": new_name})
        return out.get("name", new_name)

    async def update_vm_metadata(
        self, vm_id: Union[str, "AsyncMicroVM"], metadata: Mapping[str, Any]
    ) -> JsonDict:
        """Replaces the VM's metadata; returns the updated VM object."""
        return await self._json(
            "PUT", f"/api/vms/{_q(_vm_id(vm_id))}/metadata", json={"metadata": dict(metadata)}
        )

    # -- snapshots ----------------------------------------------------------------------------

    async def snapshot_vm(
        self,
        vm: Union[str, "AsyncMicroVM"],
        snapshot_name: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        name: Optional[str] = None,
    ) -> str:
        """Snapshots a running or paused VM; returns the snapshot id (what restore takes)."""
        vm_id = _vm_id(vm)
        label = name or snapshot_name or f"{vm_id}-snapshot"
        out = await self._json(
            "POST",
            f"/api/vms/{_q(vm_id)}/snapshot",
            json=_drop_none(
                {"name": label, "metadata": dict(metadata) if metadata is not None else None}
            ),
            timeout=self.boot_timeout,
        )
        return out["snapshot_id"]

    async def restore_vm(
        self,
        snapshot_id: str,
        name: Optional[str] = None,
        enable_networking: bool = True,
        detach: bool = True,
        env_vars: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> "AsyncMicroVM":
        """Starts a new VM from a snapshot. ``detach`` is accepted for BandSox compatibility
        (server VMs are always detached)."""
        out = await self._json(
            "POST",
            f"/api/snapshots/{_q(snapshot_id)}/restore",
            json=_drop_none(
                {
                    "name": name,
                    "enable_networking": enable_networking,
                    "env_vars": dict(env_vars) if env_vars is not None else None,
                    "metadata": dict(metadata) if metadata is not None else None,
                }
            ),
            timeout=self.boot_timeout,
            snapshot_route=True,
        )
        return self._vm(out["id"])

    async def list_snapshots(self) -> List[JsonDict]:
        """Snapshot objects (``id``, ``name``/``snapshot_name``, ``source_vm_id``, ...)."""
        return await self._json("GET", "/api/snapshots")

    async def get_snapshot(self, snapshot_id: str) -> JsonDict:
        """One snapshot object (raises :class:`SnapshotNotFoundError`)."""
        return await self._json("GET", f"/api/snapshots/{_q(snapshot_id)}", snapshot_route=True)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._json("DELETE", f"/api/snapshots/{_q(snapshot_id)}", snapshot_route=True)

    async def rename_snapshot(self, snapshot_id: str, new_name: str) -> str:
        """Renames a snapshot (its id does not change); returns the new name."""
        out = await self._json(
            "PUT", f"/api/snapshots/{_q(snapshot_id)}/name", json={"name": new_name},
            snapshot_route=True,
        )
        return out.get("name", new_name)

    async def update_snapshot_metadata(
        self, snapshot_id: str, metadata: Mapping[str, Any]
    ) -> JsonDict:
        """Replaces the snapshot's metadata; returns the updated snapshot object."""
        return await self._json(
            "PUT",
            f"/api/snapshots/{_q(snapshot_id)}/metadata",
            json={"metadata": dict(metadata)},
            snapshot_route=True,
        )


class AsyncMicroVM:
    """One VM on the server. ``info`` is the VM object as last fetched (``refresh()`` updates
    it); methods always act on the server."""

    def __init__(
        self, manager: AsyncBandSox, vm_id: str, info: Optional[JsonDict] = None
    ) -> None:
        self.manager = manager
        self.vm_id = vm_id
        self._info: JsonDict = dict(info) if info else {"id": vm_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vm_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncMicroVM) and other.vm_id == self.vm_id

    def __hash__(self) -> int:
        return hash(self.vm_id)

    @property
    def info(self) -> JsonDict:
        """The VM object as last fetched (see :meth:`refresh`)."""
        return self._info

    @property
    def name(self) -> Optional[str]:
        return self._info.get("name")

    @property
    def status(self) -> Optional[str]:
        """Status as last fetched; call :meth:`refresh` for the current one."""
        return self._info.get("status")

    @property
    def env_vars(self) -> Dict[str, str]:
        return self._info.get("env_vars") or {}

    def _path(self, suffix: str = "") -> str:
        return f"/api/vms/{_q(self.vm_id)}{suffix}"

    async def refresh(self) -> JsonDict:
        """Fetches the VM object and returns it."""
        self._info = await self.manager.get_vm_info(self.vm_id)
        return self._info

    async def get_info(self) -> JsonDict:
        """Same as :meth:`refresh` (BandSox's name)."""
        return await self.refresh()

    # -- lifecycle ------------------------------------------------------------------------------

    async def _action(self, action: str, timeout: Optional[float] = None) -> None:
        await self.manager._json("POST", self._path(f"/{action}"), timeout=timeout)

    async def pause(self) -> None:
        await self._action("pause")

    async def resume(self) -> None:
        await self._action("resume")

    async def stop(self) -> None:
        """Powers the VM off (its disk is kept; :meth:`start` boots it again)."""
        await self._action("stop", timeout=60.0)

    async def start(self) -> None:
        """Boots a stopped or failed VM from its disk (no-op when running)."""
        await self._action("start", timeout=self.manager.boot_timeout)

    async def restart(self) -> None:
        await self._action("restart", timeout=self.manager.boot_timeout)

    async def delete(self) -> None:
        await self.manager.delete_vm(self.vm_id)

    async def rename(self, new_name: str) -> str:
        name = await self.manager.rename_vm(self.vm_id, new_name)
        self._info["name"] = name
        return name

    async def update_metadata(self, metadata: Mapping[str, Any]) -> JsonDict:
        self._info = await self.manager.update_vm_metadata(self.vm_id, metadata)
        return self._info

    async def snapshot(
        self, snapshot_name: Optional[str] = None, metadata: Optional[Mapping[str, Any]] = None
    ) -> str:
        """Snapshots this VM; returns the snapshot id."""
        return await self.manager.snapshot_vm(self.vm_id, snapshot_name, metadata)

    async def extend_timeout(self, seconds: int) -> JsonDict:
        """Pushes the timeout ``seconds`` further; returns the VM object (see ``expires_at``)."""
        self._info = await self.manager._json(
            "POST", self._path("/extend"), json={"seconds": seconds}
        )
        return self._info

    async def set_timeout(self, timeout_s: int, action: Optional[str] = None) -> JsonDict:
        """Sets the timeout to ``timeout_s`` from now (0 clears it) and optionally its action
        (``stop``, ``pause``, ``delete``); returns the VM object."""
        self._info = await self.manager._json(
            "POST", self._path("/timeout"), json=_drop_none({"timeout_s": timeout_s, "action": action})
        )
        return self._info

    async def wait_for_agent(self, timeout: float = 30) -> bool:
        """Waits until the guest agent is ready; raises :class:`TimeoutError` otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            info = await self.refresh()
            if info.get("agent_ready") or info.get("status") == "running":
                return True
            if info.get("status") == "failed":
                raise errors.BandSoxError(
                    f"VM {self.vm_id} failed: {info.get('error') or 'unknown error'}",
                    code="vm_failed",
                )
            if time.monotonic() >= deadline:
                raise errors.TimeoutError(
                    f"the agent of VM {self.vm_id} was not ready within {timeout:g} s "
                    f"(status {info.get('status')})",
                    code="client_timeout",
                )
            await async_sleep(0.2)

    def get_guest_ip(self) -> Optional[str]:
        """The guest's IP address; ``None`` while the server gives VMs no network."""
        net = self._info.get("network_config")
        if isinstance(net, dict):
            ip = net.get("guest_ip")
            return ip if isinstance(ip, str) else None
        return None

    # -- commands -------------------------------------------------------------------------------

    async def exec_command(
        self,
        command: str,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        timeout: int = 30,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> ExecResult:
        """Runs a shell command line and waits for it.

        Returns an :class:`ExecResult`: the exit code as an ``int`` (like BandSox; 128+n when
        killed by signal n) with ``.stdout``/``.stderr``. ``on_stdout``/``on_stderr`` are
        called with the output once it is there (at the end of the command: the server does
        not stream command output over HTTP yet). Raises :class:`TimeoutError` (code
        ``exec_timeout``) when the command runs longer than ``timeout`` seconds.
        """
        out = await self.manager._json(
            "POST",
            self._path("/exec"),
            json=_drop_none(
                {
                    "command": command,
                    "timeout": timeout,
                    "env": dict(env) if env is not None else None,
                    "cwd": cwd,
                }
            ),
            timeout=float(timeout) + _EXEC_MARGIN_S,
        )
        result = ExecResult(
            int(out.get("exit_code", -1)),
            out.get("stdout") or "",
            out.get("stderr") or "",
            int(out.get("stdout_dropped_bytes") or 0),
            int(out.get("stderr_dropped_bytes") or 0),
        )
        if on_stdout is not None and result.stdout:
            on_stdout(result.stdout)
        if on_stderr is not None and result.stderr:
            on_stderr(result.stderr)
        return result

    async def exec_python_capture(
        self,
        code: str,
        cwd: str = "/tmp",
        packages: Optional[List[str]] = None,
        timeout: int = 60,
        cleanup_venv: bool = True,
    ) -> JsonDict:
        """Runs Python code in the guest; ``{"exit_code","stdout","stderr","output","success",
        "error"}``. Needs the server's ``exec-python`` endpoint."""
        return await self.manager._json(
            "POST",
            self._path("/exec-python"),
            json=_drop_none(
                {
                    "code": code,
                    "cwd": cwd,
                    "packages": list(packages) if packages is not None else None,
                    "timeout": timeout,
                    "cleanup_venv": cleanup_venv,
                }
            ),
            timeout=float(timeout) * (3 if packages else 1) + _EXEC_MARGIN_S,
        )

    async def exec_python(
        self,
        code: str,
        cwd: str = "/tmp",
        packages: Optional[List[str]] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        timeout: int = 60,
        cleanup_venv: bool = True,
    ) -> int:
        """Runs Python code in the guest; returns its exit code, output goes to the callbacks."""
        out = await self.exec_python_capture(code, cwd, packages, timeout, cleanup_venv)
        if on_stdout is not None and out.get("stdout"):
            on_stdout(out["stdout"])
        if on_stderr is not None and out.get("stderr"):
            on_stderr(out["stderr"])
        return int(out.get("exit_code", -1))

    async def start_session(
        self,
        command: str,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        on_exit: Optional[Callable[[int], Any]] = None,
    ) -> Any:
        raise errors.UnsupportedError(
            _SESSIONS_UNSUPPORTED.format(what="start_session"), code="unsupported"
        )

    async def start_pty_session(
        self,
        command: str,
        cols: int = 80,
        rows: int = 24,
        on_stdout: Optional[OutputCallback] = None,
        on_exit: Optional[Callable[[int], Any]] = None,
    ) -> str:
        raise errors.UnsupportedError(
            _SESSIONS_UNSUPPORTED.format(what="start_pty_session"), code="unsupported"
        )

    async def send_session_input(
        self, session_id: str, data: Union[str, bytes], encoding: Optional[str] = None
    ) -> None:
        raise errors.UnsupportedError(
            _SESSIONS_UNSUPPORTED.format(what="send_session_input"), code="unsupported"
        )

    async def resize_session(self, session_id: str, cols: int, rows: int) -> None:
        raise errors.UnsupportedError(
            _SESSIONS_UNSUPPORTED.format(what="resize_session"), code="unsupported"
        )

    async def kill_session(self, session_id: str) -> None:
        raise errors.UnsupportedError(
            _SESSIONS_UNSUPPORTED.format(what="kill_session"), code="unsupported"
        )

    # -- files (BandSox REST shapes; need the server's file endpoints) --------------------------

    async def get_file_contents(
        self,
        path: str,
        offset: int = 0,
        limit: int = 0,
        show_line_numbers: bool = False,
        *,
        max_bytes: Optional[int] = None,
    ) -> str:
        """The file's text (UTF-8, invalid bytes replaced). ``offset``/``limit`` select a window
        of lines (0 = all), ``show_line_numbers`` numbers them, ``max_bytes`` caps the size."""
        params: Dict[str, Any] = {"path": path, "max_bytes": max_bytes}
        if offset:
            params["offset"] = offset
        if limit:
            params["limit"] = limit
        if show_line_numbers:
            params["show_line_numbers"] = "true"
        out = await self.manager._json("GET", self._path("/read-file"), params=params)
        return out.get("content", "")

    async def list_dir(self, path: str = "/") -> List[JsonDict]:
        """Entries ``{"name","path","size","is_dir","is_file","mtime", ...}`` of a directory."""
        out = await self.manager._json("GET", self._path("/files"), params={"path": path})
        return out.get("files", [])

    async def get_file_info(self, path: str) -> JsonDict:
        """``{"size","mode","mtime"}`` of a guest path."""
        out = await self.manager._json("GET", self._path("/file-info"), params={"path": path})
        return out.get("info", out)

    async def download_file(
        self, remote_path: str, local_path: StrPath, timeout: float = 300
    ) -> None:
        """Copies a guest file to ``local_path`` (streamed; written atomically)."""
        local = Path(local_path)
        tmp = local.with_name(f".{local.name}.part")
        t = max(float(timeout), self.manager.timeout)
        try:
            async with self.manager._client.stream(
                "GET",
                self._path("/download"),
                params={"path": remote_path},
                timeout=httpx.Timeout(t, connect=min(t, 10.0)),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    try:
                        body: Any = resp.json()
                    except ValueError:
                        body = resp.text
                    raise errors.error_from_problem(resp.status_code, body)
                with open(tmp, "wb") as f:
                    async for chunk in resp.aiter_bytes():
                        f.write(chunk)
        except httpx.TimeoutException as e:
            tmp.unlink(missing_ok=True)
            raise errors.TimeoutError(
                f"download of {remote_path} did not finish within {t:g} s", code="client_timeout"
            ) from e
        except httpx.TransportError as e:
            tmp.unlink(missing_ok=True)
            raise errors.ServerUnavailableError(
                f"download of {remote_path} failed: {e}", code="server_unavailable"
            ) from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, local)

    async def upload_file(
        self,
        local_path: StrPath,
        remote_path: str,
        timeout: Optional[float] = None,
    ) -> None:
        """Copies a local file into the guest (multipart ``/upload``)."""
        size = os.path.getsize(local_path)
        t = timeout if timeout is not None else 60.0 + 30.0 * size / (1 << 20)
        with open(local_path, "rb") as f:
            await self.manager._json(
                "POST",
                self._path("/upload"),
                data={"remote_path": remote_path},
                files={"file": (os.path.basename(str(local_path)), f, "application/octet-stream")},
                timeout=t,
            )

    async def upload_folder(
        self,
        local_path: StrPath,
        remote_path: str,
        pattern: Optional[str] = None,
        skip_pattern: Optional[List[str]] = None,
    ) -> None:
        """Uploads a directory tree. ``pattern`` keeps matching file names (glob),
        ``skip_pattern`` drops files and directories whose name matches any glob."""
        root = Path(local_path)
        skip = list(skip_pattern or [])
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in skip)]
            rel = Path(dirpath).relative_to(root)
            target_dir = remote_path.rstrip("/") + ("" if str(rel) == "." else "/" + rel.as_posix())
            res = await self.exec_command(f"mkdir -p {shlex.quote(target_dir or '/')}")
            if res != 0:
                raise errors.BandSoxError(
                    f"mkdir -p {target_dir} failed: {res.stderr.strip()}", code="guest_error"
                )
            for fn in filenames:
                if pattern and not fnmatch.fnmatch(fn, pattern):
                    continue
                if any(fnmatch.fnmatch(fn, p) for p in skip):
                    continue
                await self.upload_file(Path(dirpath) / fn, f"{target_dir}/{fn}")

    async def _write(
        self, remote_path: str, content: str, encoding: str, append: bool,
        timeout: Optional[float],
    ) -> None:
        await self.manager._json(
            "POST",
            self._path("/append-file" if append else "/write-file"),
            json={"path": remote_path, "content": content, "encoding": encoding, "append": append},
            timeout=timeout if timeout is not None else 60.0 + 30.0 * len(content) / (1 << 20),
        )

    async def write_text(
        self, remote_path: str, content: str, timeout: Optional[float] = None, append: bool = False
    ) -> None:
        await self._write(remote_path, content, "utf-8", append, timeout)

    async def append_text(
        self, remote_path: str, content: str, timeout: Optional[float] = None
    ) -> None:
        await self._write(remote_path, content, "utf-8", True, timeout)

    async def write_bytes(
        self, remote_path: str, content: bytes, timeout: Optional[float] = None,
        append: bool = False,
    ) -> None:
        await self._write(
            remote_path, base64.b64encode(content).decode("ascii"), "base64", append, timeout
        )

    async def append_file(self, local_path: StrPath, remote_path: str) -> None:
        """Appends a local file's bytes to a guest file."""
        with open(local_path, "rb") as f:
            data = f.read()
        await self.write_bytes(remote_path, data, append=True)

    # -- network --------------------------------------------------------------------------------

    async def send_http_request(
        self,
        port: int,
        path: str = "/",
        method: str = "GET",
        headers: Optional[Mapping[str, str]] = None,
        data: Optional[str] = None,
        json: Optional[Any] = None,
        timeout: int = 30,
    ) -> JsonDict:
        """Has the server send an HTTP request to the guest's ``port``; returns
        ``{"status_code","headers","body"}``. Needs guest networking and the ``/http`` endpoint."""
        return await self.manager._json(
            "POST",
            self._path("/http"),
            json=_drop_none(
                {
                    "port": port,
                    "path": path,
                    "method": method,
                    "headers": dict(headers) if headers is not None else None,
                    "body": data,
                    "json_body": json,
                    "timeout": timeout,
                }
            ),
            timeout=float(timeout) + _EXEC_MARGIN_S,
        )
