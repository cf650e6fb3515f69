"""What this host is and can do: `vps host info`.

JSON keys (stable): kernel, cores, memory_mb, cgroup ("v1" | "v2" | "hybrid"),
swap_accounting, lxc_version, lxcfs, qemu_version, kvm ("native" | "tcg-only"),
kvm_detail, xen_dom0, state_dir, state_dir_free_mb.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

import psutil

from vpshost.config import Config
from vpshost.host import cgroups, lxcfs
from vpshost.runner import run


def _version(argv: list[str], pattern: str) -> str | None:
    if not shutil.which(argv[0]):
        return None
    r = run(argv, check=False, timeout=10)
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else None


def cpu_has_virt() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE))


def kvm_usable() -> tuple[bool, str]:
    """KVM counts only with a VT-x/AMD-V flag *and* a working /dev/kvm: an emulated
    /dev/kvm without the flag runs guests instruction by instruction and fails on
    stock kernels, so TCG is the honest choice there."""
    dev = Path("/dev/kvm")
    if not dev.exists():
        return False, "no /dev/kvm"
    if not cpu_has_virt():
        return False, "/dev/kvm exists but the CPU has no vmx/svm flag (emulated KVM)"
    try:
        fd = os.open(dev, os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return False, f"/dev/kvm cannot be opened: {exc.strerror}"
    return True, "CPU virtualization flag and /dev/kvm present"


def is_xen_dom0() -> bool:
    caps = Path("/proc/xen/capabilities")
    try:
        return "control_d" in caps.read_text()
    except OSError:
        return False


def info(cfg: Config) -> dict[str, Any]:
    kvm, kvm_detail = kvm_usable()
    state = cfg.state_dir if cfg.state_dir.exists() else cfg.state_dir.parent
    lxcfs_up = lxcfs.serving(Path(cfg.container.lxcfs_dir))
    return {
        "kernel": platform.release(),
        "cores": os.cpu_count() or 1,
        "memory_mb": psutil.virtual_memory().total // (1024 * 1024),
        "cgroup": str(cgroups.layout()),
        "swap_accounting": cgroups.swap_accounting(),
        "lxc_version": _version(["lxc-start", "--version"], r"(\d+\.\d+(?:\.\d+)?)"),
        "lxcfs": lxcfs_up,
        "qemu_version": _version(["qemu-system-x86_64", "--version"], r"version (\S+)"),
        "kvm": "native" if kvm else "tcg-only",
        "kvm_detail": kvm_detail,
        "xen_dom0": is_xen_dom0(),
        "state_dir": str(cfg.state_dir),
        "state_dir_free_mb": shutil.disk_usage(state).free // (1024 * 1024),
    }
