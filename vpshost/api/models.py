"""Request and response bodies of the REST API.

They exist so the OpenAPI document says what each route takes and gives; the service
layer's dictionaries stay the source of truth (response models allow extra keys, so a
new key in ``vpshost.service.views`` reaches clients without a change here).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vpshost.errors import UsageError
from vpshost.models import Plan
from vpshost.units import parse_size_mb

Size = str | int  # "256M", "1G", or a whole number of MiB


class ErrorBody(BaseModel):
    """Every error, whatever its status: what was wrong, and what to do about it."""

    error: str = Field(description="What went wrong.")
    detail: str = Field("", description="What to do about it; may be empty.")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PortOut(_Open):
    proto: str
    host_port: int
    guest_port: int
    instance: str | None = None
    guest_ip: str | None = None


class EventOut(_Open):
    time: str
    instance: str | None
    kind: str
    message: str


class InstanceOut(_Open):
    """One instance, as `vps show --json` prints it."""

    name: str
    type: str
    state: str
    image: str
    ip: str | None
    ip6: str | None = None
    cpus: int
    memory_mb: int
    swap_mb: int
    disk_mb: int
    cpu_cap_pct: int = 0
    cpu_weight: int = 100
    io_read_bps: int = 0
    io_write_bps: int = 0
    io_read_iops: int = 0
    io_write_iops: int = 0
    bandwidth_mbit: int = 0
    max_procs: int = 0
    host: str
    tenant: str
    privileged: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    last_error: str | None = None
    created_at: str
    updated_at: str
    ports: list[PortOut] | None = None
    snapshots: list[str] | None = None
    events: list[EventOut] | None = None
    stats: dict[str, Any] | None = None


class _Sizes(BaseModel):
    """Sizes as text ("256M", "1G") or, in the *_mb fields, whole MiB; not both."""

    model_config = ConfigDict(extra="forbid")

    memory: Size | None = Field(None, description='Memory, e.g. "256M" or "1G".')
    memory_mb: int | None = None
    swap: Size | None = Field(None, description='Swap beyond memory, e.g. "0" or "512M".')
    swap_mb: int | None = None
    disk: Size | None = Field(None, description='Root disk, e.g. "1G".')
    disk_mb: int | None = None

    def sizes_mb(self) -> dict[str, int]:
        """The sizes that were given, in MiB; a malformed one is a UsageError (400)."""
        out: dict[str, int] = {}
        for key in ("memory", "swap", "disk"):
            text, mb = getattr(self, key), getattr(self, f"{key}_mb")
            if text is not None and mb is not None:
                raise UsageError(f"both {key} and {key}_mb given", "give one of them")
            if text is not None:
                out[f"{key}_mb"] = parse_size_mb(text, key, allow_zero=key == "swap")
            elif mb is not None:
                out[f"{key}_mb"] = parse_size_mb(mb, f"{key}_mb", allow_zero=key == "swap")
        return out


class CreateBody(_Sizes):
    """A new guest: the same choices as `vps create`."""

    name: str = Field(description="2-32 characters: a-z, 0-9 and single hyphens.")
    type: str = Field("container", description="container, vm or xen.")
    image: str = Field("busybox", description="See GET /api/v1/images.")
    cpus: int = 1
    cpu_cap_pct: int = Field(0, description="CPU cap in percent of one core; 0: none.")
    cpu_weight: int = Field(100, description="Share under contention, 1-10000.")
    io_read_bps: int = Field(0, description="Bytes per second; 0: no limit.")
    io_write_bps: int = 0
    io_read_iops: int = 0
    io_write_iops: int = 0
    bandwidth_mbit: int = 0
    max_procs: int = Field(0, description="Most processes at once; 0: no limit.")
    privileged: bool = Field(False, description="Containers: no user namespace.")
    start: bool = Field(False, description="Start it once created.")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description='Type-specific, e.g. {"accel": "tcg"}.')

    def plan(self) -> Plan:
        sizes = {"memory_mb": 256, "swap_mb": 0, "disk_mb": 1024, **self.sizes_mb()}
        return Plan(vcpus=self.cpus, cpu_cap_pct=self.cpu_cap_pct, cpu_weight=self.cpu_weight,
                    io_read_bps=self.io_read_bps, io_write_bps=self.io_write_bps,
                    io_read_iops=self.io_read_iops, io_write_iops=self.io_write_iops,
                    bandwidth_mbit=self.bandwidth_mbit, max_procs=self.max_procs, **sizes)


class ResizeBody(_Sizes):
    """The limits to change; fields left out keep their value. Disks only grow."""

    cpus: int | None = None
    cpu_cap_pct: int | None = None
    max_procs: int | None = None

    def changes(self) -> dict[str, int]:
        out = {k: v for k, v in (("vcpus", self.cpus), ("cpu_cap_pct", self.cpu_cap_pct),
                                 ("max_procs", self.max_procs)) if v is not None}
        out.update(self.sizes_mb())
        if not out:
            raise UsageError("nothing to change", "give at least one of cpus, memory, swap, "
                             "disk, cpu_cap_pct, max_procs")
        return out


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(description='argv, e.g. ["uname", "-a"]; no shell.')
    timeout: float = Field(60.0, gt=0, le=3600, description="Seconds before giving up.")


class ExecOut(BaseModel):
    returncode: int
    stdout: str
    stderr: str


class PortBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host_port: int
    guest_port: int
    proto: Literal["tcp", "udp"] = "tcp"


class MigrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(None, description="Target host; placement picks one if absent.")
    live: bool = Field(False, description="VMs: move while running.")
    frozen: bool = Field(False, description="Containers: freeze while the disk copies.")
    postcopy: bool = False
    downtime_ms: int = Field(300, ge=1, le=60000)


class SnapshotBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class SnapshotOut(_Open):
    name: str
    with_memory: bool
    created_at: str


class ImageOut(_Open):
    name: str
    type: str
    description: str
    built: bool


class WhoAmI(BaseModel):
    tenant: str
    admin: bool


class Accepted(BaseModel):
    """A long operation was accepted; poll ``href`` until its status is not running."""

    operation: str
    kind: str
    instance: str | None
    status: str = "running"
    href: str


class OperationOut(BaseModel):
    id: str
    kind: str
    instance: str | None
    status: Literal["running", "success", "failure"]
    error: str | None = Field(None, description="On failure: what went wrong.")
    detail: str | None = Field(None, description="On failure: what to do about it.")
    http_status: int | None = Field(None, description="On failure: the status the same "
                                    "error has when a route returns it directly.")
    result: dict[str, Any] | None = Field(None, description="On success: the instance "
                                          "as it is now, where there is one.")
    progress: dict[str, Any] | None = Field(None, description="While running, where the "
                                            "operation reports it (live moves): phase, "
                                            "percent, bytes.")
    created_at: str
    finished_at: str | None
