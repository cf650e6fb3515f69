"""lxcfs comes back after it was killed, even though its dead FUSE mount stays behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from vpshost.host import lxcfs

pytestmark = pytest.mark.lxc


def _lxcfs_pid(mountpoint: Path) -> int:
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] and p.info["cmdline"][-1] == str(mountpoint) \
                and "lxcfs" in p.info["cmdline"][0]:
            return p.pid
    raise AssertionError(f"no lxcfs serves {mountpoint}")


def test_dead_lxcfs_mount_is_replaced(tmp_path: Path) -> None:
    mp, pidfile = tmp_path / "lxcfs", tmp_path / "lxcfs.pid"
    lxcfs.ensure(mp, pidfile)
    try:
        assert "MemTotal" in (mp / "proc" / "meminfo").read_text()
        os.kill(_lxcfs_pid(mp), signal.SIGKILL)
        for _ in range(50):
            if not lxcfs.serving(mp):
                break
            time.sleep(0.1)
        assert not lxcfs.serving(mp)
        # the dead mount stays: "Transport endpoint is not connected"
        assert str(mp) in Path("/proc/mounts").read_text()
        lxcfs.ensure(mp, pidfile)
        assert "MemTotal" in (mp / "proc" / "meminfo").read_text()
    finally:
        with contextlib.suppress(AssertionError):
            os.kill(_lxcfs_pid(mp), signal.SIGTERM)
        subprocess.run(["umount", "-l", str(mp)], check=False, capture_output=True)
