"""Kernel samepage merging: identical guest pages shared between VMs.

QEMU marks guest RAM mergeable by default (``mem-merge=on``); the kernel only scans
while ``/sys/kernel/mm/ksm/run`` is 1. We switch it on while VMs run and report how
much it saves: ``pages_sharing`` is the number of pages that now point at a shared one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

KSM = Path("/sys/kernel/mm/ksm")
FIELDS = ("run", "pages_shared", "pages_sharing", "pages_unshared", "full_scans")


def available(root: Path = KSM) -> bool:
    return (root / "run").exists()


def status(root: Path = KSM) -> dict[str, Any]:
    """run, page counters, and the memory saved in MiB (pages_sharing x page size)."""
    if not available(root):
        return {"available": False}
    out: dict[str, Any] = {"available": True}
    for f in FIELDS:
        with contextlib.suppress(OSError, ValueError):
            out[f] = int((root / f).read_text().split()[0])
    page = os.sysconf("SC_PAGE_SIZE")
    out["saved_mb"] = round(out.get("pages_sharing", 0) * page / 2**20, 1)
    return out


def enable(root: Path = KSM) -> bool:
    """Set run=1; False when the kernel has no KSM or refuses (not root)."""
    try:
        if (root / "run").read_text().strip() != "1":
            (root / "run").write_text("1")
        return True
    except OSError:
        return False
