"""The interface every guest type implements.

The service never asks "which type is this?": it calls these methods. Drivers keep no
state of their own; everything they need arrives in a ``Guest`` and every path they use
derives from ``guest.dir``. A capability a type lacks raises ``Unsupported``.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vpshost.config import Config
from vpshost.errors import Unsupported
from vpshost.models import Guest, Plan

Progress = Callable[[str], None]  # a driver reports long work step by step


def no_progress(_msg: str) -> None:
    pass


# A live move's progress as data (see ``Driver.migrate_progress``), for a progress bar.
Sample = Callable[[dict[str, Any]], None]


def no_sample(_sample: dict[str, Any]) -> None:
    pass


# Where a send loop records its progress, in the guest dir: the send is one long agent
# call, and QEMU's monitor takes one client at a time, so a file is how anyone else
# (the same agent, serving ``migrate_progress``) can see how far it got.
PROGRESS_FILE = "migrate.progress.json"


def write_progress(guest_dir: Path, sample: dict[str, Any]) -> None:
    """Replace the recorded progress atomically (tmp + rename): a reader sees the old
    sample or the new one, never half of one."""
    tmp = guest_dir / (PROGRESS_FILE + ".tmp")
    tmp.write_text(json.dumps(sample))
    os.replace(tmp, guest_dir / PROGRESS_FILE)


def read_progress(guest_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((guest_dir / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Power(StrEnum):
    """What the host really has for a guest, independent of what the store says."""

    RUNNING = "running"
    STOPPED = "stopped"  # defined on the host, not running
    PAUSED = "paused"
    ABSENT = "absent"  # nothing on the host


@dataclass
class Probe:
    usable: bool
    detail: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


class Driver(ABC):
    type: str = ""

    def __init__(self, config: Config) -> None:
        self.config = config

    @abstractmethod
    def probe(self) -> Probe:
        """Can this host run the type, and how well."""

    @abstractmethod
    def create(self, guest: Guest, progress: Progress = no_progress) -> None:
        """Make the guest's disk and definition. Leaves nothing behind when it fails."""

    @abstractmethod
    def start(self, guest: Guest) -> None: ...

    @abstractmethod
    def stop(self, guest: Guest, timeout: float) -> None:
        """Ask the guest to shut down; force it off after ``timeout`` seconds."""

    @abstractmethod
    def delete(self, guest: Guest) -> None:
        """Remove everything the guest has on the host. Safe to call on partial guests."""

    @abstractmethod
    def power(self, guest: Guest) -> Power: ...

    @abstractmethod
    def present(self) -> set[str]:
        """Names of the guests of this type the host has (for reconcile)."""

    @abstractmethod
    def exec(self, guest: Guest, argv: list[str], timeout: float = 60.0) -> ExecResult: ...

    @abstractmethod
    def console_argv(self, guest: Guest) -> list[str]:
        """The command that attaches the user's terminal to the guest's console."""

    def stats(self, guest: Guest) -> dict[str, Any]:
        return {}

    def set_limits(self, guest: Guest, plan: Plan) -> None:
        raise Unsupported(self.type, "changing limits of a running guest")

    def pause(self, guest: Guest) -> None:
        raise Unsupported(self.type, "pause")

    def resume(self, guest: Guest) -> None:
        raise Unsupported(self.type, "resume")

    def snapshot(self, guest: Guest, snap: str) -> bool | None:
        """Whether the snapshot holds memory too (None: whenever the guest was not off)."""
        raise Unsupported(self.type, "snapshots")

    def restore(self, guest: Guest, snap: str) -> None:
        raise Unsupported(self.type, "snapshots")

    def delete_snapshot(self, guest: Guest, snap: str) -> None:
        raise Unsupported(self.type, "snapshots")

    # -- moving between hosts ------------------------------------------------------
    # Cold moves copy these files (relative to guest.dir) with the guest stopped; the
    # target then renders everything else from the Guest at start.
    def migration_files(self, guest: Guest) -> list[str]:
        raise Unsupported(self.type, "moving to another host")

    # Live moves are a protocol of small steps, each with its undo (after Ganeti):
    # prepare on the target, send from the source, finish on the target; abort undoes
    # prepare. The source keeps running until the target has the guest.
    def migrate_check(self, guest: Guest) -> None:
        """Raise, before anything is touched, when this host cannot take part in a live
        move of ``guest`` (run on the source and on the target)."""
        return None  # nothing to check unless the type says so

    def migrate_prepare(self, guest: Guest, listen_host: str) -> dict[str, Any]:
        raise Unsupported(self.type, "live migration", "use a cold move (without --live)")

    def migrate_send(self, guest: Guest, target: dict[str, Any], downtime_ms: int,
                     postcopy: bool) -> dict[str, Any]:
        """Send the guest; the result may name ``files`` (in guest.dir) the control plane
        must copy to the target before ``migrate_finish``."""
        raise Unsupported(self.type, "live migration", "use a cold move (without --live)")

    def migrate_progress(self, guest: Guest) -> dict[str, Any]:
        """How far a running send got (phase, bytes, rate; see qemu/migrate.py), read
        from what the send loop records; empty for a type whose send records nothing."""
        return read_progress(guest.dir)

    def migrate_finish(self, guest: Guest) -> dict[str, Any] | None:
        """Run the guest on the target; may report ``resumed_at`` (epoch seconds)."""
        raise Unsupported(self.type, "live migration")

    def migrate_abort(self, guest: Guest) -> None:
        raise Unsupported(self.type, "live migration")

    def migrate_revert(self, guest: Guest) -> None:
        """A live move failed after send: run the guest on the source again."""
        if self.power(guest) is Power.PAUSED:
            self.resume(guest)

    def migrate_cleanup_source(self, guest: Guest) -> None:
        """After a successful live move: drop what the source still holds."""
        self.delete(guest)


def load_driver(kind: str, config: Config) -> Driver:
    """Import only the driver asked for, so a container command never loads QEMU code."""
    if kind == "container":
        from vpshost.drivers.container import ContainerDriver

        return ContainerDriver(config)
    if kind == "vm":
        from vpshost.drivers.qemu import QemuDriver

        return QemuDriver(config)
    if kind == "xen":
        from vpshost.drivers.xen import XenDriver

        return XenDriver(config)
    raise Unsupported(kind, "guests on this host", "this type's driver is not installed yet")
