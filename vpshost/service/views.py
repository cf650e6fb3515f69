"""Store rows as the stable dictionaries the CLI's --json and the API return."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpshost.models import Plan

if TYPE_CHECKING:  # not imported at run time: `vps list` reads without SQLAlchemy
    from vpshost.store.schema import Event, Instance

PLAN_FIELDS = tuple(Plan.__dataclass_fields__)


def plan_of(row: Instance) -> Plan:
    return Plan(**{f: getattr(row, f) for f in PLAN_FIELDS})


def instance(row: Instance) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": row.name,
        "type": row.type,
        "state": row.state,
        "image": row.image,
        "ip": row.ip,
        "ip6": row.ip6,
        "cpus": row.vcpus,
        "memory_mb": row.memory_mb,
        "swap_mb": row.swap_mb,
        "disk_mb": row.disk_mb,
        "cpu_cap_pct": row.cpu_cap_pct,
        "cpu_weight": row.cpu_weight,
        "io_read_bps": row.io_read_bps,
        "io_write_bps": row.io_write_bps,
        "io_read_iops": row.io_read_iops,
        "io_write_iops": row.io_write_iops,
        "bandwidth_mbit": row.bandwidth_mbit,
        "max_procs": row.max_procs,
        "host": row.host,
        "tenant": row.tenant,
        "privileged": row.privileged,
        "options": dict(row.options or {}),
        "last_error": row.last_error,
        "created_at": row.created_at.isoformat() + "Z",
        "updated_at": row.updated_at.isoformat() + "Z",
    }
    return out


def event(row: Event) -> dict[str, Any]:
    return {"time": row.time.isoformat() + "Z", "instance": row.instance,
            "kind": row.kind, "message": row.message}
