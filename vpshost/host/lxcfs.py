"""lxcfs: the FUSE filesystem that gives containers their own /proc/meminfo, nproc, uptime."""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
from pathlib import Path

from vpshost.errors import RuntimeFailure


def serving(mountpoint: Path) -> bool:
    """Whether a live lxcfs answers on ``mountpoint`` (a dead one's mount raises ENOTCONN)."""
    try:
        return (mountpoint / "proc" / "meminfo").exists()
    except OSError:
        return False


def ensure(mountpoint: Path, pidfile: Path | None = None) -> None:
    """Start lxcfs when it is not serving ``mountpoint`` (no systemd here to do it).

    lxcfs refuses to start while another one holds its pid file (/run/lxcfs.pid by
    default): a second instance, such as a test's, needs a ``pidfile`` of its own."""
    if not shutil.which("lxcfs") or serving(mountpoint):
        return
    try:
        mountpoint.stat()
    except OSError as exc:
        # A killed lxcfs leaves its FUSE mount behind ("Transport endpoint is not
        # connected"); detach it so the new lxcfs can mount there.
        if exc.errno == errno.ENOTCONN:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        elif exc.errno != errno.ENOENT:
            raise
    mountpoint.mkdir(parents=True, exist_ok=True)
    pid_args = ["--pidfile", str(pidfile)] if pidfile else []
    subprocess.Popen(["lxcfs", *pid_args, str(mountpoint)], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    for _ in range(50):
        if serving(mountpoint):
            return
        time.sleep(0.1)
    raise RuntimeFailure(f"lxcfs did not come up on {mountpoint}",
                         f"run `lxcfs {mountpoint}` by hand to see why")
