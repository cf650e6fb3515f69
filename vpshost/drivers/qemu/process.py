"""Finding, waiting for and killing a VM's QEMU process (known only by its pid file)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

from vpshost.drivers.qemu.paths import VmPaths


def qemu_pid(paths: VmPaths) -> int | None:
    """The pid of the VM's live QEMU, or None. The pid must still be a QEMU with this
    VM's pid file on its command line, so a reused pid is never mistaken for it."""
    try:
        pid = int(paths.pidfile.read_text().strip())
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmd = proc.cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    if cmd and "qemu-system" in os.path.basename(cmd[0]) and str(paths.pidfile) in cmd:
        return pid
    return None


def wait_gone(paths: VmPaths, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while qemu_pid(paths) is not None:
        if time.monotonic() >= end:
            return False
        time.sleep(0.1)
    return True


def kill(paths: VmPaths) -> None:
    """SIGKILL the QEMU (no-op when none) and wait for it to vanish."""
    pid = qemu_pid(paths)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_gone(paths, 10)


def clean_runtime(paths: VmPaths) -> None:
    """Remove what a dead QEMU leaves: pid file and sockets (never the disk or log)."""
    for f in [paths.pidfile, *paths.sockets()]:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def console_tail(paths: VmPaths, lines: int = 15) -> str:
    try:
        text = paths.console_log.read_bytes()[-8192:].decode(errors="replace")
    except OSError:
        return "(no console output)"
    tail = [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(tail) or "(no console output)"


def overhead(pid: int, guest_ram_mb: int) -> dict[str, float]:
    """RSS of QEMU, and the part that is not guest RAM.

    Guest RAM is one anonymous mapping of the guest's memory size; its resident part is
    the guest's, everything else (code, heap, TCG translation cache, device buffers) is
    QEMU's own overhead.
    """
    proc = psutil.Process(pid)
    rss_kb = proc.memory_info().rss // 1024
    ram_kb = guest_ram_mb * 1024
    guest_rss_kb = 0
    best = -1
    size_kb = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            if line.startswith("Size:"):
                size_kb = int(line.split()[1])
            elif line.startswith("Rss:") and size_kb >= ram_kb and (
                    best < 0 or size_kb < best):
                best = size_kb
                guest_rss_kb = int(line.split()[1])
    return {"rss_mb": round(rss_kb / 1024, 1),
            "guest_resident_mb": round(guest_rss_kb / 1024, 1),
            "overhead_mb": round((rss_kb - guest_rss_kb) / 1024, 1)}
