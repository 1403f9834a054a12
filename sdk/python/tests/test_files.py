"""File methods (BandSox's REST shapes) against the server's file endpoints."""

from __future__ import annotations

import os

import pytest

from bandsox import BandSox, MicroVM, errors


@pytest.fixture(scope="module")
def fvm(vm: MicroVM) -> MicroVM:
    vm.exec_command("rm -rf /tmp/pyfiles && mkdir -p /tmp/pyfiles")
    return vm


def test_write_read_append_text(fvm: MicroVM):
    fvm.write_text("/tmp/pyfiles/a.txt", "héllo\n")
    assert fvm.get_file_contents("/tmp/pyfiles/a.txt") == "héllo\n"
    fvm.append_text("/tmp/pyfiles/a.txt", "more\n")
    fvm.write_text("/tmp/pyfiles/a.txt", "last\n", append=True)
    assert fvm.exec_command("cat /tmp/pyfiles/a.txt").stdout == "héllo\nmore\nlast\n"
    info = fvm.get_file_info("/tmp/pyfiles/a.txt")
    assert info["size"] == len("héllo\nmore\nlast\n".encode())


def test_write_bytes_and_download(fvm: MicroVM, tmp_path):
    data = os.urandom(300_000) + bytes(range(256))
    fvm.write_bytes("/tmp/pyfiles/b.bin", data)
    fvm.write_bytes("/tmp/pyfiles/b.bin", b"tail", append=True)
    fvm.download_file("/tmp/pyfiles/b.bin", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == data + b"tail"


def test_upload_file_and_folder(fvm: MicroVM, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(1 << 20))
    fvm.upload_file(src, "/tmp/pyfiles/up.bin")
    out = fvm.exec_command("md5sum /tmp/pyfiles/up.bin").stdout.split()[0]
    import hashlib

    assert out == hashlib.md5(src.read_bytes()).hexdigest()

    tree = tmp_path / "tree"
    (tree / "sub dir").mkdir(parents=True)
    (tree / "skip").mkdir()
    (tree / "x.py").write_text("x")
    (tree / "sub dir" / "y.py").write_text("y")
    (tree / "sub dir" / "z.txt").write_text("z")
    (tree / "skip" / "w.py").write_text("w")
    fvm.upload_folder(tree, "/tmp/pyfiles/tree", pattern="*.py", skip_pattern=["skip"])
    listing = fvm.exec_command("cd /tmp/pyfiles/tree && find . -type f | sort").stdout.splitlines()
    assert listing == ["./sub dir/y.py", "./x.py"]
    names = {e["name"] for e in fvm.list_dir("/tmp/pyfiles/tree")}
    assert names == {"x.py", "sub dir"}


def test_missing_file(fvm: MicroVM, tmp_path):
    with pytest.raises(errors.NotFoundError):
        fvm.get_file_info("/tmp/pyfiles/nope")
    with pytest.raises(FileNotFoundError):
        fvm.download_file("/tmp/pyfiles/nope", tmp_path / "nope")
    assert not (tmp_path / "nope").exists() and not (tmp_path / ".nope.part").exists()
