"""Balloon reclaim: when the host runs short of memory, take it back from idle VMs.

One pass (``tick``): switch KSM on while VMs run; if MemAvailable is below
``[reclaim] free_threshold_mb``, watch every running VM's QEMU CPU time for
``window_s`` and shrink the balloon of each idle one (below ``idle_cpu_pct``) to its
floor (``floor_pct`` of the plan, at least ``floor_min_mb``). When memory is plentiful
again (threshold plus what re-inflating needs, plus half the threshold as hysteresis)
reclaimed VMs get their plan's memory back. The plan in the store never changes: the
balloon's current size (shown by `vps show` under stats.balloon_mb) says whether a VM
is reclaimed, and every change is an event ("reclaimed", "restored-memory").
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import replace
from typing import Any

import psutil
from sqlalchemy import select

from vpshost.config import ReclaimConfig
from vpshost.errors import VpsError
from vpshost.host import ksm
from vpshost.store.schema import Instance

log = logging.getLogger(__name__)


def floor_mb(plan_mb: int, cfg: ReclaimConfig) -> int:
    """The smallest balloon target reclaim sets for a VM of ``plan_mb``."""
    return min(plan_mb, max(cfg.floor_min_mb, plan_mb * cfg.floor_pct // 100))


def idle_vms(cpu_before: dict[str, float], cpu_after: dict[str, float], window_s: float,
             threshold_pct: float) -> list[str]:
    """Names whose CPU use over the window stayed under the threshold (pure)."""
    return sorted(n for n, a in cpu_after.items() if n in cpu_before
                  and (a - cpu_before[n]) / max(window_s, 1e-3) * 100 < threshold_pct)


def _cpu_seconds(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    return None


def _running_vms(svc: Any) -> list[Instance]:
    with svc.db.session() as s:
        rows = list(s.scalars(select(Instance).where(
            Instance.type == "vm", Instance.state == "running", Instance.host == svc.host)))
        s.expunge_all()
    return rows


def tick(svc: Any, available_mb: int | None = None) -> list[dict[str, Any]]:
    """One reclaim pass; returns what it did (also recorded as events)."""
    cfg: ReclaimConfig = svc.config.reclaim
    rows = _running_vms(svc)
    if cfg.ksm and rows:
        ksm.enable()
    if not rows:
        return []
    drv = svc.driver("vm")
    guests = {r.name: svc.guest(r) for r in rows}
    stats = {}
    for name, g in guests.items():
        with contextlib.suppress(VpsError):
            stats[name] = drv.stats(g)
    avail = available_mb if available_mb is not None else \
        psutil.virtual_memory().available // 2**20
    actions: list[dict[str, Any]] = []
    if avail >= cfg.free_threshold_mb:
        gaps = {n: g.plan.memory_mb - int(stats.get(n, {}).get("balloon_mb", g.plan.memory_mb))
                for n, g in guests.items()}
        need = sum(v for v in gaps.values() if v > 0)
        if need and avail - need >= cfg.free_threshold_mb * 1.5:
            for n, gap in gaps.items():
                if gap > 0:
                    actions.append(_resize(svc, drv, guests[n], guests[n].plan.memory_mb,
                                           stats[n]["balloon_mb"], "restored-memory",
                                           f"host MemAvailable {avail}M is plentiful again"))
        return actions
    before = {n: c for n, s in stats.items() if "pid" in s
              and (c := _cpu_seconds(int(s["pid"]))) is not None}
    time.sleep(cfg.window_s)
    after = {n: c for n, s in stats.items() if "pid" in s
             and (c := _cpu_seconds(int(s["pid"]))) is not None}
    for name in idle_vms(before, after, cfg.window_s, cfg.idle_cpu_pct):
        g = guests[name]
        current = int(stats[name].get("balloon_mb") or g.plan.memory_mb)
        target = floor_mb(g.plan.memory_mb, cfg)
        if current <= target:
            continue
        pct = (after[name] - before[name]) / cfg.window_s * 100
        actions.append(_resize(svc, drv, g, target, current, "reclaimed",
                               f"host MemAvailable {avail}M < {cfg.free_threshold_mb}M; idle "
                               f"({pct:.1f}% CPU over {cfg.window_s:g}s)"))
    return actions


def _resize(svc: Any, drv: Any, guest: Any, target: int, current: int, kind: str,
            why: str) -> dict[str, Any]:
    """Set the balloon through the driver and record it through the service."""
    drv.set_limits(guest, replace(guest.plan, memory_mb=target))
    msg = f"balloon {current}M -> {target}M of a {guest.plan.memory_mb}M plan: {why}"
    svc.record(guest.name, kind, msg)
    return {"name": guest.name, "action": kind, "from_mb": current, "to_mb": target,
            "why": why}


def start_background(svc: Any) -> threading.Event:
    """Run ``tick`` every ``[reclaim] interval_s`` in a daemon thread (vps serve);
    set the returned event to stop it. interval_s = 0 disables it."""
    stop = threading.Event()
    interval = svc.config.reclaim.interval_s
    if interval <= 0:
        return stop

    def loop() -> None:
        while not stop.wait(interval):
            try:
                tick(svc)
            except Exception as exc:  # one bad pass must not end reclaim for good
                log.warning("reclaim pass failed: %s", exc)

    threading.Thread(target=loop, name="vps-reclaim", daemon=True).start()
    return stop
