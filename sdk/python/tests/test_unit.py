"""Client-side behaviour that needs no VM: configuration, error mapping, timeouts, the
generated sync client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import bandsox
from bandsox import AsyncBandSox, BandSox, ExecResult, errors
from bandsox.core import BandSox as CoreBandSox

SDK = Path(__file__).resolve().parents[1]


def test_sync_client_is_generated_from_async():
    r = subprocess.run([sys.executable, str(SDK / "tools" / "unasync.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_version_matches_rust_crates():
    cargo = (SDK.parents[1] / "Cargo.toml").read_text()
    import re

    m = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.M)
    assert m and bandsox.__version__ == m.group(1)
    from importlib.metadata import version

    assert version("bandsox-client") == m.group(1)


def test_core_module_exports():
    assert CoreBandSox is BandSox
    from bandsox.vm import MicroVM

    assert MicroVM is bandsox.MicroVM
    # The seed's class names.
    from bandsox.core import ManagedMicroVM, RemoteBandSox, RemoteMicroVM
    from bandsox.vm import ManagedMicroVM as VmManaged

    assert RemoteBandSox is BandSox and RemoteMicroVM is MicroVM
    assert ManagedMicroVM is VmManaged is MicroVM


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (404, "vm_not_found", errors.VmNotFoundError),
        (404, "image_not_found", errors.ImageNotFoundError),
        (404, "not_found", errors.NotFoundError),
        (409, "conflict", errors.ConflictError),
        (401, "unauthorized", errors.AuthenticationError),
        (403, "forbidden_host", errors.AuthenticationError),
        (422, "invalid_input", errors.InvalidInputError),
        (400, "invalid_body", errors.InvalidInputError),
        (504, "exec_timeout", errors.TimeoutError),
        (504, "boot_timeout", errors.TimeoutError),
        (502, "agent_unavailable", errors.AgentUnavailableError),
        (429, "rate_limited", errors.RateLimitedError),
        (500, "internal", errors.BandSoxError),
        (409, "some_new_code", errors.ConflictError),  # unknown code: by status
        (404, "command_not_found", errors.NotFoundError),
        (422, "edit_no_match", errors.InvalidInputError),
        (422, "edit_multiple_matches", errors.InvalidInputError),
        (501, "unsupported", errors.UnsupportedError),
    ],
)
def test_problem_mapping(status, code, cls):
    e = errors.error_from_problem(status, {"code": code, "detail": "d", "status": status, "x": 1})
    assert type(e) is cls
    assert (e.status_code, e.code, e.detail) == (status, code, "d")


def test_builtin_compat():
    assert issubclass(errors.NotFoundError, FileNotFoundError)
    assert issubclass(errors.TimeoutError, TimeoutError)
    assert issubclass(errors.ServerUnavailableError, ConnectionError)
    assert issubclass(errors.InvalidInputError, ValueError)
    assert issubclass(errors.UnsupportedError, NotImplementedError)
    assert errors.BandSoxTimeoutError is errors.TimeoutError


def test_exec_result_is_the_exit_code():
    r = ExecResult(3, "out", "err")
    assert r == 3 and isinstance(r, int) and not r.success
    assert (r.stdout, r.stderr, r.output, r["stdout"], r["exit_code"]) == (
        "out", "err", "outerr", "out", 3)
    assert f"{r}" == "3"
    with pytest.raises(KeyError):
        r["nope"]


def test_url_and_key_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("BANDSOX_URL", raising=False)
    monkeypatch.delenv("BANDSOX_API_KEY", raising=False)
    # (BandSox() without a URL is local mode: tests/test_local.py.)
    monkeypatch.setenv("BANDSOX_URL", "http://127.0.0.1:8000")
    b = BandSox()
    assert b.server_url == "http://127.0.0.1:8000" and "Authorization" not in b.headers
    assert not b.local
    (tmp_path / ".bandsox").mkdir()
    (tmp_path / ".bandsox" / "credentials").write_text(json.dumps({"api_key": "bsx_file"}))
    assert BandSox().headers["Authorization"] == "Bearer bsx_file"
    monkeypatch.setenv("BANDSOX_API_KEY", "bsx_env")
    monkeypatch.setenv("BANDSOX_URL", "http://example.invalid:9/")
    b = BandSox()
    assert b.server_url == "http://example.invalid:9"
    assert b.headers["Authorization"] == "Bearer bsx_env"
    assert BandSox(api_key="bsx_arg").headers["Authorization"] == "Bearer bsx_arg"
    b = BandSox("http://h:1", headers={"authorization": "Bearer mine", "X-A": "1"})
    assert b.headers == {"authorization": "Bearer mine", "X-A": "1"}


def test_connection_refused_is_server_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(errors.ServerUnavailableError) as ei:
        BandSox(f"http://127.0.0.1:{port}").list_vms()
    assert ei.value.code == "server_unavailable" and ei.value.status_code is None
    with pytest.raises(ConnectionError):
        asyncio.run(AsyncBandSox(f"http://127.0.0.1:{port}").list_vms())


def test_client_timeout_never_hangs():
    # A socket that accepts connections (kernel backlog) but never answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(errors.TimeoutError) as ei:
            BandSox(url, timeout=0.5).version()
        assert ei.value.code == "client_timeout"

        async def run():
            async with AsyncBandSox(url, timeout=0.5) as a:
                await a.list_snapshots()

        with pytest.raises(errors.TimeoutError):
            asyncio.run(run())


def _mock(handler) -> BandSox:
    return BandSox("http://mock", transport=httpx.MockTransport(handler))


def test_unknown_fields_are_ignored_and_bodies_shaped():
    seen = {}

    def handler(req: httpx.Request) -> httpx.Response:
        seen[req.url.path] = (req.method, req.content and json.loads(req.content), dict(req.url.params))
        if req.url.path == "/api/vms" and req.method == "POST":
            return httpx.Response(200, json={"id": "v1", "status": "created", "new": [1]})
        if req.url.path == "/api/vms/v1/exec":
            return httpx.Response(200, json={"exit_code": 0, "stdout": "a", "stderr": "",
                                             "future_field": {"x": 1}})
        if req.url.path == "/api/vms":
            return httpx.Response(200, json=[{"id": "v1", "zzz": 1}], headers={"X-Total-Count": "7"})
        if req.url.path == "/api/vms/v1":
            return httpx.Response(200, json={"id": "v1", "name": "n", "status": "running",
                                             "network_config": {"guest_ip": "10.9.0.2"}})
        return httpx.Response(404, json={"code": "route_not_found", "detail": "no"})

    b = _mock(handler)
    vm = b.create_vm("img", vcpu=2, metadata={"a": 1}, timeout_s=5, timeout_action="pause")
    method, body, _ = seen["/api/vms"]
    assert body == {"image": "img", "vcpu": 2, "mem_mib": 128, "enable_networking": True,
                    "force_rebuild": False, "disk_size_mib": 4096, "metadata": {"a": 1},
                    "timeout_s": 5, "timeout_action": "pause"}
    assert vm.vm_id == "v1"
    # create_vm fetched the VM object: name, status and the guest address are known at once.
    assert (vm.name, vm.status, vm.get_guest_ip()) == ("n", "running", "10.9.0.2")
    r = vm.exec_command("echo a", env={"K": "V"}, cwd="/tmp")
    assert r == 0 and r.stdout == "a"
    assert seen["/api/vms/v1/exec"][1] == {"command": "echo a", "timeout": 30, "env": {"K": "V"},
                                           "cwd": "/tmp"}
    page = b.list_vms_page(limit=1, offset=2, metadata_equals={"a": 1}, status="running")
    assert page.total == 7 and page.items == [{"id": "v1", "zzz": 1}]
    assert seen["/api/vms"][2] == {"limit": "1", "offset": "2", "status": "running",
                                   "metadata_equals": '{"a": 1}'}


def test_non_json_error_bodies():
    b = _mock(lambda req: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(errors.BandSoxError) as ei:
        b.list_vms()
    assert ei.value.status_code == 502 and "Bad Gateway" in ei.value.detail


def test_unsupported_operations():
    b = BandSox("http://127.0.0.1:9")
    with pytest.raises(errors.UnsupportedError, match="not supported"):
        b.create_vm_from_dockerfile("./Dockerfile", tag="x", mcp={"servers": {}})
    with pytest.raises(errors.UnsupportedError, match="not supported"):
        b.create_vm("img", mcp={"servers": {}})
    vm = bandsox.MicroVM(b, "x")
    assert vm.get_guest_ip() is None


class _DroppingWsServer:
    """A WebSocket server that sends one output frame and then drops the TCP connection
    (what a crashed server or a cut network looks like to the client)."""

    def __init__(self, first_frame):
        from websockets.sync.server import serve

        def handler(ws):
            try:
                ws.recv(timeout=2)
            except Exception:
                pass
            ws.send(first_frame)
            ws.socket.shutdown(socket.SHUT_RDWR)

        self.server = serve(handler, "127.0.0.1", 0,
                            select_subprotocol=lambda conn, protos: protos[0] if protos else None)
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()


def test_websocket_drop_is_an_error_not_a_hang():
    srv = _DroppingWsServer(json.dumps({"type": "stdout", "data": "partial\n"}))
    try:
        got = []
        vm = bandsox.MicroVM(BandSox(srv.url, timeout=5), "x")
        t0 = time.monotonic()
        with pytest.raises(errors.ServerUnavailableError) as ei:
            vm.exec_command("sleep 100", on_stdout=got.append, timeout=100)
        assert ei.value.code == "websocket_closed" and got == ["partial\n"]
        assert time.monotonic() - t0 < 5

        async def run():
            async with AsyncBandSox(srv.url, timeout=5) as a:
                avm = bandsox.AsyncMicroVM(a, "x")
                await avm.exec_command("sleep 100", on_stdout=got.append, timeout=100)

        with pytest.raises(errors.ServerUnavailableError):
            asyncio.run(run())
    finally:
        srv.close()


def test_pty_drop_reports_exit_minus_one():
    srv = _DroppingWsServer(b"$ ")
    try:
        out, exits = [], []
        vm = bandsox.MicroVM(BandSox(srv.url, timeout=5), "x")
        vm.start_pty_session("/bin/sh", on_stdout=out.append, on_exit=exits.append)
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out == ["$ "] and exits == [-1]
    finally:
        srv.close()


def test_websocket_refused_upgrade_maps_the_problem():
    # No server at all: a clear error, not a hang.
    vm = bandsox.MicroVM(BandSox("http://127.0.0.1:9", timeout=2), "x")
    with pytest.raises(errors.ServerUnavailableError):
        vm.exec_command("true", on_stdout=print)
    with pytest.raises(errors.ServerUnavailableError):
        vm.start_pty_session("/bin/sh")


def test_429_and_503_are_retried_after_retry_after(monkeypatch):
    calls = []
    waits = []
    monkeypatch.setattr("bandsox._sync.client.sync_sleep", waits.append)

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.content)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "2"},
                                  json={"code": "too_many_operations", "detail": "busy"})
        if len(calls) == 2:
            return httpx.Response(503, json={"code": "unavailable", "detail": "later"})
        return httpx.Response(200, json={"exit_code": 0, "stdout": "ok", "stderr": ""})

    vm = bandsox.MicroVM(_mock(handler), "v1")
    assert vm.exec_command("true").stdout == "ok"
    assert waits == [2.0, 1.0]                      # Retry-After, then backoff 0.5 * 2**1
    assert calls[0] == calls[1] == calls[2]         # the same body each time

    # Gives up after `retries`, and at once when Retry-After asks for too long.
    calls.clear()
    waits.clear()
    b = BandSox("http://mock", retries=2, transport=httpx.MockTransport(
        lambda req: (calls.append(1), httpx.Response(429, json={"code": "rate_limited"}))[1]))
    with pytest.raises(errors.RateLimitedError):
        b.list_vms()
    assert len(calls) == 3 and waits == [0.5, 1.0]
    calls.clear()
    b = _mock(lambda req: (calls.append(1), httpx.Response(
        429, headers={"Retry-After": "60"}, json={"code": "rate_limited"}))[1])
    with pytest.raises(errors.RateLimitedError):
        b.login("pw")
    assert len(calls) == 1
    # Other errors are not retried.
    calls.clear()
    b = _mock(lambda req: (calls.append(1), httpx.Response(500, json={"code": "internal"}))[1])
    with pytest.raises(errors.BandSoxError):
        b.list_vms()
    assert len(calls) == 1


def test_async_retry(monkeypatch):
    calls = []

    async def no_sleep(_s):
        return None

    monkeypatch.setattr("bandsox._async.client.async_sleep", no_sleep)

    def handler(req):
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0"})
        return httpx.Response(200, json=[])

    async def main():
        async with AsyncBandSox("http://mock", transport=httpx.MockTransport(handler)) as a:
            return await a.list_vms()

    assert asyncio.run(main()) == [] and len(calls) == 3


def test_http_response_object():
    r = bandsox.HttpResponse({"status_code": 201, "headers": {"Content-Type": "application/json"},
                              "body": '{"a": [1]}'})
    assert r.status_code == 201 and r.ok and r.json() == {"a": [1]} and r.text == '{"a": [1]}'
    assert r.headers["content-type"] == "application/json"
    # Still the dict BandSox returned.
    assert r["status_code"] == 201 and r["body"] == '{"a": [1]}' and dict(r)["headers"]
    raw = bandsox.HttpResponse({"status_code": 500, "headers": {}, "body": "\ufffd",
                                "body_base64": "/w=="})
    assert raw.content == b"\xff" and not raw.ok
    with pytest.raises(errors.BandSoxError):
        raw.raise_for_status()


def test_microvm_context_manager_deletes(monkeypatch):
    deleted = []

    def handler(req):
        if req.method == "DELETE":
            deleted.append(req.url.path)
            if len(deleted) > 1:
                return httpx.Response(404, json={"code": "vm_not_found", "detail": "gone"})
        return httpx.Response(200, json={})

    b = _mock(handler)
    with pytest.raises(RuntimeError):
        with bandsox.MicroVM(b, "v1"):
            raise RuntimeError("boom")
    assert deleted == ["/api/vms/v1"]
    with bandsox.MicroVM(b, "v1") as vm:       # already gone: no error
        assert vm.vm_id == "v1"
    assert len(deleted) == 2


def test_every_public_method_is_documented():
    classes = (bandsox.AsyncBandSox, bandsox.AsyncMicroVM, bandsox.AsyncCommand, bandsox.BandSox,
               bandsox.MicroVM, bandsox.Command, bandsox.HttpResponse, bandsox.ExecResult,
               bandsox.VmPage, bandsox.SessionId)
    dunders = ("__enter__", "__exit__", "__aenter__", "__aexit__")
    missing = [
        f"{cls.__name__}.{name}"
        for cls in classes
        for name, obj in vars(cls).items()
        if (not name.startswith("_") or name in dunders)
        and (callable(obj) or isinstance(obj, property))
        and not (getattr(obj, "__doc__", None) or "").strip()
    ]
    assert missing == []
