"""The bandsox client.

Written once, as async code, in ``bandsox/_async/client.py``; ``bandsox/_sync/client.py`` is
generated from it by ``tools/unasync.py`` (a test checks it is up to date). Edit the async file,
then run ``python tools/unasync.py``.
"""

from __future__ import annotations

import base64
import codecs
import email.utils
import fnmatch
import json as _json
import os
import shlex
import stat as _stat
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import (
    Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Sequence, Union, cast,
)
from urllib.parse import quote

import httpx

from .. import _local, errors
from .._backends import AsyncTask, AsyncWebSocket, async_sleep
from .._config import DEFAULT_URL, resolve
from .._types import (
    ApiKey,
    CommandInfo,
    CommandLogs,
    ExecPythonResult,
    ExecResult,
    FileEntry,
    FileInfo,
    HttpResponse,
    NewApiKey,
    ReadResult,
    ServerVersion,
    SessionId,
    SnapshotInfo,
    VmInfo,
    VmPage,
    WriteResult,
)

__all__ = ["AsyncBandSox", "AsyncMicroVM", "AsyncCommand"]

OutputCallback = Callable[[str], Any]
JsonDict = Dict[str, Any]
StrPath = Union[str, "os.PathLike[str]"]


def _pack_context(root: Path, out: Any) -> None:
    """Writes the folder ``root`` to ``out`` as a tar: files, folders and symbolic links (as
    links, never followed), sorted, paths relative to ``root``. The server applies
    ``.dockerignore`` and refuses sources that leave the context."""
    if not root.is_dir():
        raise errors.InvalidInputError(
            f"build context {root} is not a folder", code="invalid_input"
        )
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            here = Path(dirpath)
            for entry in sorted(dirnames + filenames):
                full = here / entry
                st = full.lstat()
                if not (
                    _stat.S_ISREG(st.st_mode)
                    or _stat.S_ISDIR(st.st_mode)
                    or _stat.S_ISLNK(st.st_mode)
                ):
                    continue  # sockets, FIFOs, devices: not part of a build context
                rel = full.relative_to(root).as_posix()
                info = tar.gettarinfo(str(full), arcname=rel)
                if info.isreg():
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    out.flush()
    out.seek(0)

#: Extra seconds the client waits beyond a command's own timeout.
_EXEC_MARGIN_S = 30.0
#: How often followers of a durable command's output poll its logs (at first, and again after
#: output; they back off to 0.5 s while the command is quiet).
_POLL_S = 0.05
#: Shells the terminal WebSocket starts by itself (other commands are `exec`ed in it).
_SHELLS = ("/bin/sh", "sh", "/bin/bash", "bash", "/bin/ash", "ash")
#: Longest ``Retry-After`` the client waits out by itself (longer ones raise at once).
_MAX_RETRY_AFTER_S = 30.0
#: Vtrix's read(): text files up to 200 KB come whole, larger ones truncated.
_READ_MAX_BYTES = 200 * 1024


def _drop_none(d: Mapping[str, Any]) -> JsonDict:
    return {k: v for k, v in d.items() if v is not None}


def _vm_id(vm: Union[str, "AsyncMicroVM"]) -> str:
    return vm if isinstance(vm, str) else vm.vm_id


def _q(segment: str) -> str:
    """One URL path segment (ids and names never add path levels)."""
    return quote(segment, safe="")


def _shell_prefix(env: Optional[Mapping[str, str]], cwd: Optional[str]) -> str:
    """``cd``/``export`` lines that give a shell command line its environment and directory
    (for the exec-stream WebSocket, which takes only a command)."""
    parts = []
    for k, v in (env or {}).items():
        if not k.replace("_", "a").isalnum() or k[0].isdigit():
            raise errors.InvalidInputError(
                f"invalid environment variable name {k!r}", code="invalid_input"
            )
        parts.append(f"export {k}={shlex.quote(v)}")
    if cwd is not None:
        parts.append(f"cd {shlex.quote(cwd)} || exit 1")
    return "".join(p + "\n" for p in parts)


def _exit_code(info: Mapping[str, Any]) -> int:
    st = info.get("status") or {}
    if st.get("exit_code") is not None:
        return int(st["exit_code"])
    if st.get("signal") is not None:
        return 128 + int(st["signal"])
    return -1


def _decoders() -> "tuple[Any, Any]":
    return (codecs.getincrementaldecoder("utf-8")("replace"),
            codecs.getincrementaldecoder("utf-8")("replace"))


def _retry_delay(resp: httpx.Response, attempt: int) -> Optional[float]:
    """Seconds to wait before sending a request again after a 429 or 503 answer: the
    ``Retry-After`` header (seconds or an HTTP date), else 0.5 s doubled per attempt; ``None``
    for other answers and when the server asks for more than :data:`_MAX_RETRY_AFTER_S`."""
    if resp.status_code not in (429, 503):
        return None
    value = resp.headers.get("retry-after")
    if value is None:
        return 0.5 * 2.0 ** attempt
    try:
        delay = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.5 * 2.0 ** attempt
        delay = when.timestamp() - time.time()
    if delay > _MAX_RETRY_AFTER_S:
        return None
    return max(delay, 0.0)


def _default_server() -> "tuple[str, bool]":
    """Where ``BandSox()`` without a URL, storage root or ``$BANDSOX_URL`` goes: the server
    owning the default storage root (``$BANDSOX_STORAGE`` or ``/var/lib/bandsox``) if it runs,
    else a server answering at ``http://127.0.0.1:8000``, else a server started for the
    default storage root."""
    root = _local.default_storage()
    url = _local.read_server_file(root)
    if url:
        return url, True
    if _local._answers(DEFAULT_URL):
        return DEFAULT_URL, False
    return _local.ensure_server(root), True


