"""Scalability: 1, 2, 4, ... guests run the same CPU job at once.

Total throughput is the MiB all guests hashed divided by the time the slowest one took
(each job times itself on its guest's clock, so starting it through exec does not
count; the jobs are launched together and overlap). Native
runs the same number of busybox processes on the host. A guest whose job fails or
times out counts as a failure. On a 2-core host the ideal is flat total throughput
past 2 guests; what it loses beyond that is the per-guest overhead of the type.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vpshost.bench.guests import ELAPSED, TIMER, BenchEnv, Place, elapsed, why
from vpshost.bench.overhead import cpu_job
from vpshost.models import Plan


def _round(env: BenchEnv, places: list[Place], mib: int, timeout: float
           ) -> tuple[float, int]:
    job = TIMER + cpu_job(mib) + "; " + ELAPSED
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(places)) as pool:
        res = list(pool.map(lambda p: env.sh(p, job, timeout), places))
    took = [elapsed(out) for rc, out in res if rc == 0 and "ELAPSED" in out]
    slowest = max(took) if took else time.monotonic() - t0
    return slowest, len(places) - len(took)


def run(env: BenchEnv, kind: str, counts: list[int], mib: int, plan: Plan,
        progress: Any, native: Place | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    guests: list[Place] = []
    create_failed = 0
    create_error = ""
    for n in counts:
        if kind == "native" and native is not None:
            places = [native] * n
        else:
            while len(guests) < n:
                progress(f"scaling: {kind}, starting guest {len(guests) + 1}/{n}")
                try:
                    guests.append(env.create(kind, plan, prefix="s"))
                except Exception as exc:
                    create_failed += 1
                    create_error = f"guest {len(guests) + 1} failed to start: {why(exc)}"
                    break
            places = guests[:n]
        if len(places) < n:
            rows.append({"guests": n, "total_mibps": 0.0, "wall_s": None,
                         "failures": n - len(places) + create_failed,
                         "error": create_error})
            break
        progress(f"scaling: {kind} x {n}")
        wall, failed = _round(env, places, mib, timeout=max(120, 60 * n))
        done = n - failed
        rows.append({"guests": n, "wall_s": round(wall, 3),
                     "total_mibps": round(done * mib / wall, 2), "failures": failed})
    for g in guests:
        env.delete(g.name)
    return rows
