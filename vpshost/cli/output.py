"""How the CLI prints: Rich tables for people, stable JSON for programs."""

from __future__ import annotations

import json
import sys
from typing import Any

from vpshost.units import format_mb


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _limits(i: dict[str, Any]) -> str:
    parts = [f"{i['cpus']} cpu", f"{format_mb(i['memory_mb'])} mem",
             f"{format_mb(i['disk_mb'])} disk"]
    if i["swap_mb"]:
        parts.append(f"{format_mb(i['swap_mb'])} swap")
    if i["cpu_cap_pct"]:
        parts.append(f"cap {i['cpu_cap_pct']}%")
    if i["max_procs"]:
        parts.append(f"{i['max_procs']} procs")
    return ", ".join(parts)


STATE_STYLE = {"running": "green", "stopped": "dim", "error": "red", "paused": "yellow"}


def instance_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("NAME", "TYPE", "STATE", "ADDRESS", "IMAGE", "CPU", "MEM", "SWAP", "DISK"):
        table.add_column(col, no_wrap=True,
                         justify="right" if col in ("CPU", "MEM", "SWAP", "DISK") else "left")
    for i in rows:
        style = STATE_STYLE.get(i["state"], "cyan")
        table.add_row(i["name"], i["type"], f"[{style}]{i['state']}[/]", i["ip"] or "-",
                      i["image"], str(i["cpus"]), format_mb(i["memory_mb"]),
                      format_mb(i["swap_mb"]) if i["swap_mb"] else "-",
                      format_mb(i["disk_mb"]))
    Console().print(table)


def instance_detail(i: dict[str, Any]) -> None:
    from rich.console import Console

    con = Console()
    con.print(f"[bold]{i['name']}[/]  {i['type']}  [{STATE_STYLE.get(i['state'], 'cyan')}]"
              f"{i['state']}[/]")
    fields = [("image", i["image"]), ("address", i["ip"] or "-"), ("host", i["host"]),
              ("tenant", i["tenant"]), ("limits", _limits(i))]
    if i["type"] == "container":
        fields.append(("privileged", "yes" if i["privileged"] else "no (user namespace)"))
    for k in ("io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops",
              "bandwidth_mbit", "cpu_weight"):
        if i.get(k) and not (k == "cpu_weight" and i[k] == 100):
            fields.append((k, str(i[k])))
    for key, value in (i.get("options") or {}).items():
        fields.append((key, str(value)))
    if i.get("last_error"):
        fields.append(("last error", f"[red]{i['last_error']}[/]"))
    for p in i.get("ports", []):
        fields.append(("port", f"{p['proto']} host:{p['host_port']} -> {p['guest_port']}"))
    if i.get("snapshots"):
        fields.append(("snapshots", ", ".join(i["snapshots"])))
    for key, value in (i.get("stats") or {}).items():
        fields.append((key, str(value)))
    for k, v in fields:
        con.print(f"  {k:<12} {v}")
    if i.get("events"):
        con.print("  [bold]recent events[/]")
        for e in i["events"][:8]:
            con.print(f"    {e['time'][:19]}  {e['kind']:<14} {e['message']}")
