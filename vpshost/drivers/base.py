"""The interface every guest type implements.

The service never asks "which type is this?": it calls these methods. Drivers keep no
state of their own; everything they need arrives in a ``Guest`` and every path they use
derives from ``guest.dir``. A capability a type lacks raises ``Unsupported``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vpshost.config import Config
from vpshost.errors import Unsupported
from vpshost.models import Guest, Plan

Progress = Callable[[str], None]  # a driver reports long work step by step


def no_progress(_msg: str) -> None:
    pass


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

    def snapshot(self, guest: Guest, snap: str) -> None:
        raise Unsupported(self.type, "snapshots")

    def restore(self, guest: Guest, snap: str) -> None:
        raise Unsupported(self.type, "snapshots")

    def delete_snapshot(self, guest: Guest, snap: str) -> None:
        raise Unsupported(self.type, "snapshots")

    def migrate_send(self, guest: Guest, target: str) -> None:
        raise Unsupported(self.type, "migration")

    def migrate_receive(self, guest: Guest) -> None:
        raise Unsupported(self.type, "migration")


def load_driver(kind: str, config: Config) -> Driver:
    """Import only the driver asked for, so a container command never loads QEMU code."""
    if kind == "container":
        from vpshost.drivers.container import ContainerDriver

        return ContainerDriver(config)
    if kind == "vm":
        from vpshost.drivers.qemu import QemuDriver

        return QemuDriver(config)
    raise Unsupported(kind, "guests on this host", "this type's driver is not installed yet")