class AsyncBandSox:
    """Client of a ``bandsox serve`` server.

    - ``AsyncBandSox(url, headers={...})`` (or ``server_url=``): that server (remote mode).
    - ``AsyncBandSox(storage_dir=DIR)`` (or a path as the first argument, as BandSox takes
      it): local mode, the server owning that storage root, found through
      ``DIR/server.json`` or started (``bandsox serve --storage DIR`` detached, in the
      background; the server and its VMs outlive the script, and the next script on ``DIR``
      reuses them). The constructor blocks until the server answers.
    - ``AsyncBandSox()``: ``$BANDSOX_URL`` if set; else the server of ``$BANDSOX_STORAGE``
      (default ``/var/lib/bandsox``) if one runs; else one at ``http://127.0.0.1:8000``; else
      local mode on that storage root.

    The API key comes from ``api_key``, else ``$BANDSOX_API_KEY`` or ``~/.bandsox/credentials``
    (an ``Authorization`` header wins). ``timeout`` (seconds) bounds every request; operations
    that boot a VM wait at least ``boot_timeout``, commands their own timeout plus 30 s.
    Answers 429 and 503 are retried up to ``retries`` times, after the server's
    ``Retry-After`` (at most 30 s) or an exponential backoff (0.5 s, 1 s, 2 s, ...).
    """

    def __init__(
        self,
        server_url: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: float = 60.0,
        *,
        api_key: Optional[str] = None,
        boot_timeout: float = 180.0,
        storage_dir: Optional[StrPath] = None,
        retries: int = 3,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        # BandSox's first positional parameter is a storage directory; a path there (not a URL)
        # means "the local installation": the server owning that root, started if need be.
        if server_url is not None and not str(server_url).startswith(("http://", "https://")):
            storage_dir, server_url = str(server_url), None
        #: Whether this client found or started the server of a storage root (local mode).
        self.local = False
        if server_url is None and storage_dir is not None:
            server_url, self.local = _local.ensure_server(storage_dir), True
        elif server_url is None and not os.environ.get("BANDSOX_URL"):
            server_url, self.local = _default_server()
        self.storage_dir = str(storage_dir) if storage_dir is not None else None
        self.server_url, self.headers = resolve(server_url, headers, api_key)
        self.timeout = float(timeout)
        self.retries = max(int(retries), 0)
        self.boot_timeout = float(boot_timeout)
        self._session_token: Optional[str] = None
        self._client = httpx.AsyncClient(
            base_url=self.server_url,
            headers=self.headers,
            timeout=self.timeout,
            transport=transport,
        )

    # -- plumbing -----------------------------------------------------------------------------

    async def __aenter__(self) -> "AsyncBandSox":
        """Entering ``async with`` (``with``) returns the client; leaving closes it."""
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Closes the client (:meth:`aclose`)."""
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
        # A body read from a file cannot be sent twice.
        replayable = not any(
            hasattr(v[1] if isinstance(v, tuple) else v, "read")
            for v in dict(kwargs.get("files") or {}).values()
        )
        attempt = 0
        while True:
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
            delay = _retry_delay(resp, attempt) if replayable and attempt < self.retries else None
            if delay is None:
                break
            attempt += 1
            await async_sleep(delay)
        await self._raise_for_problem(resp, snapshot_route=snapshot_route)
        return resp

    @staticmethod
    async def _raise_for_problem(resp: httpx.Response, snapshot_route: bool = False) -> None:
        """Raises the exception for an error answer (read whole, even when streamed)."""
        if resp.status_code < 400:
            return
        await resp.aread()
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text
        raise errors.error_from_problem(resp.status_code, body, snapshot_route=snapshot_route)

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

    async def _obj(self, method: str, path: str, **kwargs: Any) -> JsonDict:
        """A JSON object answer (``{}`` for an empty body)."""
        out = await self._json(method, path, **kwargs)
        if out is None:
            return {}
        if not isinstance(out, dict):
            raise errors.BandSoxError(
                f"the server answered {method} {path} with JSON that is not an object",
                code="bad_response",
            )
        return out

    async def _arr(self, method: str, path: str, **kwargs: Any) -> List[JsonDict]:
        """A JSON array answer."""
        out = await self._json(method, path, **kwargs)
        if not isinstance(out, list):
            raise errors.BandSoxError(
                f"the server answered {method} {path} with JSON that is not an array",
                code="bad_response",
            )
        return out

    async def _vm_obj(self, method: str, path: str, **kwargs: Any) -> VmInfo:
        return cast(VmInfo, await self._obj(method, path, **kwargs))

    async def _snap_obj(self, method: str, path: str, **kwargs: Any) -> SnapshotInfo:
        return cast(SnapshotInfo, await self._obj(method, path, **kwargs))

    def _vm(self, vm_id: str, info: Optional[Mapping[str, Any]] = None) -> "AsyncMicroVM":
        return AsyncMicroVM(self, vm_id, info)

    async def _created(self, out: Mapping[str, Any]) -> "AsyncMicroVM":
        """The VM a create/restore answer names, with its VM object fetched (so
        ``get_guest_ip()``, ``name`` and ``status`` are known at once)."""
        vm = self._vm(str(out["id"]))
        await vm.refresh()
        return vm

    def _token(self) -> Optional[str]:
        """The credential WebSockets carry: the Bearer value of the headers, else the session
        token of :meth:`login`."""
        for k, v in self.headers.items():
            if k.lower() == "authorization" and v.lower().startswith("bearer "):
                return v[7:].strip()
        return self._session_token

    async def _ws(
        self, path: str, protocols: Optional[List[str]] = None
    ) -> AsyncWebSocket:
        return await AsyncWebSocket.connect(
            self.server_url, path, token=self._token(), protocols=protocols,
            timeout=min(self.timeout, 30.0),
        )

    # -- authentication -------------------------------------------------------------------------

    async def login(self, password: str) -> str:
        """Logs in with the admin password; later requests carry the session cookie (and
        WebSockets the token). Returns the session token. Raises :class:`AuthenticationError`
        on a wrong password, :class:`RateLimitedError` after too many attempts."""
        out = await self._json("POST", "/api/auth/login", json={"password": password})
        token = out.get("token") if isinstance(out, dict) else None
        if not isinstance(token, str) or not token:
            raise errors.BandSoxError(
                "the server's login answer has no token", code="bad_response"
            )
        self._session_token = token
        return token

    async def logout(self) -> None:
        """Ends the session of :meth:`login` on the server and forgets its cookie."""
        await self._json("POST", "/api/auth/logout")
        self._session_token = None
        self._client.cookies.clear()

    async def auth_check(self) -> bool:
        """Whether this client's credentials are accepted."""
        out = await self._json("GET", "/api/auth/check")
        return bool(out.get("authenticated")) if isinstance(out, dict) else False

    async def list_api_keys(self) -> List[ApiKey]:
        """``[{"id","name","created_at","last_used_at"}]`` (secrets are never shown again)."""
        return cast(List[ApiKey], await self._arr("GET", "/api/auth/keys"))

    async def create_api_key(self, name: str) -> NewApiKey:
        """``{"key_id","key","name"}``: the only time the key itself is shown."""
        return cast(NewApiKey, await self._obj("POST", "/api/auth/keys", json={"name": name}))

    async def revoke_api_key(self, key_id: str) -> None:
        """Revokes an API key by its id (``bsx_k_...``); requests with it fail from then on."""
        await self._json("DELETE", f"/api/auth/keys/{_q(key_id)}")

    # -- server -------------------------------------------------------------------------------

    async def version(self) -> ServerVersion:
        """``{"version", "backend", "accelerator", "proxy_url"}`` of the server."""
        return cast(ServerVersion, await self._obj("GET", "/api/version"))

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
        template: Optional[bool] = None,
    ) -> "AsyncMicroVM":
        """Creates a VM from an image and returns it once its agent answers.

        ``template=False`` always cold boots and builds no template; the default follows the
        server (a matching template is restored, else one is built behind the cold boot).

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
                "template": template,
            }
        )
        out = await self._json("POST", "/api/vms", json=body, timeout=self.boot_timeout)
        return await self._created(out)

    async def create_vm_from_dockerfile(
        self,
        dockerfile_path: StrPath,
        tag: Optional[str] = None,
        name: Optional[str] = None,
        vcpu: int = 1,
        mem_mib: int = 128,
        disk_size_mib: int = 4096,
        env_vars: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        mcp: Optional[Mapping[str, Any]] = None,
        *,
        context: Optional[StrPath] = None,
        build_args: Optional[Mapping[str, str]] = None,
        force_rebuild: bool = False,
        timeout: Optional[float] = None,
    ) -> "AsyncMicroVM":
        """Builds an image from a Dockerfile on the server (in a VM; ``RUN`` steps run there),
        then creates a VM of it (``POST /api/vms/from-dockerfile``).

        ``dockerfile_path`` is a Dockerfile, or a folder holding one named ``Dockerfile``: then
        that folder is the build context, as with BandSox (``COPY``/``ADD`` read from it). A
        Dockerfile elsewhere gets the folder ``context`` as its context, or none (then
        ``COPY``/``ADD`` are refused with ``InvalidInputError``). The context is packed as a tar
        (files, folders and symbolic links; sockets and devices are left out) and the server
        applies its ``.dockerignore``; sources outside the context (``../``, links out of it)
        are refused. ``build_args`` fill ``ARG`` values. A failing step raises
        ``InvalidInputError`` with code ``build_failed`` and the step's output tail. ``tag``
        names the image (default ``bandsox-build-<id>``); the same Dockerfile, arguments and
        context under the same tag are reused unless ``force_rebuild``. ``timeout`` bounds the
        whole build (default 3 x ``boot_timeout`` plus 10 minutes).
        """
        if mcp:
            raise errors.UnsupportedError(
                "MCP server injection (mcp=...) is not supported", code="unsupported"
            )
        path = Path(dockerfile_path)
        if path.is_dir():
            if context is None:
                context = path
            path = path / "Dockerfile"
            if not path.is_file():
                raise errors.InvalidInputError(
                    f"{dockerfile_path} has no file named Dockerfile",
                    code="invalid_input",
                    hint="pass the Dockerfile's path, or a folder that holds one",
                )
        with open(path, "rb") as f:
            text = f.read()
        fields = _drop_none(
            {
                "tag": tag,
                "name": name,
                "vcpu": str(vcpu),
                "mem_mib": str(mem_mib),
                "disk_size_mib": str(disk_size_mib),
                "force_rebuild": "true" if force_rebuild else "false",
                "env_vars": _json.dumps(dict(env_vars)) if env_vars is not None else None,
                "metadata": _json.dumps(dict(metadata)) if metadata is not None else None,
                "build_args": _json.dumps(dict(build_args)) if build_args is not None else None,
            }
        )
        t = timeout if timeout is not None else 3 * self.boot_timeout + 600.0
        files: Dict[str, Any] = {"dockerfile": ("Dockerfile", text, "text/plain")}
        with tempfile.TemporaryFile() as tar:
            if context is not None:
                _pack_context(Path(context), tar)
                files["context"] = ("context.tar", tar, "application/x-tar")
            out = await self._json(
                "POST", "/api/vms/from-dockerfile", data=fields, files=files, timeout=t
            )
        return await self._created(out)

    async def list_vms(
        self,
        limit: Optional[int] = None,
        metadata_equals: Optional[Mapping[str, Any]] = None,
        *,
        status: Optional[str] = None,
        name: Optional[str] = None,
        offset: Optional[int] = None,
    ) -> List[VmInfo]:
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
        if not isinstance(items, list):
            raise errors.BandSoxError(
                "the server answered GET /api/vms with JSON that is not an array",
                code="bad_response",
            )
        return VmPage(items=cast(List[VmInfo], items), total=total, offset=offset or 0,
                      limit=limit)

    async def get_vm_info(self, vm_id: str) -> VmInfo:
        """The VM object (raises :class:`VmNotFoundError`)."""
        return cast(VmInfo, await self._obj("GET", f"/api/vms/{_q(vm_id)}"))

    async def get_vm(self, vm_id: str) -> "AsyncMicroVM":
        """The VM as an object with methods (raises :class:`VmNotFoundError`)."""
        info = await self.get_vm_info(vm_id)
        return self._vm(info.get("id", vm_id), info)

    async def delete_vm(self, vm_id: Union[str, "AsyncMicroVM"]) -> None:
        """Stops the VM and removes it with its disk."""
        await self._json("DELETE", f"/api/vms/{_q(_vm_id(vm_id))}", timeout=60.0)

    async def rename_vm(self, vm_id: Union[str, "AsyncMicroVM"], new_name: str) -> str:
        """Renames a VM; returns the new name."""
        out = await self._obj("PUT", f"/api/vms/{_q(_vm_id(vm_id))}/name", json={"name": new_name})
        return str(out.get("name", new_name))

    async def update_vm_metadata(
        self, vm_id: Union[str, "AsyncMicroVM"], metadata: Mapping[str, Any]
    ) -> VmInfo:
        """Replaces the VM's metadata; returns the updated VM object."""
        return await self._vm_obj(
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
        return str(out["snapshot_id"])

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
        return await self._created(out)

    async def list_templates(self) -> List[JsonDict]:
        """Template objects (``id``, ``image``, ``vcpu``, ``mem_mib``, ``current``, ...)."""
        templates: List[JsonDict] = await self._json("GET", "/api/templates")
        return templates

    async def build_template(
        self,
        image: str,
        vcpu: int = 1,
        mem_mib: int = 128,
        disk_size_mib: int = 4096,
        enable_networking: bool = True,
    ) -> JsonDict:
        """Builds (or returns the existing) template of an image and shape."""
        built: JsonDict = await self._json(
            "POST",
            "/api/templates",
            json={
                "image": image,
                "vcpu": vcpu,
                "mem_mib": mem_mib,
                "disk_size_mib": disk_size_mib,
                "enable_networking": enable_networking,
            },
            timeout=self.boot_timeout * 2 + 600,
        )
        return built

    async def delete_template(self, template_id: str) -> None:
        """Deletes a template (VMs created from it keep running)."""
        await self._json("DELETE", f"/api/templates/{_q(template_id)}")

    async def list_snapshots(self) -> List[SnapshotInfo]:
        """Snapshot objects (``id``, ``name``/``snapshot_name``, ``source_vm_id``, ...)."""
        return cast(List[SnapshotInfo], await self._arr("GET", "/api/snapshots"))

    async def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """One snapshot object (raises :class:`SnapshotNotFoundError`)."""
        return cast(SnapshotInfo, await self._obj(
            "GET", f"/api/snapshots/{_q(snapshot_id)}", snapshot_route=True))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Deletes a snapshot (VMs restored from it keep running; they never depend on it)."""
        await self._json("DELETE", f"/api/snapshots/{_q(snapshot_id)}", snapshot_route=True)

    async def rename_snapshot(self, snapshot_id: str, new_name: str) -> str:
        """Renames a snapshot (its id does not change); returns the new name."""
        out = await self._obj(
            "PUT", f"/api/snapshots/{_q(snapshot_id)}/name", json={"name": new_name},
            snapshot_route=True,
        )
        return str(out.get("name", new_name))

    async def update_snapshot_metadata(
        self, snapshot_id: str, metadata: Mapping[str, Any]
    ) -> SnapshotInfo:
        """Replaces the snapshot's metadata; returns the updated snapshot object."""
        return await self._snap_obj(
            "PUT",
            f"/api/snapshots/{_q(snapshot_id)}/metadata",
            json={"metadata": dict(metadata)},
            snapshot_route=True,
        )


class AsyncMicroVM:
    """One VM on the server. ``info`` is the VM object as last fetched (``refresh()`` updates
    it); methods always act on the server."""

    def __init__(
        self, manager: AsyncBandSox, vm_id: str, info: Optional[Mapping[str, Any]] = None
    ) -> None:
        self.manager = manager
        self.vm_id = vm_id
        self._info: VmInfo = cast(VmInfo, dict(info) if info else {"id": vm_id})
        self._ptys: Dict[str, _PtySession] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vm_id!r})"

    async def __aenter__(self) -> "AsyncMicroVM":
        """Entering ``async with vm:`` (``with vm:``) returns the VM; leaving deletes it."""
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Leaving ``async with vm:`` (``with vm:`` in the sync client) deletes the VM (fine
        when it is already gone)."""
        try:
            await self.delete()
        except errors.VmNotFoundError:
            pass

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncMicroVM) and other.vm_id == self.vm_id

    def __hash__(self) -> int:
        return hash(self.vm_id)

    @property
    def info(self) -> VmInfo:
        """The VM object as last fetched (see :meth:`refresh`)."""
        return self._info

    @property
    def name(self) -> Optional[str]:
        """The VM's name as last fetched."""
        return self._info.get("name")

    @property
    def status(self) -> Optional[str]:
        """Status as last fetched; call :meth:`refresh` for the current one."""
        return self._info.get("status")

    @property
    def env_vars(self) -> Dict[str, str]:
        """The VM's environment as last fetched (secret-looking values read ``<redacted>``)."""
        return self._info.get("env_vars") or {}

    def _path(self, suffix: str = "") -> str:
        return f"/api/vms/{_q(self.vm_id)}{suffix}"

    async def refresh(self) -> VmInfo:
        """Fetches the VM object and returns it."""
        self._info = await self.manager.get_vm_info(self.vm_id)
        return self._info

    async def get_info(self) -> VmInfo:
        """Same as :meth:`refresh` (BandSox's name)."""
        return await self.refresh()

    # -- lifecycle ------------------------------------------------------------------------------

    async def _action(self, action: str, timeout: Optional[float] = None) -> None:
        await self.manager._json("POST", self._path(f"/{action}"), timeout=timeout)

    async def pause(self) -> None:
        """Pauses the VM (its vCPUs stop; memory is kept). :meth:`resume` continues it."""
        await self._action("pause")

    async def resume(self) -> None:
        """Continues a paused VM."""
        await self._action("resume")

    async def stop(self) -> None:
        """Powers the VM off (its disk is kept; :meth:`start` boots it again)."""
        await self._action("stop", timeout=60.0)

    async def start(self) -> None:
        """Boots a stopped or failed VM from its disk (no-op when running)."""
        await self._action("start", timeout=self.manager.boot_timeout)

    async def restart(self) -> None:
        """Powers the VM off and boots it again from its disk; returns once its agent answers."""
        await self._action("restart", timeout=self.manager.boot_timeout)

    async def delete(self) -> None:
        """Stops the VM and removes it with its disk."""
        await self.manager.delete_vm(self.vm_id)

    async def rename(self, new_name: str) -> str:
        """Renames the VM; returns the new name."""
        name = await self.manager.rename_vm(self.vm_id, new_name)
        self._info["name"] = name
        return name

    async def update_metadata(self, metadata: Mapping[str, Any]) -> VmInfo:
        """Replaces the VM's metadata; returns the updated VM object."""
        self._info = await self.manager.update_vm_metadata(self.vm_id, metadata)
        return self._info

    async def snapshot(
        self, snapshot_name: Optional[str] = None, metadata: Optional[Mapping[str, Any]] = None
    ) -> str:
        """Snapshots this VM; returns the snapshot id."""
        return await self.manager.snapshot_vm(self.vm_id, snapshot_name, metadata)

    async def fork(
        self, count: int = 1, names: Optional[List[str]] = None
    ) -> List["AsyncMicroVM"]:
        """``count`` new running VMs with this VM's memory and disk at this instant (it is
        paused only for one snapshot); each has its own hostname, machine id and address."""
        out = await self.manager._json(
            "POST",
            self._path("/fork"),
            json=_drop_none({"count": count, "names": list(names) if names else None}),
            timeout=self.manager.boot_timeout * 2 + 300,
        )
        return [self.manager._vm(i) for i in out["ids"]]

    async def extend_timeout(self, seconds: int) -> VmInfo:
        """Pushes the timeout ``seconds`` further; returns the VM object (see ``expires_at``)."""
        self._info = await self.manager._vm_obj(
            "POST", self._path("/extend"), json={"seconds": seconds}
        )
        return self._info

    async def set_timeout(self, timeout_s: int, action: Optional[str] = None) -> VmInfo:
        """Sets the timeout to ``timeout_s`` from now (0 clears it) and optionally its action
        (``stop``, ``pause``, ``delete``); returns the VM object."""
        self._info = await self.manager._vm_obj(
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
        """The address the host reaches the guest at (``network_config.guest_ip``); ``None``
        for a VM without networking."""
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
        killed by signal n) with ``.stdout``/``.stderr``. With ``on_stdout``/``on_stderr`` the
        command runs over the exec-stream WebSocket and the callbacks get each chunk of output
        as it arrives. Raises :class:`TimeoutError` (code ``exec_timeout``) when the command
        runs longer than ``timeout`` seconds.
        """
        if on_stdout is not None or on_stderr is not None:
            return await self._exec_stream(
                _shell_prefix(env, cwd) + command, on_stdout, on_stderr, timeout
            )
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
        return result

    async def _exec_stream(
        self,
        command: str,
        on_stdout: Optional[OutputCallback],
        on_stderr: Optional[OutputCallback],
        timeout: int,
    ) -> ExecResult:
        limit = min(max(int(timeout), 1), 3600)
        deadline = time.monotonic() + limit + _EXEC_MARGIN_S
        ws = await self.manager._ws(self._path("/exec-stream"))
        out: List[str] = []
        err: List[str] = []
        try:
            await ws.send(_json.dumps({"command": command, "timeout": limit}))
            while True:
                frame = await ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
                try:
                    msg = _json.loads(frame)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                kind = msg.get("type")
                if kind in ("stdout", "stderr"):
                    data = str(msg.get("data") or "")
                    (out if kind == "stdout" else err).append(data)
                    cb = on_stdout if kind == "stdout" else on_stderr
                    if cb is not None and data:
                        cb(data)
                elif kind == "exit":
                    code = msg.get("exit_code")
                    return ExecResult(int(code) if code is not None else 1,
                                      "".join(out), "".join(err))
                elif kind == "error":
                    text = str(msg.get("error") or "exec failed")
                    if "timed out" in text:
                        raise errors.TimeoutError(text, status_code=504, code="exec_timeout")
                    if text == "VM not found":
                        raise errors.VmNotFoundError(
                            f"VM `{self.vm_id}` not found", status_code=404, code="vm_not_found"
                        )
                    if "paused" in text or "not running" in text or "state" in text:
                        raise errors.ConflictError(text, status_code=409, code="conflict")
                    raise errors.BandSoxError(text, code="exec_error")
        finally:
            await ws.close()

    async def exec_python_capture(
        self,
        code: str,
        cwd: str = "/tmp",
        packages: Optional[List[str]] = None,
        timeout: int = 60,
        cleanup_venv: bool = True,
    ) -> ExecPythonResult:
        """Runs Python code in the guest; ``{"exit_code","stdout","stderr","output","success",
        "error"}``. Needs the server's ``exec-python`` endpoint."""
        return cast(ExecPythonResult, await self.manager._obj(
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
        ))

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

    # -- sessions (BandSox): durable commands, or a PTY over the terminal WebSocket ------------

    async def start_session(
        self,
        command: str,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        on_exit: Optional[Callable[[int], Any]] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> SessionId:
        """Starts a background command with a stdin pipe (a durable command on the server: it
        outlives this client). Returns its session id, a ``str`` that also unpacks as BandSox's
        ``(session_id, pid)``. The callbacks are called from a background task (a thread in
        the sync client) as output arrives; ``on_exit`` with the exit code."""
        cmd = await self.run_command_detached(command, env=env, cwd=cwd, stdin=True)
        if on_stdout is not None or on_stderr is not None or on_exit is not None:

            async def follow() -> None:
                try:
                    await cmd._follow(on_stdout, on_stderr)
                    if on_exit is not None:
                        on_exit(_exit_code(await cmd.info()))
                except errors.BandSoxError:
                    if on_exit is not None:
                        on_exit(-1)

            AsyncTask(follow)
        return SessionId(cmd.cmd_id, cmd.pid)

    async def start_pty_session(
        self,
        command: str,
        cols: int = 80,
        rows: int = 24,
        on_stdout: Optional[OutputCallback] = None,
        on_exit: Optional[Callable[[int], Any]] = None,
    ) -> str:
        """Starts a shell under a pseudo-terminal over the terminal WebSocket and returns the
        session id once the shell has printed its prompt. ``on_stdout`` gets the terminal
        output (decoded UTF-8) from a background task/thread. The server's terminal runs ``/bin/sh``; any other ``command`` is started
        with ``exec`` typed into it (so its echo is part of the output). ``on_exit`` is called
        with 0 when the shell ends, -1 when the connection drops (the terminal does not report
        exit codes)."""
        ws = await self.manager._ws(
            self._path(f"/terminal?cols={int(cols)}&rows={int(rows)}"),
            protocols=["bandsox.terminal.binary"],
        )
        sid = "pty-" + uuid.uuid4().hex[:16]
        session = _PtySession(ws, on_stdout, on_exit)
        self._ptys[sid] = session
        session.start()
        # Input typed before the shell has set its terminal up can be lost: wait until it has
        # printed its prompt (the first output, then a short quiet spell).
        await session.settle()
        if command.strip() not in _SHELLS:
            seen = session.frames
            await ws.send(f"exec {command}\n".encode())
            # Input sent before the shell has read the whole line would be read (and lost)
            # by the shell rather than the command: wait for the line's echo.
            await session.settle(after=seen)
        return sid

    def _pty(self, session_id: str) -> "Optional[_PtySession]":
        return self._ptys.get(session_id)

    async def send_session_input(
        self, session_id: str, data: Union[str, bytes], encoding: Optional[str] = None
    ) -> None:
        """Writes to a session's terminal or stdin. ``encoding="base64"`` means ``data`` is
        base64 text."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if encoding == "base64":
            raw = base64.b64decode(raw)
        pty = self._pty(session_id)
        if pty is not None:
            await pty.ws.send(raw)
            return
        await self.get_command(session_id).write_stdin(raw)

    async def resize_session(self, session_id: str, cols: int, rows: int) -> None:
        """Resizes a PTY session's terminal (a no-op for sessions without a terminal)."""
        pty = self._pty(session_id)
        if pty is not None:
            await pty.ws.send(_json.dumps({"type": "resize", "cols": int(cols), "rows": int(rows)}))
            return
        await self.get_command(session_id).info()  # unknown ids raise NotFoundError

    async def kill_session(self, session_id: str) -> None:
        """Ends a session: a PTY session's shell and everything it started (by closing its
        WebSocket), or a command with SIGTERM."""
        pty = self._ptys.pop(session_id, None)
        if pty is not None:
            await pty.ws.close()
            await pty.task_join(10.0)
            return
        await self.get_command(session_id).kill("TERM")

    # -- durable commands (Vtrix style) ---------------------------------------------------------

    async def run_command_detached(
        self,
        command: Union[str, Sequence[str]],
        args: Optional[Sequence[str]] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[int] = None,
        stdin: Union[bool, str, bytes] = False,
    ) -> "AsyncCommand":
        """Starts a command in the background and returns its :class:`Command` handle.

        ``command`` is a shell command line (``args`` are shell-quoted and appended) or an argv
        list. ``timeout`` kills its process group after that many seconds. ``stdin=True`` opens
        a stdin pipe (write with ``Command.write_stdin``); text or bytes are written to it and
        it is closed."""
        body: Dict[str, Any] = {
            "env": dict(env) if env is not None else None,
            "cwd": cwd,
            "user": user,
            "timeout": timeout,
            "stdin": stdin is not False,
        }
        if isinstance(command, str):
            line = command
            if args:
                line += " " + " ".join(shlex.quote(a) for a in args)
            body["command"] = line
        else:
            body["argv"] = list(command) + list(args or [])
        out = await self.manager._json("POST", self._path("/commands"), json=_drop_none(body))
        cmd = AsyncCommand(self, out["cmd_id"], out.get("pid"))
        if isinstance(stdin, (str, bytes)):
            await cmd.write_stdin(stdin, close=True)
        return cmd

    async def run_command(
        self,
        command: Union[str, Sequence[str]],
        args: Optional[Sequence[str]] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[int] = None,
        stdin: Union[None, str, bytes] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> ExecResult:
        """Runs a command as a durable command and waits for it; ``on_stdout``/``on_stderr``
        get its output as it arrives. Returns an :class:`ExecResult`; raises
        :class:`TimeoutError` (``exec_timeout``) when ``timeout`` killed it."""
        cmd = await self.run_command_detached(
            command, args, env=env, cwd=cwd, user=user, timeout=timeout,
            stdin=stdin if stdin is not None else False,
        )
        if on_stdout is not None or on_stderr is not None:
            await cmd._follow(on_stdout, on_stderr)
        return await cmd.wait()

    def get_command(self, cmd_id: str) -> "AsyncCommand":
        """A handle on a command started earlier (by any client)."""
        return AsyncCommand(self, cmd_id)

    async def list_commands(self) -> List[CommandInfo]:
        """States of this VM's durable commands."""
        return cast(List[CommandInfo], await self.manager._arr("GET", self._path("/commands")))

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
        out = await self.manager._obj("GET", self._path("/read-file"), params=params)
        return str(out.get("content", ""))

    async def list_dir(self, path: str = "/") -> List[FileEntry]:
        """Entries ``{"name","path","size","is_dir","is_file","mtime", ...}`` of a directory."""
        out = await self.manager._obj("GET", self._path("/files"), params={"path": path})
        return cast(List[FileEntry], out.get("files", []))

    async def get_file_info(self, path: str) -> FileInfo:
        """``{"size","mode","mtime"}`` of a guest path."""
        out = await self.manager._obj("GET", self._path("/file-info"), params={"path": path})
        return cast(FileInfo, out.get("info", out))

    async def download_file(
        self, remote_path: str, local_path: StrPath, timeout: float = 300
    ) -> None:
        """Copies a guest file to ``local_path`` (streamed; written atomically)."""
        local = Path(local_path)
        tmp = local.with_name(f".{local.name}.part")
        try:
            with open(tmp, "wb") as f:
                async for chunk in self.read_stream(remote_path, 1 << 20, timeout):
                    f.write(chunk)
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
        """Writes text (UTF-8) to a guest file, replacing it (``append`` adds to its end); parents
        are created."""
        await self._write(remote_path, content, "utf-8", append, timeout)

    async def append_text(
        self, remote_path: str, content: str, timeout: Optional[float] = None
    ) -> None:
        """Appends text (UTF-8) to a guest file."""
        await self._write(remote_path, content, "utf-8", True, timeout)

    async def write_bytes(
        self, remote_path: str, content: bytes, timeout: Optional[float] = None,
        append: bool = False,
    ) -> None:
        """Writes bytes to a guest file exactly, replacing it (``append`` adds to its end)."""
        await self._write(
            remote_path, base64.b64encode(content).decode("ascii"), "base64", append, timeout
        )

    async def append_file(self, local_path: StrPath, remote_path: str) -> None:
        """Appends a local file's bytes to a guest file."""
        with open(local_path, "rb") as f:
            data = f.read()
        await self.write_bytes(remote_path, data, append=True)

    # -- files (ours, Vtrix style) --------------------------------------------------------------

    async def stat(self, path: str) -> Optional[FileEntry]:
        """``{"name","path","size","is_dir","is_file","is_symlink","mode","mtime"}``, or
        ``None`` when nothing is at ``path``."""
        out = await self.manager._obj("GET", self._path("/files/stat"), params={"path": path})
        return cast(FileEntry, out.get("entry")) if out.get("exists") else None

    async def exists(self, path: str) -> bool:
        """Whether anything (file, directory, link) is at ``path`` in the guest."""
        return await self.stat(path) is not None

    async def mkdir(self, path: str, parents: bool = True, mode: Optional[int] = None) -> None:
        """Creates a directory (and its parents; fine when it exists)."""
        await self.manager._json(
            "POST", self._path("/files/mkdir"),
            json=_drop_none({"path": path, "parents": parents, "mode": mode}),
        )

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Removes a file, or a directory (with ``recursive`` also a non-empty one)."""
        await self.manager._json(
            "POST", self._path("/files/remove"), json={"path": path, "recursive": recursive}
        )

    async def rename_file(self, src: str, dst: str) -> None:
        """Moves a guest file or directory from ``src`` to ``dst``."""
        await self.manager._json(
            "POST", self._path("/files/rename"), json={"from": src, "to": dst}
        )

    async def edit(self, path: str, old_text: str, new_text: str) -> None:
        """Replaces the one occurrence of ``old_text``; raises :class:`InvalidInputError`
        (code ``edit_no_match`` or ``edit_multiple_matches``) otherwise."""
        await self.manager._json(
            "POST", self._path("/files/edit"),
            json={"path": path, "old_text": old_text, "new_text": new_text},
        )

    async def write(self, path: str, content: Union[str, bytes]) -> WriteResult:
        """Writes a whole file (parents created); ``{"bytes_written": n}``."""
        raw = content.encode() if isinstance(content, str) else bytes(content)
        await self.write_bytes(path, raw)
        return {"bytes_written": len(raw)}

    async def write_files(self, files: Sequence[Mapping[str, Any]]) -> int:
        """Writes several files in one request: ``[{"path", "content": bytes | str,
        "mode"?: 0o755}]``. Returns how many were written."""
        batch = []
        for f in files:
            content = f["content"]
            raw = content.encode() if isinstance(content, str) else bytes(content)
            batch.append(_drop_none({
                "path": f["path"],
                "content": base64.b64encode(raw).decode("ascii"),
                "encoding": "base64",
                "mode": f.get("mode"),
            }))
        out = await self.manager._json(
            "POST", self._path("/files/write-batch"), json={"files": batch},
            timeout=60.0 + 30.0 * sum(len(b["content"]) for b in batch) / (1 << 20),
        )
        return int(out.get("count", len(batch)))

    async def read(self, path: str, max_bytes: int = _READ_MAX_BYTES) -> ReadResult:
        """Vtrix's ``read``: ``{"type": "text", "content", "truncated", "size"}`` (text cut at
        ``max_bytes``), or for images ``{"type": "image", "data" (base64), "mime_type",
        "size"}``. Raises :class:`NotFoundError` when the file does not exist."""
        out = await self.manager._obj(
            "GET", self._path("/read-file"), params={"path": path, "max_bytes": max_bytes}
        )
        mime = str(out.get("mime") or "")
        if mime.startswith("image/"):
            return {"type": "image", "data": out.get("content", ""), "mime_type": mime,
                    "size": out.get("size"), "truncated": bool(out.get("truncated"))}
        return {"type": "text", "content": out.get("content", ""), "mime_type": mime or None,
                "size": out.get("size"), "truncated": bool(out.get("truncated"))}

    async def read_bytes(self, path: str) -> Optional[bytes]:
        """The whole file, or ``None`` when it does not exist."""
        chunks = []
        try:
            async for c in self.read_stream(path):
                chunks.append(c)
        except errors.NotFoundError as e:
            if isinstance(e, errors.VmNotFoundError):
                raise
            return None
        return b"".join(chunks)

    async def read_stream(
        self, path: str, chunk_size: int = 65536, timeout: float = 300
    ) -> AsyncIterator[bytes]:
        """The file's bytes in chunks of at most ``chunk_size`` (streamed, never whole in
        memory)."""
        t = max(float(timeout), self.manager.timeout)
        try:
            async with self.manager._client.stream(
                "GET", self._path("/download"), params={"path": path},
                timeout=httpx.Timeout(t, connect=min(t, 10.0)),
            ) as resp:
                await self.manager._raise_for_problem(resp)
                async for chunk in resp.aiter_bytes(chunk_size):
                    yield chunk
        except httpx.TimeoutException as e:
            raise errors.TimeoutError(
                f"reading {path} did not finish within {t:g} s", code="client_timeout"
            ) from e
        except httpx.TransportError as e:
            raise errors.ServerUnavailableError(
                f"reading {path} failed: {e}", code="server_unavailable"
            ) from e

    # -- network --------------------------------------------------------------------------------

    async def send_http_request(
        self,
        port: int,
        path: str = "/",
        method: str = "GET",
        headers: Optional[Mapping[str, str]] = None,
        data: Optional[Union[str, bytes]] = None,
        json: Optional[Any] = None,
        timeout: int = 30,
    ) -> HttpResponse:
        """Has the server send an HTTP request to the guest's ``port`` and returns the answer
        as an :class:`HttpResponse` (``status_code``, ``headers``, ``text``, ``content``,
        ``json()``; also the dict ``{"status_code","headers","body"}``, with ``body_base64``
        when the answer is not UTF-8). ``data`` as ``bytes`` is sent exactly (as
        ``body_base64``), ``json`` as a JSON body. Needs guest networking."""
        body: Optional[str] = None
        body_base64: Optional[str] = None
        if isinstance(data, (bytes, bytearray)):
            body_base64 = base64.b64encode(bytes(data)).decode()
        else:
            body = data
        try:
            out = await self.manager._json(
                "POST",
                self._path("/http"),
                json=_drop_none(
                    {
                        "port": port,
                        "path": path,
                        "method": method,
                        "headers": dict(headers) if headers is not None else None,
                        "body": body,
                        "body_base64": body_base64,
                        "json_body": json,
                        "timeout": timeout,
                    }
                ),
                timeout=float(timeout) + _EXEC_MARGIN_S,
            )
        except errors.NotFoundError as e:
            if e.code != "route_not_found":
                raise
            raise errors.UnsupportedError(
                "send_http_request is not supported by this server yet (guests have no network)",
                status_code=404, code="unsupported",
            ) from e
        return HttpResponse(out if isinstance(out, dict) else {})


class AsyncCommand:
    """A durable command in a VM (Vtrix's ``Command``): it keeps running when this client goes
    away; its output stays on the server (1 MiB per stream) and is read from byte offsets."""

    def __init__(self, vm: AsyncMicroVM, cmd_id: str, pid: Optional[int] = None) -> None:
        self.vm = vm
        self.cmd_id = cmd_id
        self.pid = pid

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cmd_id!r}, vm={self.vm.vm_id!r})"

    def _path(self, suffix: str = "") -> str:
        return self.vm._path(f"/commands/{_q(self.cmd_id)}{suffix}")

    async def info(self) -> CommandInfo:
        """``{"cmd_id","pid","command","running","status","stdout_end","stderr_end",...}``."""
        out = cast(CommandInfo, await self.vm.manager._obj("GET", self._path()))
        self.pid = out.get("pid", self.pid)
        return out

    async def logs(self, stdout_from: int = 0, stderr_from: int = 0) -> CommandLogs:
        """Output from absolute byte offsets: ``{"stdout","stderr","stdout_offset",
        "stderr_offset","info", ...}`` (pass the offsets back to read on)."""
        return cast(CommandLogs, await self.vm.manager._obj(
            "GET", self._path("/logs"),
            params={"stdout_from": stdout_from, "stderr_from": stderr_from},
        ))

    async def stdout(self) -> str:
        """The command's stdout so far (the last 1 MiB the server keeps)."""
        return str((await self.logs()).get("stdout", ""))

    async def stderr(self) -> str:
        """The command's stderr so far (the last 1 MiB the server keeps)."""
        return str((await self.logs()).get("stderr", ""))

    async def kill(self, signal: str = "TERM") -> None:
        """Signals the command's process group (``TERM``, ``KILL``, ``SIGINT``, a number)."""
        sig = signal[3:] if signal.upper().startswith("SIG") else signal
        await self.vm.manager._json("POST", self._path("/kill"), json={"signal": sig})

    async def write_stdin(self, data: Union[str, bytes], close: bool = False) -> None:
        """Writes to the command's stdin (started with ``stdin=True``); ``close`` ends it."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        await self.vm.manager._json(
            "POST", self._path("/stdin"),
            json={"data": base64.b64encode(raw).decode("ascii"), "encoding": "base64",
                  "close": close},
        )

    async def close_stdin(self) -> None:
        """Closes the command's stdin (it reads end of file)."""
        await self.write_stdin(b"", close=True)

    async def wait(self, timeout: Optional[float] = None) -> ExecResult:
        """Waits for the end (at most ``timeout`` seconds, then :class:`TimeoutError` with code
        ``client_timeout``) and returns the exit code with the output. Raises
        :class:`TimeoutError` (``exec_timeout``) when the command's own timeout killed it."""
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            step = 30.0 if deadline is None else max(min(deadline - time.monotonic(), 30.0), 0.0)
            info = await self.vm.manager._json(
                "POST", self._path("/wait"), json={"timeout": int(step)},
                timeout=step + _EXEC_MARGIN_S,
            )
            if not info.get("running", False) and info.get("status") is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.TimeoutError(
                    f"command {self.cmd_id} still runs after {timeout:g} s",
                    code="client_timeout",
                )
            if step < 1:
                await async_sleep(_POLL_S)
        logs = await self.logs()
        # The agent marks a timeout kill (`timed_out`) just after it publishes the exit
        # status, so a SIGKILL may show up a moment before its cause: look again.
        for _ in range(5):
            st = (logs.get("info") or info).get("status") or {}
            if st.get("timed_out") or st.get("signal") != 9:
                break
            await async_sleep(0.05)
            logs = await self.logs()
        info = logs.get("info") or info
        if (info.get("status") or {}).get("timed_out"):
            raise errors.TimeoutError(
                f"command {self.cmd_id} was killed by its timeout", code="exec_timeout"
            )
        return ExecResult(_exit_code(info), str(logs.get("stdout", "")),
                          str(logs.get("stderr", "")))

    async def _follow(
        self, on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]
    ) -> None:
        """Calls the callbacks with new output until the command has ended (polling its logs:
        every 50 ms while output flows, backing off to 0.5 s while it is quiet)."""
        so = se = 0
        dec_out, dec_err = _decoders()
        delay = _POLL_S
        while True:
            out = await self.vm.manager._json(
                "GET", self._path("/logs"),
                params={"stdout_from": so, "stderr_from": se, "encoding": "base64"},
            )
            o = base64.b64decode(out.get("stdout") or "")
            e = base64.b64decode(out.get("stderr") or "")
            so = int(out.get("stdout_offset", so + len(o)))
            se = int(out.get("stderr_offset", se + len(e)))
            running = bool((out.get("info") or {}).get("running"))
            for raw, dec, cb in ((o, dec_out, on_stdout), (e, dec_err, on_stderr)):
                text = dec.decode(raw, final=not running)
                if cb is not None and text:
                    cb(text)
            if not running:
                return
            if o or e:
                delay = _POLL_S
            else:
                await async_sleep(delay)
                delay = min(delay * 1.5, 0.5)


