"""The async twin against the live server: create, exec, list, lifecycle, delete, errors."""

from __future__ import annotations

import asyncio

import pytest

from bandsox import AsyncBandSox, AsyncMicroVM, errors

from .conftest import IMAGE, Server


def test_async_create_exec_delete(server: Server):
    async def run():
        async with AsyncBandSox(server.url) as bs:
            vm = await bs.create_vm(IMAGE, name="py-async", metadata={"role": "async"})
            assert isinstance(vm, AsyncMicroVM)
            assert (vm.get_guest_ip() or "").startswith("10.231.")   # known right after create
            async with vm:   # deletes the VM on the way out
                got = []
                r = await vm.exec_command("echo async-hi; exit 2", on_stdout=got.append)
                assert r == 2 and r.stdout == "async-hi\n" and got == ["async-hi\n"]
                # Two commands at once on one VM.
                a, b = await asyncio.gather(vm.exec_command("echo a"), vm.exec_command("echo b"))
                assert (a.stdout, b.stdout) == ("a\n", "b\n")
                listed = await bs.list_vms(metadata_equals={"role": "async"})
                assert [v["id"] for v in listed] == [vm.vm_id]
                page = await bs.list_vms_page(metadata_equals={"role": "async"})
                assert page.total == 1
                same = await bs.get_vm(vm.vm_id)
                assert same.name == "py-async" and await same.wait_for_agent(5)
                await vm.pause()
                with pytest.raises(errors.ConflictError):
                    await vm.exec_command("true")
                await vm.resume()
                assert await vm.rename("py-async-2") == "py-async-2"
                assert (await vm.update_metadata({"role": "async", "x": 1}))["metadata"]["x"] == 1
                with pytest.raises(errors.TimeoutError):
                    await vm.exec_command("sleep 10", timeout=1)
            with pytest.raises(errors.VmNotFoundError):
                await bs.get_vm(vm.vm_id)

    asyncio.run(run())


def test_async_errors(server: Server, tmp_path):
    async def run():
        async with AsyncBandSox(server.url) as bs:
            with pytest.raises(errors.VmNotFoundError):
                await bs.get_vm_info("nope")
            with pytest.raises(errors.SnapshotNotFoundError):
                await bs.get_snapshot("nope")
            with pytest.raises(errors.InvalidInputError):
                await bs.create_vm(IMAGE, timeout_action="explode")
            dockerfile = tmp_path / "Dockerfile"
            dockerfile.write_text(f"FROM {IMAGE}\nCOPY . /x\n")
            with pytest.raises(errors.InvalidInputError, match="COPY/ADD need a build context"):
                await bs.create_vm_from_dockerfile(dockerfile)
            # A folder is its own build context (the tar goes up from the async client too).
            (tmp_path / "hello.txt").write_text("from the context\n")
            dockerfile.write_text(f"FROM {IMAGE}\nCOPY hello.txt /x/\n")
            vm = await bs.create_vm_from_dockerfile(tmp_path, tag="sdk/async-ctx:1")
            try:
                r = await vm.exec_command("cat /x/hello.txt")
                assert r.stdout == "from the context\n"
            finally:
                await vm.delete()

    asyncio.run(run())
