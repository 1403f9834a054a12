"""Runs every file of examples/ as its own Python process against the live server, and checks
the README shows each one verbatim (so the two never drift)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
README = ROOT / "README.md"
SHOWN = re.compile(r"<!-- example: (examples/[\w.-]+) -->\s*\n```python\n(.*?)```", re.S)

# What each example must print (a failing example fails here, not just by exit code).
EXPECT = {
    "streaming.py": [r"\[ ?0\.\ds\] tick 1", r"\[ ?[12]\.\ds\] tick 2", "exit code 0",
                     r"output: \['compiling', 'linked'\]"],
    "sessions.py": ["got: hello | exit code 143", "terminal size True"],
    "commands.py": ["wc says 12 exit 0", r"beats so far: [23]", r"new output: \['beat'\]",
                    "exit code after SIGTERM: 143", "still running: False"],
    "files.py": ["running on port 8080", "edit refused: edit_no_match", "exists: True False",
                 r"mode: 0*755\b", "truncated: True 204800", "streamed: 300000",
                 "image: image image/png", r"\['big.txt', 'dot.png', 'logs', 'port', 'run.sh'\]"],
    "login.py": ["authenticated: False", "authenticated: True", "VMs seen with the new key: 0",
                 "revoked key: 401 unauthorized"],
}
AUTH = {"login.py"}


def test_every_example_is_in_the_readme_verbatim():
    shown = {name: code for name, code in SHOWN.findall(README.read_text())}
    assert EXAMPLES, "no examples"
    for ex in EXAMPLES:
        key = f"examples/{ex.name}"
        assert key in shown, f"README does not show {key} (<!-- example: {key} --> block)"
        assert shown[key] == ex.read_text(), f"README's copy of {key} differs from the file"
    assert set(EXPECT) == {ex.name for ex in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path, server: Server, auth_server: Server):
    target = auth_server if example.name in AUTH else server
    env = dict(os.environ, BANDSOX_URL=target.url)
    env.pop("BANDSOX_API_KEY", None)
    if target.password:
        env["BANDSOX_PASSWORD"] = target.password
    before = _vm_count(server)
    p = subprocess.run([sys.executable, str(example)], env=env, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert p.returncode == 0, f"{example.name} failed:\n{p.stdout}\n{p.stderr}"
    for pattern in EXPECT[example.name]:
        assert re.search(pattern, p.stdout), f"{pattern!r} not in the output of {example.name}:\n{p.stdout}"
    assert _vm_count(server) == before, "the example left a VM behind"


def _vm_count(server: Server) -> int:
    from bandsox import BandSox

    return len(BandSox(server.url).list_vms())
