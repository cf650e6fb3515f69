"""Container snapshots: copies of the disk image, taken live (frozen + synced) or stopped."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.lxc


def test_snapshot_restore_puts_the_disk_back(vps_env: Any, make_container: Any) -> None:
    svc = vps_env.service
    name = make_container(disk_mb=64)
    vps_env.ok(name, "echo before > /root/marker")
    svc.snapshot(name, "s1")        # while running: frozen, synced, copied, thawed
    assert vps_env.lxc_state(name) == "RUNNING"
    snaps = svc.snapshots(name)
    assert [s["name"] for s in snaps] == ["s1"] and snaps[0]["with_memory"] is False
    vps_env.ok(name, "echo after > /root/marker; echo new > /root/later; sync")
    svc.restore(name, "s1")
    assert svc.show(name)["state"] == "running" and vps_env.lxc_state(name) == "RUNNING"
    assert vps_env.ok(name, "cat /root/marker").strip() == "before"
    assert vps_env.sh(name, "test -e /root/later").returncode != 0
    # beside disk.img, so a cold move (which copies the guest's files by name) takes it
    assert (vps_env.guests_dir / name / "snapshot-s1.img").is_file()
    svc.delete_snapshot(name, "s1")
    assert svc.snapshots(name) == []
    assert not list(vps_env.guests_dir.joinpath(name).glob("snapshot-*"))


def test_restore_keeps_a_disk_grown_after_the_snapshot(vps_env: Any,
                                                       make_container: Any) -> None:
    svc = vps_env.service
    name = make_container(disk_mb=64, start=False)
    svc.snapshot(name, "small")
    svc.resize(name, disk_mb=96)
    svc.restore(name, "small")
    svc.start(name)
    size_kb = int(vps_env.ok(name, "df -k / | tail -1").split()[1])
    assert size_kb > 80 * 1024  # the plan's 96 MiB, not the snapshot's 64 MiB


def test_snapshot_errors_are_clear(vps_env: Any, make_container: Any) -> None:
    from vpshost.errors import Conflict, NotFound

    svc = vps_env.service
    name = make_container()
    svc.snapshot(name, "one")
    with pytest.raises(Conflict, match="already has a snapshot 'one'"):
        svc.snapshot(name, "one")
    with pytest.raises(NotFound, match="no snapshot 'two'"):
        svc.restore(name, "two")
    assert vps_env.lxc_state(name) == "RUNNING"
