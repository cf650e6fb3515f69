"""What crosses the wire between the control plane and an agent."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator
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
    "migrate_check", "migrate_progress", "migrate_revert",
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


# -- guest files on the wire -----------------------------------------------------------
# Disk images are mostly holes and zeros: files travel zlib-compressed (level 1: cheap,
# and a run of zeros shrinks ~1000x) and are written back sparse.
BLOCK = 1 << 20


def compressed_chunks(path: Path) -> Iterator[bytes]:
    z = zlib.compressobj(1)
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            out = z.compress(block)
            if out:
                yield out
    yield z.flush()


class SparseWriter:
    """Decompresses what ``compressed_chunks`` made and writes it with holes for zeros."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.z = zlib.decompressobj()
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        data = self.z.decompress(chunk)
        for i in range(0, len(data), BLOCK):
            piece = data[i:i + BLOCK]
            if piece.count(0) == len(piece):
                self.file.seek(len(piece), 1)  # a hole, not written zeros
            else:
                self.file.write(piece)
            self.size += len(piece)

    def close(self) -> int:
        tail = self.z.flush()
        if tail:
            self.feed(tail)
        self.file.truncate(self.size)  # a trailing hole still counts
        self.file.close()
        return self.size


def write_sparse(path: Path, chunks: Iterator[bytes]) -> int:
    w = SparseWriter(path)
    try:
        for chunk in chunks:
            w.feed(chunk)
    finally:
        size = w.close()
    return size
