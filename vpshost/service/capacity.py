"""Admission control with per-type overcommit ratios, and the capacity report.

The model: a host has P physical units of each resource (CPUs, MiB of memory, MiB of
the state directory's filesystem). A type with ratio r may sell r units per physical
unit, so a guest of that type committing c units *costs* c / r physical units. A new
guest is admitted while the summed cost of every guest on the host, of every type,
stays within P. With one type on the host this is the familiar "committed <= P x r";
with several, a generous container ratio cannot eat the room a VM ratio of 1.0 needs.

Everything here is pure except ``check`` and ``report``, which read the store and
the host through the Service.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vpshost.config import OvercommitConfig, Ratios
from vpshost.errors import UsageError
from vpshost.models import GUEST_TYPES, Plan

RESOURCES = ("vcpu", "memory", "disk")
UNITS = {"vcpu": "vCPUs", "memory": "MiB", "disk": "MiB"}
PHYSICAL_UNITS = {"vcpu": "CPUs", "memory": "MiB", "disk": "MiB"}


class CapacityError(UsageError):
    """The host is full for this guest under the configured ratios."""


@dataclass(frozen=True)
class Commit:
    """What one existing guest has been sold."""

    type: str
    vcpu: int
    memory: int
    disk: int


@dataclass(frozen=True)
class Physical:
    vcpu: int
    memory: int
    disk: int


def ratio(ratios: Ratios, resource: str) -> float:
    value = float(getattr(ratios, resource))
    return value if value > 0 else 1.0


def committed(commits: Iterable[Commit]) -> dict[str, dict[str, int]]:
    """Committed units per type and resource."""
    out = {t: dict.fromkeys(RESOURCES, 0) for t in GUEST_TYPES}
    for c in commits:
        row = out.setdefault(c.type, dict.fromkeys(RESOURCES, 0))
        for r in RESOURCES:
            row[r] += getattr(c, r)
    return out


def cost(by_type: dict[str, dict[str, int]], ratios: OvercommitConfig) -> dict[str, float]:
    """Physical units used per resource: every type's commitment divided by its ratio."""
    return {r: sum(units[r] / ratio(ratios.for_type(t), r) for t, units in by_type.items())
            for r in RESOURCES}


def admit(phys: Physical, commits: Iterable[Commit], ratios: OvercommitConfig, kind: str,
          plan: Plan) -> None:
    """Raise CapacityError naming the tightest resource when ``plan`` does not fit."""
    by_type = committed(commits)
    used = cost(by_type, ratios)
    r_kind = ratios.for_type(kind)
    asked = {"vcpu": plan.vcpus, "memory": plan.memory_mb, "disk": plan.disk_mb}
    over = {}
    for r in RESOURCES:
        after = used[r] + asked[r] / ratio(r_kind, r)
        total = getattr(phys, r)
        if after > total + 1e-9:
            over[r] = after / total if total else float("inf")
    if not over:
        return
    worst = max(over, key=lambda r: over[r])
    f = ratio(r_kind, worst)
    mine = by_type.get(kind, {}).get(worst, 0)
    others = used[worst] - mine / f
    total = getattr(phys, worst)
    # what this type could still sell, in its own units
    room = max(0.0, (total - others) * f - mine)
    detail = (f"{kind} guests have {mine} {UNITS[worst]} committed, this one asks for "
              f"{asked[worst]}; the host has {total} {PHYSICAL_UNITS[worst]} x {f:g} "
              f"({worst} ratio for {kind})")
    if others > 0:
        detail += f", of which other types already use {others:.0f}"
    raise CapacityError(
        f"not enough {worst} for this {kind}: {detail}; {int(room)} {UNITS[worst]} left",
        f"use a plan with at most {int(room)} {UNITS[worst]} of {worst}, delete guests, or "
        f"raise [overcommit.{kind}] {worst} in the config (see `vps host capacity`)")


def summary(phys: Physical, commits: Iterable[Commit],
            ratios: OvercommitConfig) -> dict[str, Any]:
    """The capacity report: per type committed units, ratio and physical cost."""
    by_type = committed(commits)
    used = cost(by_type, ratios)
    types = {}
    for t, units in by_type.items():
        rt = ratios.for_type(t)
        types[t] = {r: {"committed": units[r], "ratio": ratio(rt, r),
                        "physical_cost": round(units[r] / ratio(rt, r), 2),
                        # what this type can still sell, in its own units
                        "available": int(max(0.0, getattr(phys, r) - used[r])
                                         * ratio(rt, r))}
                    for r in RESOURCES}
    return {"physical": {r: getattr(phys, r) for r in RESOURCES},
            "used": {r: round(used[r], 2) for r in RESOURCES},
            "used_pct": {r: round(100 * used[r] / getattr(phys, r), 1) if getattr(phys, r)
                         else 0.0 for r in RESOURCES},
            "types": types}


# -- Service-facing ------------------------------------------------------------------------
def physical(svc: Any) -> Physical:
    import psutil

    svc.config.state_dir.mkdir(parents=True, exist_ok=True)
    return Physical(vcpu=os.cpu_count() or 1,
                    memory=psutil.virtual_memory().total // 2**20,
                    disk=shutil.disk_usage(svc.config.state_dir).total // 2**20)


def commits_of(svc: Any, exclude: str | None = None) -> list[Commit]:
    """Every guest of this host in the store, in any state: a stopped guest may start."""
    from sqlalchemy import select

    from vpshost.store.schema import Instance

    with svc.db.session() as s:
        rows = s.execute(select(Instance.name, Instance.type, Instance.vcpus,
                                Instance.memory_mb, Instance.disk_mb)
                         .where(Instance.host == svc.host)).all()
    return [Commit(t, v, m, d) for n, t, v, m, d in rows if n != exclude]


def check(svc: Any, kind: str, plan: Plan, exclude: str | None = None) -> None:
    """Admission control for a create (or a resize of ``exclude``)."""
    admit(physical(svc), commits_of(svc, exclude), svc.config.overcommit, kind, plan)


def report(svc: Any) -> dict[str, Any]:
    """`vps host capacity`: the summary plus KSM sharing and balloon reclaim."""
    from vpshost.host import ksm

    out = summary(physical(svc), commits_of(svc), svc.config.overcommit)
    out["ksm"] = ksm.status()
    return out
