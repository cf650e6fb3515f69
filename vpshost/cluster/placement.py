"""Pick a host with room for a guest, under per-type overcommit ratios. Pure logic."""

from __future__ import annotations

from dataclasses import dataclass

from vpshost.config import Ratios
from vpshost.errors import Conflict
from vpshost.models import Plan


@dataclass(frozen=True)
class HostLoad:
    name: str
    cpus: int
    memory_mb: int
    disk_mb: int
    used_vcpus: int = 0  # committed by guests of the type being placed
    used_memory_mb: int = 0
    used_disk_mb: int = 0
    usable: bool = True  # active, reachable, and able to run the type


RESOURCES = ("vcpus", "memory", "disk")


def headroom(host: HostLoad, plan: Plan, ratios: Ratios) -> dict[str, float]:
    """Fraction of each resource's overcommitted capacity left after adding ``plan``
    (negative: it does not fit)."""
    caps = {"vcpus": host.cpus * ratios.vcpu, "memory": host.memory_mb * ratios.memory,
            "disk": host.disk_mb * ratios.disk}
    after = {"vcpus": host.used_vcpus + plan.vcpus,
             "memory": host.used_memory_mb + plan.memory_mb,
             "disk": host.used_disk_mb + plan.disk_mb}
    return {r: (caps[r] - after[r]) / caps[r] if caps[r] else -1.0 for r in RESOURCES}


def place(hosts: list[HostLoad], plan: Plan, ratios: Ratios, kind: str) -> str:
    """The usable host whose tightest resource keeps the most room afterwards
    (spreads load; the same answer for the same inputs)."""
    best: tuple[float, str] | None = None
    tightest: tuple[float, str, str] | None = None
    for h in hosts:
        if not h.usable:
            continue
        room = headroom(h, plan, ratios)
        worst = min(RESOURCES, key=lambda r: room[r])
        if room[worst] >= 0:
            if best is None or (room[worst], h.name) > best:
                best = (room[worst], h.name)
        elif tightest is None or room[worst] > tightest[0]:
            tightest = (room[worst], h.name, worst)
    if best:
        return best[1]
    if tightest is None:
        raise Conflict(f"no host can run {kind} guests", "add one with `vps host add` or "
                       "activate a drained host")
    _, host, resource = tightest
    h = next(x for x in hosts if x.name == host)
    detail = {
        "vcpus": f"{h.used_vcpus} + {plan.vcpus} vCPUs > {h.cpus} CPUs x {ratios.vcpu:g}",
        "memory": f"{h.used_memory_mb} + {plan.memory_mb} MiB > {h.memory_mb} MiB x "
                  f"{ratios.memory:g}",
        "disk": f"{h.used_disk_mb} + {plan.disk_mb} MiB > {h.disk_mb} MiB x {ratios.disk:g}",
    }[resource]
    raise Conflict(f"no host has room for this {kind}: the tightest resource is {resource} "
                   f"(best candidate {host}: {detail})",
                   "use a smaller plan, add a host, or raise [overcommit] ratios")
