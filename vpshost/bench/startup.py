"""Start-up: create-to-ready per type, through the public service API.

Ready means usable: a container answers `exec true`; a VM's guest agent answers (what
`vps create --start` itself waits for). Delete is not timed.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from vpshost.bench.guests import BenchEnv
from vpshost.models import Plan


def run(env: BenchEnv, kind: str, reps: int, plan: Plan, progress: Any) -> dict[str, Any]:
    times = []
    for i in range(reps):
        progress(f"start-up: {kind} {i + 1}/{reps}")
        t0 = time.monotonic()
        p = env.create(kind, plan, prefix="u")
        times.append(time.monotonic() - t0)
        env.delete(p.name)
    return {"runs": reps, "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3), "max_s": round(max(times), 3)}
