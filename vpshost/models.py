"""Plain value objects passed between the service and the drivers.

Drivers receive a ``Guest`` describing everything they need and keep nothing: all
that must survive lives in the store, written only by the service layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpshost.errors import UsageError

GUEST_TYPES = ("container", "vm", "xen")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")


def check_name(name: str) -> str:
    # fullmatch: '$' alone would also accept a trailing newline ('web\n')
    if not _NAME.fullmatch(name) or "--" in name:
        raise UsageError(
            f"invalid name '{name}'",
            "use 2-32 characters: lower-case letters, digits and single hyphens, "
            "starting with a letter and not ending with a hyphen")
    return name


def check_type(kind: str) -> str:
    if kind not in GUEST_TYPES:
        raise UsageError(f"unknown type '{kind}'", f"choose one of {', '.join(GUEST_TYPES)}")
    return kind


@dataclass(frozen=True)
class Plan:
    """What a guest may use. Sizes in MiB; 0 in an optional limit means unlimited."""

    vcpus: int = 1
    memory_mb: int = 256
    swap_mb: int = 0
    disk_mb: int = 1024
    cpu_cap_pct: int = 0  # 0: no cap; 50 = half a core, 200 = two cores
    cpu_weight: int = 100  # relative share under contention (cgroup v2 scale 1..10000)
    io_read_bps: int = 0
    io_write_bps: int = 0
    io_read_iops: int = 0
    io_write_iops: int = 0
    bandwidth_mbit: int = 0
    max_procs: int = 0

    def validate(self) -> Plan:
        problems = []
        if self.vcpus < 1:
            problems.append("vcpus must be at least 1")
        if self.memory_mb < 16:
            problems.append("memory must be at least 16M")
        if self.disk_mb < 16:
            problems.append("disk must be at least 16M")
        if self.swap_mb < 0:
            problems.append("swap cannot be negative")
        if not 0 <= self.cpu_cap_pct <= 100 * 1024:
            problems.append("cpu cap must be between 0 and vcpus*100 percent")
        if not 1 <= self.cpu_weight <= 10000:
            problems.append("cpu weight must be between 1 and 10000")
        for key in ("io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops",
                    "bandwidth_mbit", "max_procs"):
            if getattr(self, key) < 0:
                problems.append(f"{key} cannot be negative")
        if self.max_procs and self.max_procs < 8:
            problems.append("max processes must be 0 (unlimited) or at least 8")
        if problems:
            raise UsageError("invalid plan: " + "; ".join(problems))
        return self


@dataclass(frozen=True)
class NetSpec:
    ip: str
    prefixlen: int
    gateway: str
    bridge: str
    mac: str
    ip6: str = ""
    prefixlen6: int = 64
    gateway6: str = ""


@dataclass(frozen=True)
class Guest:
    """Everything a driver needs to act on one guest."""

    id: int
    name: str
    type: str
    image: str
    plan: Plan
    net: NetSpec | None
    dir: Path  # the guest's own directory; drivers derive every path from it
    privileged: bool = False
    options: dict[str, Any] = field(default_factory=dict)
