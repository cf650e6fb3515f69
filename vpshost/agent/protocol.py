"""What crosses the wire between the control plane and an agent."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vpshost import errors
from vpshost.models import Guest, NetSpec, Plan

# The driver methods an agent performs; anything else is refused.
METHODS = frozenset({
    "probe", "create", "start", "stop", "delete", "power", "present", "exec", "stats",
    "set_limits", "pause", "resume", "snapshot", "restore", "delete_snapshot",
    "migration_files", "migrate_prepare", "migrate_send", "migrate_finish", "migrate_abort",
    "migrate_cleanup_source", "host_link",
})
API = "/agent/v1"


def guest_to_json(g: Guest) -> dict[str, Any]:
    data = dataclasses.asdict(g)
    data["dir"] = str(g.dir)
    return data


def guest_from_json(data: dict[str, Any], guests_dir: Path) -> Guest:
    """The agent puts the guest under its *own* guests directory."""
    net = NetSpec(**data["net"]) if data.get("net") else None
    return Guest(id=data["id"], name=data["name"], type=data["type"], image=data["image"],
                 plan=Plan(**data["plan"]), net=net, dir=guests_dir / data["name"],
                 privileged=data.get("privileged", False), options=data.get("options") or {})


def to_json(value: Any) -> Any:
    """Driver results (enums, dataclasses, sets) as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_json(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def error_to_json(exc: errors.VpsError) -> dict[str, Any]:
    return {"error": exc.message, "detail": exc.hint, "kind": type(exc).__name__}


def error_from_json(body: dict[str, Any], host: str) -> errors.VpsError:
    kind = getattr(errors, str(body.get("kind", "")), None)
    message = f"on host {host}: {body.get('error', 'unknown error')}"
    hint = body.get("detail") or ""
    if (isinstance(kind, type) and issubclass(kind, errors.VpsError)
            and kind not in (errors.Unsupported, errors.CommandError)):
        return kind(message, hint)
    if kind is errors.Unsupported:
        exc = errors.Unsupported("?", "?")
        exc.args = (message,)
        exc.message, exc.hint = message, hint
        return exc
    return errors.RuntimeFailure(message, hint)
