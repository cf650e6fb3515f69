"""Container snapshots: point-in-time copies of the container's ext4 disk image.

A running container is frozen (its cgroup freezer) and its filesystem synced
(syncfs through /proc/<init>/root) before the copy, so the copy is consistent; it
then thaws. Copies are sparse (and reflinks where the state dir's filesystem has
them), so a snapshot costs what the container has written, not its plan's size.
There is no memory state: that would take CRIU, which fails `criu check` on many
kernels (shared/ENVIRONMENT.md). Restoring stops a running container, puts the disk
back and starts it again: its processes start afresh from the restored disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from vpshost.drivers.base import Power
from vpshost.errors import Conflict, NotFound
from vpshost.models import Guest
from vpshost.runner import run

if TYPE_CHECKING:
    from vpshost.drivers.container import ContainerDriver

# beside disk.img, not in a subdirectory: cold moves copy the guest's files by name
PREFIX, SUFFIX = "snapshot-", ".img"


def path(guest: Guest, snap: str) -> Path:
    return guest.dir / f"{PREFIX}{snap}{SUFFIX}"


def files(guest: Guest) -> list[str]:
    return sorted(p.name for p in guest.dir.glob(f"{PREFIX}*{SUFFIX}"))


def _copy(src: Path, dst: Path) -> None:
    """A sparse copy that appears whole or not at all."""
    tmp = dst.with_name(dst.name + ".partial")
    try:
        run(["cp", "--sparse=always", "--reflink=auto", str(src), str(tmp)], timeout=1800)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def take(drv: ContainerDriver, guest: Guest, snap: str) -> None:
    target = path(guest, snap)
    if target.exists():
        raise Conflict(f"container '{guest.name}' already has a snapshot '{snap}'",
                       "pick another name or delete it first")
    running = drv.power(guest) is Power.RUNNING
    if running:
        drv.pause(guest)
    try:
        if drv.power(guest) is Power.PAUSED:
            pid = int(drv._lxc("info", guest, "-p", "-H").stdout.strip())
            # the container's ext4 writes back to the loop device's backing file
            run(["sync", "-f", f"/proc/{pid}/root/"], timeout=300)
        _copy(guest.dir / "disk.img", target)
    finally:
        if running:
            drv.resume(guest)


def restore(drv: ContainerDriver, guest: Guest, snap: str, stop_timeout: float) -> None:
    source = path(guest, snap)
    if not source.exists():
        raise NotFound(f"container '{guest.name}' has no snapshot '{snap}'",
                       f"see `vps snapshot list {guest.name}`")
    was = drv.power(guest)
    if was is Power.PAUSED:
        drv.resume(guest)
    if was in (Power.RUNNING, Power.PAUSED):
        drv.stop(guest, stop_timeout)
    disk = guest.dir / "disk.img"
    _copy(source, disk)
    # the plan's disk may have grown since the snapshot: the disk keeps the plan's size
    if disk.stat().st_size < guest.plan.disk_mb * 1024 * 1024:
        drv._grow_disk(guest, guest.plan.disk_mb)
    if was in (Power.RUNNING, Power.PAUSED):
        drv.start(guest)


def delete(guest: Guest, snap: str) -> None:
    target = path(guest, snap)
    if not target.exists():
        raise NotFound(f"container '{guest.name}' has no snapshot '{snap}'")
    target.unlink()
