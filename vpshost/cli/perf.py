"""Rendering for `vps host capacity` and `vps host reclaim` (kept out of main.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vpshost.service.capacity import PHYSICAL_UNITS, RESOURCES, UNITS


def capacity_table(data: dict[str, Any], console: Console | None = None) -> None:
    con = console or Console()
    phys, used = data["physical"], data["used"]
    con.print("[bold]physical[/]  " + "   ".join(
        f"{r}: {used[r]:g} of {phys[r]} {PHYSICAL_UNITS[r]} used ({data['used_pct'][r]}%)"
        for r in RESOURCES))
    t = Table("type", "resource", "committed", "ratio", "physical cost", "still sellable",
              box=None)
    for kind, res in data["types"].items():
        for r in RESOURCES:
            v = res[r]
            t.add_row(kind, r, f"{v['committed']} {UNITS[r]}", f"{v['ratio']:g}x",
                      f"{v['physical_cost']:g} {PHYSICAL_UNITS[r]}",
                      f"{v['available']} {UNITS[r]}")
    con.print(t)
    k = data.get("ksm", {})
    if k.get("available"):
        con.print(f"KSM: run={k.get('run')}  pages_sharing={k.get('pages_sharing')}  "
                  f"saved {k.get('saved_mb')} MiB")
    else:
        con.print("KSM: not available in this kernel")
    con.print("[dim]a guest costs committed / ratio physical units; admission keeps the sum "
              "over all types within the host[/]")


def reclaim_lines(actions: list[dict[str, Any]]) -> list[str]:
    if not actions:
        return ["nothing to do"]
    return [f"{a['name']}: {a['action']} {a['from_mb']}M -> {a['to_mb']}M ({a['why']})"
            for a in actions]
