"""`vps top`: a live view of every running instance's noisy-neighbour figures.

Rates come from two samples a second apart. Columns: CPU% (of one core), WAIT% (time
runnable but not running: steal as the guest feels it), THR/s (CFS periods throttled
by the cap), memory and its limit, OOM kills, disk and network per second, and PSI
cpu/mem/io "some" avg10 where the kernel gives it per cgroup.
"""

from __future__ import annotations

import contextlib
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vpshost import metrics


def _size(n: float | None, per_s: bool = False) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1024 or unit == "G":
            text = f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
            return text + ("/s" if per_s else "")
        n /= 1024
    return str(n)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def frame(before: dict[str, Any], after: list[dict[str, Any]],
          host: dict[str, Any]) -> Group:
    """One screen: a host line and a table, from two rounds of samples."""
    t = Table("NAME", "TYPE", "TENANT", "CPU%", "WAIT%", "THR/s", "MEM", "LIMIT", "OOM",
              "DISK R", "DISK W", "NET RX", "NET TX", "PSI cpu/mem/io", box=None,
              header_style="bold")
    for s in sorted(after, key=lambda x: x["name"]):
        b = before.get(s["name"])
        r = metrics.rates(b, s) if b else {}
        psi = "/".join(_pct(s.get(f"psi_{res}_some_avg10")) for res in metrics.PSI_RESOURCES)
        if "psi" in s["unavailable"]:
            psi = "n/a"
        t.add_row(s["name"], s["type"], s["tenant"], _pct(r.get("cpu_pct")),
                  _pct(r.get("wait_pct")), _pct(r.get("throttled_per_s")),
                  _size(s.get("memory_bytes")), _size(s.get("memory_limit_bytes")),
                  str(s.get("memory_oom_kills") if s.get("memory_oom_kills") is not None
                      else "-"),
                  _size(r.get("io_read_bps"), True), _size(r.get("io_write_bps"), True),
                  _size(r.get("net_rx_bps"), True), _size(r.get("net_tx_bps"), True), psi)
    avail = host.get("memory_available_bytes", 0)
    total = host.get("memory_total_bytes", 1)
    head = (f"host: {len(after)} running  memory available {_size(avail)} of "
            f"{_size(total)}  PSI some avg10 cpu {_pct(host.get('psi_cpu_some_avg10'))} "
            f"mem {_pct(host.get('psi_memory_some_avg10'))} "
            f"io {_pct(host.get('psi_io_some_avg10'))}")
    if "ksm_pages_sharing" in host:
        head += f"  KSM run={host.get('ksm_run')} saved {_size(host.get('ksm_saved_bytes'))}"
    return Group(Text(head), t, Text("q or Ctrl-C quits; WAIT% = runnable but waiting for "
                                     "a host CPU", style="dim"))


def _round(svc: Any) -> list[dict[str, Any]]:
    return metrics.collect(svc)


@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """cbreak mode on a terminal so a single q is read; no-op otherwise."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _quit_pressed(interval: float, interactive: bool) -> bool:
    if not interactive:
        time.sleep(interval)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], interval)
    return bool(ready) and sys.stdin.read(1).lower() == "q"


def run_top(svc: Any, once: bool = False, interval: float = 1.0,
            console: Console | None = None) -> None:
    con = console or Console()
    if not con.is_terminal:  # a pipe or a test: do not squeeze the table to 80 columns
        con = Console(width=180)
    prev = {s["name"]: s for s in _round(svc)}
    if once:
        time.sleep(interval)
        con.print(frame(prev, _round(svc), metrics.host_sample()))
        return
    with _keys() as interactive, Live(Text("sampling..."), console=con,
                                      refresh_per_second=4, screen=False) as live:
        try:
            while not _quit_pressed(interval, interactive):
                now = _round(svc)
                live.update(frame(prev, now, metrics.host_sample()))
                prev = {s["name"]: s for s in now}
        except KeyboardInterrupt:
            pass
