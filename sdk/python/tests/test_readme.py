"""Runs the README's ```python blocks (except copies of examples/), in order, in one namespace, against the live server
(blocks after a `<!-- test: auth-server -->` line run against the server with auth on)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Server

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- (test|example): ([\w./-]+) -->\s*\n)?```python\n(.*?)```", re.S)


def _blocks():
    """(kind, code) of the README's python blocks; copies of examples/ files are left to
    tests/test_examples.py."""
    return [(m.group(3), m.group(4)) for m in BLOCK.finditer(README.read_text())
            if m.group(2) != "example"]


def test_readme_has_examples():
    kinds = [k for k, _ in _blocks()]
    assert len(kinds) >= 8 and "auth-server" in kinds


def test_readme_examples_run(server: Server, auth_server: Server, monkeypatch, capsys):
    namespace: dict = {"__name__": "__readme__"}
    before = {v for v in _ids(server)}
    for i, (kind, code) in enumerate(_blocks()):
        target = auth_server if kind == "auth-server" else server
        monkeypatch.setenv("BANDSOX_URL", target.url)
        if target.api_key:
            monkeypatch.setenv("BANDSOX_API_KEY", target.api_key)
        else:
            monkeypatch.delenv("BANDSOX_API_KEY", raising=False)
        ns = {"__name__": "__readme__"} if kind else namespace
        try:
            exec(compile(code, f"README.md block {i}", "exec"), ns)
        except Exception as e:  # pragma: no cover - shown on failure
            pytest.fail(f"README block {i} failed: {type(e).__name__}: {e}\n{code}")
    out = capsys.readouterr().out
    for expected in ("Hello from the VM!", "exit code 0",
                     "0 VMs", "saved", "404 vm_not_found", "is not supported", "hello\nfrom the context\n", "a\n b\n",
                     "running readme-vm-2", "local server: True", "Hello from local mode",
                     "guest at 10.231.", "200 {'up': True} {\"up\": true}"):
        assert expected in out, f"{expected!r} not in README output:\n{out}"
    # The examples clean up after themselves.
    assert {v for v in _ids(server)} == before


def _ids(server: Server):
    from bandsox import BandSox

    return [v["id"] for v in BandSox(server.url).list_vms()]
