"""Moving guests between hosts.

Cold: stop (or freeze), copy the guest's files from the source to the target, start
there, then remove the source copy. Live (VMs): the driver's prepare/send/finish
steps, each with its undo; the guest keeps running on the source until the target has
it, and any failure leaves it there with the target cleaned up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from vpshost.agent import protocol
from vpshost.drivers.base import Driver, Power, Progress
from vpshost.errors import UsageError, VpsError
from vpshost.models import Guest

if TYPE_CHECKING:
    from vpshost.service.base import ServiceBase as Service

def _read(svc: Service, host: str, guest: Guest, filename: str) -> Iterator[bytes]:
    """The file as it travels: zlib-compressed (agents send it so; see protocol)."""
    if host == svc.host:
        yield from protocol.compressed_chunks(guest.dir / filename)
    else:
        yield from svc.agent(host).read_file(guest.name, filename)


def _write(svc: Service, host: str, guest: Guest, filename: str,
           chunks: Iterator[bytes]) -> None:
    if host == svc.host:
        guest.dir.mkdir(parents=True, exist_ok=True)
        tmp = guest.dir / (filename + ".partial")
        protocol.write_sparse(tmp, chunks)
        tmp.rename(guest.dir / filename)
    else:
        svc.agent(host).write_file(guest.name, filename, chunks)


def cold(svc: Service, guest: Guest, source: str, target: str, src: Driver, dst: Driver,
         frozen: bool, progress: Progress, switched: Callable[[], None]) -> dict[str, Any]:
    """Stop (or freeze) on the source, copy, start on the target if it was running."""
    t0 = time.monotonic()
    was_running = src.power(guest) in (Power.RUNNING, Power.PAUSED)
    files = src.migration_files(guest)
    if was_running:
        if frozen:
            progress("freezing the guest on the source")
            src.pause(guest)
        else:
            progress("stopping the guest on the source")
            src.stop(guest, svc.config.container.stop_timeout)
    down_at = time.monotonic()
    try:
        for name in files:
            progress(f"copying {name} from {source} to {target}")
            _write(svc, target, guest, name, _read(svc, source, guest, name))
        if frozen and was_running:
            src.stop(guest, 0)  # the frozen copy is consistent; the source goes away
        if was_running:
            progress(f"starting on {target}")
            dst.start(guest)
    except BaseException:
        with suppress(VpsError):
            dst.delete(guest)
        with suppress(VpsError):
            if was_running:
                if src.power(guest) is Power.PAUSED:
                    src.resume(guest)
                elif src.power(guest) is Power.STOPPED:
                    src.start(guest)
        raise
    up_at = time.monotonic()
    switched()
    src.delete(guest)
    return {"mode": "frozen" if frozen else "cold", "files": files,
            "downtime_ms": round((up_at - down_at) * 1000) if was_running else 0,
            "total_ms": round((time.monotonic() - t0) * 1000)}


def live(svc: Service, guest: Guest, target: str, src: Driver, dst: Driver,
         downtime_ms: int, postcopy: bool, progress: Progress,
         switched: Callable[[], None]) -> dict[str, Any]:
    if target == svc.host:
        raise UsageError("live migration needs a registered target host",
                         "move to a host added with `vps host add`")
    listen_host = urlparse(svc.agent(target).url).hostname or ""
    progress(f"preparing {target} to receive {guest.name}")
    t0 = time.monotonic()
    incoming = dst.migrate_prepare(guest, listen_host)
    try:
        progress("copying disk and memory (pre-copy)" + (", then post-copy" if postcopy
                                                          else ""))
        stats = dict(src.migrate_send(guest, incoming, downtime_ms, postcopy))
        finished = dst.migrate_finish(guest) or {}
    except BaseException:
        with suppress(VpsError):
            dst.migrate_abort(guest)
        # a send that completed leaves the source paused: it must run again
        with suppress(VpsError):
            if src.power(guest) is Power.PAUSED:
                src.resume(guest)
        raise
    if "stopped_at" in stats and "resumed_at" in finished:
        # the guest's real pause: source stop to target resume (the hosts' clocks)
        stats["downtime_ms"] = round((finished["resumed_at"] - stats["stopped_at"]) * 1000)
    switched()  # traffic goes to the target before the source is cleaned up
    src.migrate_cleanup_source(guest)
    stats.setdefault("total_ms", round((time.monotonic() - t0) * 1000))
    stats["mode"] = "postcopy" if postcopy else "live"
    return stats
