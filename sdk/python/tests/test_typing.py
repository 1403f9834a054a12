"""The package type-checks under ``mypy --strict``, and so does code using it: results are
typed (TypedDicts that are still plain dicts at run time), not ``Any``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]

USER_CODE = '''
from typing import List, Optional

from bandsox import BandSox, HttpResponse, MicroVM
from bandsox.core import BandSox as CoreBandSox


def use(bs: BandSox) -> None:
    with bs.create_vm("bandsox/busybox") as vm:
        status: str = vm.info["status"]
        ip: Optional[str] = vm.get_guest_ip()
        code: int = vm.exec_command("true")
        out: str = vm.exec_command("echo").stdout
        names: List[str] = [e["name"] for e in vm.list_dir("/")]
        r: HttpResponse = vm.send_http_request(80)
        n: int = r.status_code
        body: str = r.text
        snaps = [s["snapshot_name"] for s in bs.list_snapshots()]
        mem: int = bs.get_vm_info(vm.vm_id)["mem_mib"]
        states: List[str] = [v["status"] for v in bs.list_vms()]
        total: int = bs.list_vms_page(limit=1).total
        first: str = [v["id"] for v in bs.list_vms_page()][0]
        print(states, total, first)
        print(status, ip, code, out, names, n, body, snaps, mem)
    wrong: int = bs.get_vm_info("x")["name"]  # the check below expects exactly this error


def same(vm: MicroVM) -> CoreBandSox:
    return vm.manager
'''


def test_mypy_strict_on_the_package_and_on_user_code(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "src/bandsox"], cwd=SDK,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    user = tmp_path / "user.py"
    user.write_text(textwrap.dedent(USER_CODE))
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(user)],
                       capture_output=True, text=True)
    errs = [line for line in r.stdout.splitlines() if ": error:" in line]
    # Exactly one error: a str assigned to an int (so the results are not `Any`).
    line = next(i for i, t in enumerate(user.read_text().splitlines(), 1) if "wrong:" in t)
    assert len(errs) == 1 and f"user.py:{line}:" in errs[0] and '"str"' in errs[0], r.stdout
