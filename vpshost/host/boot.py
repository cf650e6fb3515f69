"""Has this host rebooted since vpshost last compared its store with it?

After a reboot every local guest is stopped whatever the store says, so the first
vpshost command after it checks them all (an ordinary start checks only the rows a
crashed operation left in a transient state). The kernel's boot id tells a reboot
apart from a restart of vpshost; the last one seen is kept in the state dir.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MARKER = "boot-id"


def current() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def changed(state_dir: Path) -> bool:
    """True when the host booted since :func:`mark` last ran for ``state_dir``."""
    try:
        seen = (state_dir / MARKER).read_text().strip()
    except OSError:
        seen = ""
    return seen != current()


def mark(state_dir: Path) -> None:
    with contextlib.suppress(OSError):
        tmp = state_dir / (MARKER + ".tmp")
        tmp.write_text(current() + "\n")
        tmp.replace(state_dir / MARKER)
