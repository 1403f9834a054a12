"""Snapshots: create, list, get, rename, metadata, restore (a second VM), delete."""

from __future__ import annotations

import pytest

from bandsox import BandSox, MicroVM, errors


def test_snapshot_restore_roundtrip(bs: BandSox, vm: MicroVM):
    vm.exec_command("echo before-snapshot > /tmp/state")
    snap_id = bs.snapshot_vm(vm, "py-snap", metadata={"k": "v"})
    assert isinstance(snap_id, str) and snap_id
    assert vm.refresh()["status"] == "running"  # resumed after the capture

    snaps = {s["id"]: s for s in bs.list_snapshots()}
    s = snaps[snap_id]
    assert s["name"] == s["snapshot_name"] == "py-snap"
    assert s["source_vm_id"] == vm.vm_id and s["metadata"] == {"k": "v"}
    assert bs.get_snapshot(snap_id)["id"] == snap_id

    assert bs.rename_snapshot(snap_id, "py-snap-2") == "py-snap-2"
    assert bs.get_snapshot(snap_id)["snapshot_name"] == "py-snap-2"
    meta = bs.update_snapshot_metadata(snap_id, {"k": "w"})
    assert meta["metadata"] == {"k": "w"} and meta["id"] == snap_id

    restored = bs.restore_vm(snap_id, name="py-restored", metadata={"role": "restored"},
                             env_vars={"R": "1"})
    try:
        assert isinstance(restored, MicroVM) and restored.vm_id != vm.vm_id
        info = restored.refresh()
        assert info["name"] == "py-restored" and info["restored_from"] == snap_id
        assert info["metadata"] == {"role": "restored"}
        # Files from before the snapshot are there; later changes to the source are not.
        vm.exec_command("echo after > /tmp/state")
        assert restored.exec_command("cat /tmp/state").stdout == "before-snapshot\n"
        assert restored.exec_command("echo $R").stdout == "1\n"
        # MicroVM.snapshot() on the restored VM, then delete it.
        snap2 = restored.snapshot("py-snap-of-restored")
        bs.delete_snapshot(snap2)
    finally:
        restored.delete()
    with pytest.raises(errors.VmNotFoundError):
        restored.refresh()
    assert restored.vm_id not in [v["id"] for v in bs.list_vms()]

    bs.delete_snapshot(snap_id)
    assert snap_id not in [s["id"] for s in bs.list_snapshots()]


def test_snapshot_errors(bs: BandSox):
    with pytest.raises(errors.SnapshotNotFoundError) as ei:
        bs.get_snapshot("no-such-snapshot")
    assert ei.value.status_code == 404 and isinstance(ei.value, errors.NotFoundError)
    for call in (
        lambda: bs.restore_vm("no-such-snapshot"),
        lambda: bs.delete_snapshot("no-such-snapshot"),
        lambda: bs.rename_snapshot("no-such-snapshot", "x"),
        lambda: bs.update_snapshot_metadata("no-such-snapshot", {}),
    ):
        with pytest.raises(errors.NotFoundError):
            call()
    with pytest.raises(errors.VmNotFoundError):
        bs.snapshot_vm("no-such-vm", "x")
