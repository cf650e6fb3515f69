"""Moving guests between hosts.

Cold: stop (or freeze), copy the guest's files from the source to the target, start
there, then remove the source copy. Live (VMs; containers where `criu check` passes):
the driver's check/prepare/send/finish steps, each with its undo; the guest keeps
running on the source until the target has it, and any failure leaves it there with
the target cleaned up. The send runs in a worker thread while its progress is polled
from the source host and handed to the caller as data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from vpshost.agent import protocol
from vpshost.drivers.base import Driver, Power, Progress, Sample, no_sample
from vpshost.errors import UsageError, VpsError
from vpshost.models import Guest

if TYPE_CHECKING:
    from vpshost.service.base import ServiceBase as Service

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often a live move's progress is polled from the source
ABORT_GRACE_S = 120.0  # after an interrupt: how long the send gets to undo itself


# What the newer steps do when a host's agent predates them (a rolling upgrade, a lab
# host booted from an older tree): nothing to check, no progress, the old revert.
_BEFORE_AGENT_KNEW: dict[str, Callable[[Driver, Guest], Any]] = {
    "migrate_check": lambda _drv, _guest: None,
    "migrate_progress": lambda _drv, _guest: {},
    "migrate_revert": Driver.migrate_revert,  # power and resume, through the agent
}


def _method(svc: Service, host: str, drv: Driver, name: str) -> Callable[[Guest], Any]:
    """A driver method on ``host``. RemoteDriver forwards the original protocol steps
    only, so the newer ones (check, progress, revert) go to the agent by name."""
    if host == svc.host:
        return getattr(drv, name)  # type: ignore[no-any-return]
    agent = svc.agent(host)

    def call(guest: Guest) -> Any:
        try:
            return agent.call(drv.type, name, guest)
        except UsageError as exc:
            if f"agent method '{name}' is not allowed" not in exc.message:
                raise
            return _BEFORE_AGENT_KNEW[name](drv, guest)

    return call

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


def live(svc: Service, guest: Guest, source: str, target: str, src: Driver, dst: Driver,
         downtime_ms: int, postcopy: bool, progress: Progress,
         switched: Callable[[], None], sample: Sample = no_sample) -> dict[str, Any]:
    if target == svc.host:
        raise UsageError("live migration needs a registered target host",
                         "move to a host added with `vps host add`")
    # both hosts say whether they can, before anything is touched
    _method(svc, source, src, "migrate_check")(guest)
    _method(svc, target, dst, "migrate_check")(guest)
    listen_host = urlparse(svc.agent(target).url).hostname or ""
    progress(f"preparing {target} to receive {guest.name}")
    t0 = time.monotonic()
    incoming = dst.migrate_prepare(guest, listen_host)
    try:
        progress(f"sending {guest.name} from {source} to {target}"
                 + (" (pre-copy, then post-copy)" if postcopy else ""))
        stats = _send_watched(svc, source, guest, src, dst, incoming, downtime_ms,
                              postcopy, sample)
        for name in stats.get("files", []):  # what send left for the target to read
            progress(f"copying {name} from {source} to {target}")
            _write(svc, target, guest, name, _read(svc, source, guest, name))
        progress(f"resuming {guest.name} on {target}")
        finished = dst.migrate_finish(guest) or {}
    except BaseException:
        with suppress(VpsError):
            dst.migrate_abort(guest)
        # a send that got far enough leaves the source paused or stopped: run it again
        with suppress(VpsError):
            _method(svc, source, src, "migrate_revert")(guest)
        raise
    if "stopped_at" in stats and "resumed_at" in finished:
        # the guest's real pause: source stop to target resume (the hosts' clocks)
        stats["downtime_ms"] = round((finished["resumed_at"] - stats["stopped_at"]) * 1000)
    switched()  # traffic goes to the target before the source is cleaned up
    src.migrate_cleanup_source(guest)
    stats.setdefault("total_ms", round((time.monotonic() - t0) * 1000))
    stats["mode"] = "postcopy" if postcopy else "live"
    return stats


def _send_watched(svc: Service, source: str, guest: Guest, src: Driver, dst: Driver,
                  incoming: dict[str, Any], downtime_ms: int, postcopy: bool,
                  sample: Sample) -> dict[str, Any]:
    """``migrate_send`` in a worker thread; meanwhile every new progress sample the
    source records goes to ``sample`` (the send itself is one long call)."""
    read = _method(svc, source, src, "migrate_progress")
    seen: list[Any] = []

    def poll() -> None:
        try:
            now = read(guest) or {}
        except VpsError:
            return  # progress is for show: a missed sample is no reason to fail
        if now and now.get("seq") not in seen:
            seen.append(now.get("seq"))
            try:
                sample(now)
            except Exception:  # a display's bug must not abort a half-done move
                log.exception("the progress callback failed")

    pool = ThreadPoolExecutor(1, thread_name_prefix=f"send-{guest.name}")
    job: Future[dict[str, Any]] = pool.submit(src.migrate_send, guest, incoming,
                                              downtime_ms, postcopy)
    try:
        while True:
            try:
                stats = dict(job.result(timeout=POLL_S))
                break
            except FutureTimeout:
                poll()
    except BaseException:
        if not job.done():  # interrupted here: without its target the send fails fast
            with suppress(VpsError):
                dst.migrate_abort(guest)
            with suppress(BaseException):
                job.exception(timeout=ABORT_GRACE_S)  # let it undo its side first
        raise
    finally:
        pool.shutdown(wait=False)
    poll()  # the last sample (done)
    return stats
