"""What `vps migrate` shows while it works: the steps, and a live move's progress as a
Rich progress bar on a terminal, or as plain lines otherwise (a pipe, a log, --json).

The samples come from ``Service.migrate(sample=...)`` (see drivers/qemu/migrate.py for
their fields); the transfer rate is computed here, from consecutive samples.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

PLAIN_EVERY_S = 1.0  # plain lines: at most one a second per phase (a log stays short)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # not reached


def detail(sample: dict[str, Any], rate: float | None) -> str:
    """Bytes of the phase, what was sent in all, the rate, and RAM's dirtying."""
    parts = []
    if sample.get("total_bytes", 0) > 1:
        parts.append(f"{human_bytes(sample.get('done_bytes', 0))} of "
                     f"{human_bytes(sample['total_bytes'])}")
    if "transferred_bytes" in sample:
        parts.append(f"sent {human_bytes(sample['transferred_bytes'])}")
    if rate is not None:
        parts.append(f"{human_bytes(rate)}/s")
    if sample.get("dirty_pages_rate"):
        parts.append(f"dirty {sample['dirty_pages_rate']} pages/s")
    if sample.get("passes"):
        parts.append(f"pass {sample['passes']}")
    if sample.get("error"):
        parts.append(str(sample["error"]))
    return ", ".join(parts)


def sample_line(sample: dict[str, Any], rate: float | None) -> str:
    return (f"{sample.get('phase', '?'):<12} {sample.get('percent', 0.0):5.1f}%  "
            f"{detail(sample, rate)}").rstrip()


class MigrateView:
    """``step`` and ``sample`` are the callbacks for ``Service.migrate``."""

    def __init__(self, bar: bool = True) -> None:
        self.console = Console(stderr=True)
        self.bar: Progress | None = None
        if bar and self.console.is_terminal:
            self.bar = Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(),
                                TaskProgressColumn(), TextColumn("{task.fields[detail]}"),
                                console=self.console, transient=False)
        self.task: TaskID | None = None
        self.prev: dict[str, Any] = {}
        self.printed: tuple[str, float] = ("", 0.0)

    def __enter__(self) -> MigrateView:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if self.bar:
            self.bar.stop()

    def step(self, msg: str) -> None:
        self.console.print(f"[dim]…[/] {msg}")

    def sample(self, sample: dict[str, Any]) -> None:
        rate = self._rate(sample)
        self.prev = sample
        phase = str(sample.get("phase", "?"))
        if self.bar is None:
            self._plain(sample, phase, rate)
            return
        if self.task is None:
            self.task = self.bar.add_task(phase, total=100.0, detail="")
        self.bar.update(self.task, description=phase,
                        completed=float(sample.get("percent", 0.0)),
                        detail=detail(sample, rate))

    def _plain(self, sample: dict[str, Any], phase: str, rate: float | None) -> None:
        last_phase, last_at = self.printed
        at = float(sample.get("time", 0.0))
        if phase != last_phase or at - last_at >= PLAIN_EVERY_S:
            self.printed = (phase, at)
            self.console.print(sample_line(sample, rate), markup=False, highlight=False,
                               soft_wrap=True)

    def _rate(self, sample: dict[str, Any]) -> float | None:
        """Bytes per second sent since the previous sample; the average when done."""
        if sample.get("phase") == "done" and sample.get("elapsed_s"):
            return float(sample.get("transferred_bytes", 0)) / float(sample["elapsed_s"])
        dt = float(sample.get("time", 0.0)) - float(self.prev.get("time", 0.0))
        if not self.prev or dt <= 0 or "transferred_bytes" not in sample:
            return None
        return max(0.0, (sample["transferred_bytes"]
                         - self.prev.get("transferred_bytes", 0)) / dt)
