"""File methods (BandSox's REST shapes) against the server's file endpoints."""

from __future__ import annotations

import base64
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


# -- Vtrix-style file methods ---------------------------------------------------------------

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def test_stat_exists_mkdir_remove_rename(fvm: MicroVM):
    assert fvm.stat("/tmp/pyfiles/x/y") is None and fvm.exists("/tmp/pyfiles/x/y") is False
    fvm.mkdir("/tmp/pyfiles/x/y")
    fvm.mkdir("/tmp/pyfiles/x/y")  # already there: fine
    e = fvm.stat("/tmp/pyfiles/x/y")
    assert e is not None and e["is_dir"] is True and fvm.exists("/tmp/pyfiles/x")
    fvm.write("/tmp/pyfiles/x/y/f", "data")
    fvm.rename_file("/tmp/pyfiles/x/y/f", "/tmp/pyfiles/x/g")
    assert fvm.exists("/tmp/pyfiles/x/g") and not fvm.exists("/tmp/pyfiles/x/y/f")
    with pytest.raises(errors.BandSoxError):
        fvm.remove("/tmp/pyfiles/x")  # not empty without recursive
    fvm.remove("/tmp/pyfiles/x", recursive=True)
    assert not fvm.exists("/tmp/pyfiles/x")


def test_edit_write_files_read(fvm: MicroVM):
    assert fvm.write("/tmp/pyfiles/c.json", '{"port": 3000}') == {"bytes_written": 14}
    fvm.edit("/tmp/pyfiles/c.json", '"port": 3000', '"port": 8080')
    assert fvm.get_file_contents("/tmp/pyfiles/c.json") == '{"port": 8080}'
    with pytest.raises(errors.InvalidInputError) as ei:
        fvm.edit("/tmp/pyfiles/c.json", "nope", "x")
    assert ei.value.code == "edit_no_match"
    fvm.write("/tmp/pyfiles/d.txt", "a a")
    with pytest.raises(errors.InvalidInputError) as ei:
        fvm.edit("/tmp/pyfiles/d.txt", "a", "b")
    assert ei.value.code == "edit_multiple_matches"

    n = fvm.write_files([
        {"path": "/tmp/pyfiles/w/run.sh", "content": b"#!/bin/sh\necho ran\n", "mode": 0o755},
        {"path": "/tmp/pyfiles/w/img.png", "content": PNG},
    ])
    assert n == 2
    assert fvm.exec_command("/tmp/pyfiles/w/run.sh").stdout == "ran\n"
    img = fvm.read("/tmp/pyfiles/w/img.png")
    assert img["type"] == "image" and img["mime_type"] == "image/png"
    assert base64.b64decode(img["data"]) == PNG
    text = fvm.read("/tmp/pyfiles/c.json")
    assert text == {"type": "text", "content": '{"port": 8080}', "mime_type": text["mime_type"],
                    "size": 14, "truncated": False}
    fvm.write("/tmp/pyfiles/big.txt", "x" * 300_000)
    big = fvm.read("/tmp/pyfiles/big.txt")
    assert big["truncated"] is True and len(big["content"]) == 200 * 1024
    with pytest.raises(errors.NotFoundError):
        fvm.read("/tmp/pyfiles/missing")


def test_read_stream_and_read_bytes(fvm: MicroVM):
    data = os.urandom(200_000)
    fvm.write_bytes("/tmp/pyfiles/s.bin", data)
    chunks = list(fvm.read_stream("/tmp/pyfiles/s.bin", chunk_size=65536))
    assert b"".join(chunks) == data and len(chunks) >= 4
    assert all(len(c) <= 65536 for c in chunks)
    assert fvm.read_bytes("/tmp/pyfiles/s.bin") == data
    assert fvm.read_bytes("/tmp/pyfiles/nothing") is None


def test_append_file(fvm: MicroVM, tmp_path):
    local = tmp_path / "tail.bin"
    local.write_bytes(b"\x00tail\xff")
    fvm.write_bytes("/tmp/pyfiles/app.bin", b"head")
    fvm.append_file(local, "/tmp/pyfiles/app.bin")
    assert fvm.read_bytes("/tmp/pyfiles/app.bin") == b"head\x00tail\xff"
