"""`vps bench` with Rich progress: the expected time first, then each step as it runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console


def run_with_progress(mode: str, types: list[str] | None, out: Path | None) -> dict[str, Any]:
    from vpshost.bench.suite import MODES, run_suite

    con = Console(stderr=True)
    expected = MODES[mode]["expected_min"]
    con.print(f"[bold]vps bench ({mode})[/]: expect about {expected} minutes on a 2-core "
              "host with TCG VMs; guests run in a private state dir and subnet")
    t0 = time.monotonic()
    with con.status("starting") as status:
        def progress(msg: str) -> None:
            took = time.monotonic() - t0
            con.print(f"[dim]{took / 60:5.1f} min[/] {msg}")
            status.update(msg)

        result = run_suite(mode, types, out, progress)
    con.print(f"[green]done[/] in {result['duration_s'] / 60:.1f} min: "
              f"{result['out_dir']}/report.md")
    print(result["out_dir"])
    return result
