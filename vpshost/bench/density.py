"""Density: idle guests started one after another, memory per guest measured, and how
many would fit extrapolated; stops at the configured count or at 90% host memory.

Memory per guest is counted per guest from the host side, after they settled idle:
a container's memory cgroup usage plus its LXC monitor process, a VM's QEMU resident
size (guest RAM it touched plus QEMU itself). The growth of the host's used memory
(MemTotal - MemAvailable) is reported beside it, but other work on the host moves that
figure, so the fit estimate uses the per-guest count.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from vpshost.bench.guests import BenchEnv, why
from vpshost.models import Plan


def _used_mb() -> float:
    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / 2**20


def _monitor_mb(name: str) -> float:
    """RSS of the `[lxc monitor] <lxcpath> <name>` process that babysits a container."""
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].startswith("[lxc monitor]") and cmd[-1] == name:
            return float(proc.info["memory_info"].rss) / 2**20
    return 0.0


def _per_guest_mb(env: BenchEnv, names: list[str]) -> float:
    from vpshost import metrics

    samples = [s for s in metrics.collect(env.svc) if s["name"] in names]
    if not samples:
        return float("nan")
    total = sum((s.get("memory_bytes") or 0) / 2**20 for s in samples)
    total += sum(_monitor_mb(s["name"]) for s in samples if s["type"] == "container")
    return total / len(samples)


def run(env: BenchEnv, kind: str, max_guests: int, plan: Plan, settle_s: float,
        progress: Any) -> dict[str, Any]:
    total = psutil.virtual_memory().total / 2**20
    time.sleep(1)
    before = _used_mb()
    names: list[str] = []
    failures = 0
    stop_reason = f"reached the configured maximum of {max_guests}"
    for i in range(max_guests):
        if _used_mb() > 0.9 * total:
            stop_reason = "host memory reached 90%"
            break
        progress(f"density: {kind} guest {i + 1}/{max_guests}")
        try:
            names.append(env.create(kind, plan, prefix="d").name)
        except Exception as exc:
            failures += 1
            stop_reason = f"guest {i + 1} failed to start: {why(exc)}"
            break
    time.sleep(settle_s)
    after = _used_mb()
    n = len(names)
    per = _per_guest_mb(env, names)
    delta = (after - before) / n if n else float("nan")
    avail_at_start = 0.9 * total - before
    out = {"guests": n, "failures": failures, "stop_reason": stop_reason,
           "host_used_mb_before": round(before), "host_used_mb_after": round(after),
           "mb_per_guest": round(per, 1), "host_delta_mb_per_guest": round(delta, 1),
           "fit_estimate": int(avail_at_start // per) if n and per > 0 else None,
           "plan_memory_mb": plan.memory_mb}
    for name in names:
        env.delete(name)
    return out