class _PtySession:
    """A PTY session: the terminal WebSocket and the task/thread that reads it."""

    def __init__(
        self,
        ws: AsyncWebSocket,
        on_stdout: Optional[OutputCallback],
        on_exit: Optional[Callable[[int], Any]],
    ) -> None:
        self.ws = ws
        self.on_stdout = on_stdout
        self.on_exit = on_exit
        self.task: Optional[AsyncTask] = None
        self.frames = 0
        self.last_frame = 0.0

    def start(self) -> None:
        self.task = AsyncTask(self._read)

    async def settle(self, after: int = 0, quiet: float = 0.15, limit: float = 10.0) -> None:
        """Waits until more than ``after`` frames have come and output then paused for
        ``quiet`` seconds (at most ``limit`` seconds, or until the session ended)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.task is not None and not self.task.done():
            if self.frames > after and time.monotonic() - self.last_frame >= quiet:
                return
            await async_sleep(0.02)

    async def task_join(self, timeout: float) -> None:
        if self.task is not None:
            await self.task.join(timeout)

    async def _read(self) -> None:
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        code = 0
        try:
            while True:
                frame = await self.ws.recv()
                self.frames += 1
                self.last_frame = time.monotonic()
                raw = frame if isinstance(frame, bytes) else frame.encode()
                text = dec.decode(raw)
                if self.on_stdout is not None and text:
                    self.on_stdout(text)
        except errors.BandSoxError as e:
            code = 0 if "code 1000" in str(e) else -1
        if self.on_exit is not None:
            self.on_exit(code)
