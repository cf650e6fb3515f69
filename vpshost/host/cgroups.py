"""Plan limits as cgroup settings, for cgroup v1 (and hybrid) and v2 hosts.

LXC applies these itself at start (``lxc.cgroup.*`` / ``lxc.cgroup2.*`` keys), and the
same table serves live changes through ``lxc-cgroup``.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from vpshost.models import Plan

ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000


class Layout(StrEnum):
    V1 = "v1"
    V2 = "v2"
    HYBRID = "hybrid"  # v1 controllers plus a v2 hierarchy at /sys/fs/cgroup/unified


def layout(root: Path = ROOT) -> Layout:
    if (root / "cgroup.controllers").exists():
        return Layout.V2
    if (root / "unified").is_dir():
        return Layout.HYBRID
    return Layout.V1


def swap_accounting(root: Path = ROOT) -> bool:
    """On v1, swap can be limited only where the kernel accounts it (swapaccount=1)."""
    if layout(root) is Layout.V2:
        return True
    return (root / "memory" / "memory.memsw.limit_in_bytes").exists()


def cpuset_for(index: int, vcpus: int, host_cpus: int | None = None) -> str:
    """Pick ``vcpus`` host CPUs, rotating the start so guests spread over the host."""
    n = host_cpus or os.cpu_count() or 1
    vcpus = min(vcpus, n)
    start = index % n
    cpus = sorted((start + i) % n for i in range(vcpus))
    return ",".join(str(c) for c in cpus)


def plan_settings(plan: Plan, index: int, kind: Layout, swap: bool = True,
                  host_cpus: int | None = None) -> dict[str, str]:
    """The cgroup files and values that enforce ``plan`` (block I/O excluded: see io_settings)."""
    mem = plan.memory_mb * 1024 * 1024
    cpus = cpuset_for(index, plan.vcpus, host_cpus)
    if kind is Layout.V2:
        out = {
            "cpuset.cpus": cpus,
            "cpu.weight": str(plan.cpu_weight),
            "cpu.max": (f"{plan.cpu_cap_pct * CFS_PERIOD_US // 100} {CFS_PERIOD_US}"
                        if plan.cpu_cap_pct else f"max {CFS_PERIOD_US}"),
            "memory.max": str(mem),
            "memory.swap.max": str(plan.swap_mb * 1024 * 1024),
            "pids.max": str(plan.max_procs) if plan.max_procs else "max",
        }
        return out
    out = {
        "cpuset.cpus": cpus,
        # v1 shares default to 1024 where v2 weight defaults to 100
        "cpu.shares": str(max(2, plan.cpu_weight * 1024 // 100)),
        "cpu.cfs_period_us": str(CFS_PERIOD_US),
        "cpu.cfs_quota_us": (str(plan.cpu_cap_pct * CFS_PERIOD_US // 100)
                             if plan.cpu_cap_pct else "-1"),
        "memory.limit_in_bytes": str(mem),
        "pids.max": str(plan.max_procs) if plan.max_procs else "max",
    }
    if swap:
        out["memory.memsw.limit_in_bytes"] = str(mem + plan.swap_mb * 1024 * 1024)
    return out


def io_settings(plan: Plan, device: str, kind: Layout) -> dict[str, str]:
    """Block I/O limits for the block device ``device`` ('major:minor')."""
    limits = {"rbps": plan.io_read_bps, "wbps": plan.io_write_bps,
              "riops": plan.io_read_iops, "wiops": plan.io_write_iops}
    if kind is Layout.V2:
        return {"io.max": device + " " + " ".join(
            f"{k}={v or 'max'}" for k, v in limits.items())}
    files = {"rbps": "blkio.throttle.read_bps_device",
             "wbps": "blkio.throttle.write_bps_device",
             "riops": "blkio.throttle.read_iops_device",
             "wiops": "blkio.throttle.write_iops_device"}
    # 0 removes a v1 throttle rule
    return {files[k]: f"{device} {v}" for k, v in limits.items()}


def lxc_keys(settings: dict[str, str], kind: Layout) -> list[str]:
    prefix = "lxc.cgroup2" if kind is Layout.V2 else "lxc.cgroup"
    return [f"{prefix}.{k} = {v}" for k, v in settings.items()]
