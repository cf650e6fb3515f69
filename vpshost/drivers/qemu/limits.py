"""Limits QEMU cannot enforce itself: CPU cap/weight through the QEMU process's cgroup,
network bandwidth through tc on the tap. (Memory is the balloon; disk I/O is QEMU's
own throttling, see cmdline.throttle_opts and driver.set_limits.)"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from vpshost.errors import RuntimeFailure
from vpshost.host import cgroups, network
from vpshost.models import Plan

log = logging.getLogger(__name__)
PARENT = "vpshost"


def cgroup_dir(name: str) -> Path:
    """The VM's CPU cgroup: v1 cpu/vpshost/vm-<name>, v2 vpshost/vm-<name>."""
    if cgroups.layout(cgroups.ROOT) is cgroups.Layout.V2:
        return cgroups.ROOT / PARENT / f"vm-{name}"
    return cgroups.ROOT / "cpu" / PARENT / f"vm-{name}"


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def apply_cpu(name: str, pid: int, plan: Plan) -> Path:
    """Put QEMU (all its threads) in the VM's cgroup and set the cap and weight there."""
    d = cgroup_dir(name)
    v2 = cgroups.layout(cgroups.ROOT) is cgroups.Layout.V2
    if v2:
        parent = d.parent
        parent.mkdir(exist_ok=True)
        with contextlib.suppress(RuntimeFailure):
            _write(cgroups.ROOT / "cgroup.subtree_control", "+cpu")
        with contextlib.suppress(RuntimeFailure):
            _write(parent / "cgroup.subtree_control", "+cpu")
    d.mkdir(parents=True, exist_ok=True)
    period = cgroups.CFS_PERIOD_US
    quota = plan.cpu_cap_pct * period // 100 if plan.cpu_cap_pct else 0
    if v2:
        _write(d / "cpu.max", f"{quota or 'max'} {period}")
        _write(d / "cpu.weight", str(plan.cpu_weight))
    else:
        _write(d / "cpu.cfs_period_us", str(period))
        _write(d / "cpu.cfs_quota_us", str(quota or -1))
        _write(d / "cpu.shares", str(max(2, plan.cpu_weight * 1024 // 100)))
    _write(d / "cgroup.procs", str(pid))
    return d


def remove_cpu(name: str, wait: float = 3.0) -> None:
    """Remove the VM's cgroup once QEMU is gone. A process that just died stays a
    member for a moment (EBUSY), so retry briefly; give up quietly after ``wait``."""
    d = cgroup_dir(name)
    end = time.monotonic() + wait
    while d.exists():
        try:
            d.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > end:
                log.warning("cgroup %s still busy; left in place", d)
                return
            time.sleep(0.05)


def apply_bandwidth(tap: str, mbit: int) -> None:
    """Both directions of the tap: egress is the guest's download, ingress its upload."""
    if mbit:
        network.set_egress_limit(tap, mbit)
        network.set_ingress_limit(tap, mbit)
    else:
        network.clear_limits(tap)
