"""Moving a QEMU VM to another host: live (pre-copy, optional post-copy) and cold.

Live, in the driver's protocol steps (see drivers/base.py and cluster/migration.py):

- ``prepare`` (target): a fresh standalone disk of the source's virtual size (no
  backing file, so the hosts' base images need not match), QEMU started with the
  source's own command line plus ``-S -incoming defer``, an NBD export of that disk
  and ``migrate-incoming``. ``-S``: the target never runs the guest by itself; only
  ``finish`` does, after the disk copy is final. A *sentinel* process kills the
  incoming QEMU and removes its files if the agent dies before ``finish``: nothing
  else would (the QEMU is daemonized, outside the agent's process group).
- ``send`` (source): ``blockdev-mirror`` of the disk to the target's NBD export
  (sync=full), then RAM migration with auto-converge and the downtime limit; after
  completion (source stopped) ``block-job-cancel`` of the READY mirror, which ends
  with the target holding a point-in-time copy of the stopped source. Any failure
  cancels both and leaves the source running. As it polls, the send records its
  progress (``_Recorder``) for ``migrate_progress``.
- ``finish`` (target): ``cont``, drop the NBD export, announce the MAC (RARP, and
  the guest's own gratuitous ARP through virtio-net's GUEST_ANNOUNCE) so the new
  host's bridge learns where the guest is.

Cold: ``files`` ships the overlay *and* its base (the base is immutable, so it can be
linked into the guest dir while the VM runs); the overlay's backing reference is
rewritten to that relative ``base.qcow2``, so the target never depends on its own
base being byte-identical, and internal snapshots travel too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError
from qemu.qmp.qmp_client import ExecuteError

from vpshost import runner
from vpshost.drivers.base import PROGRESS_FILE, write_progress
from vpshost.drivers.qemu import accel as accel_mod
from vpshost.drivers.qemu import limits, process
from vpshost.drivers.qemu.cmdline import DRIVE_ID, build_argv
from vpshost.drivers.qemu.monitor import MonitorError, _run_sync, qmp, qmp_many
from vpshost.drivers.qemu.paths import VmPaths
from vpshost.errors import Conflict, RuntimeFailure, UsageError
from vpshost.host import network, vmimages
from vpshost.models import Guest

if TYPE_CHECKING:
    from vpshost.drivers.qemu.driver import QemuDriver

log = logging.getLogger(__name__)
MiB = 1024 * 1024
EXPORT = DRIVE_ID  # the NBD export name on the target
NBD_NODE = "mig-nbd"  # the source's NBD client node
MIRROR_JOB = "mig-mirror"
EXPORT_ID = "mig-export"
MAX_BANDWIDTH = 64 << 30  # bytes/s: no cap (QEMU's default is 128 MiB/s)
BASE_FILE = "base.qcow2"  # a VM's own copy of its base, after a cold move
SENTINEL = "migrate.sentinel"  # pid of the sentinel, in the guest dir
DONE = "migrate.done"  # written by finish: the sentinel stands down
INCOMING = "migrate.incoming.json"  # the guest, for the sentinel's cleanup
RECORD_S = 0.1  # the send records its progress at most this often (and at each phase)


def _paths(guest: Guest) -> VmPaths:
    return VmPaths(guest.dir)


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    """A port free on ``host`` right now (QEMU binds it a moment later)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _virtual_size(path: Path) -> int:
    info = json.loads(runner.run(["qemu-img", "info", "--output", "json", "-U", str(path)],
                                 timeout=60).stdout)
    return int(info["virtual-size"])


def _disk_info(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(runner.run(
        ["qemu-img", "info", "--output", "json", "-U", str(path)], timeout=60).stdout)
    return out


# ---------------------------------------------------------------------- target side

def prepare(drv: QemuDriver, guest: Guest, listen_host: str) -> dict[str, Any]:
    """Make the target ready to receive: disk, paused incoming QEMU, NBD export."""
    paths = _paths(guest).check()
    if process.qemu_pid(paths) is not None or paths.disk.exists():
        raise Conflict(f"VM '{guest.name}' already exists on this host",
                       "remove the stale copy (`vps delete` on that host) and retry")
    if not listen_host:
        raise UsageError("no address to receive the migration on")
    if guest.image in vmimages.BUILTIN:
        vmimages.build(drv.config, guest.image)  # kernel/initrd the command line names
    image = drv._image(guest)
    accel = accel_mod.choose(str(guest.options.get("accel") or ""))
    guest.dir.mkdir(parents=True, exist_ok=True)
    try:
        # the size the source has: what create gave it (plans never shrink a disk)
        base = vmimages.base_path(drv.config, guest.image)
        size = guest.plan.disk_mb * MiB
        if base is not None:
            size = max(size, _virtual_size(base))
        runner.run(["qemu-img", "create", "-q", "-f", "qcow2", str(paths.disk), str(size)],
                   timeout=60)
        paths.info.write_text(json.dumps({"name": guest.name, "image": guest.image,
                                          "kind": image["kind"]}) + "\n")
        (guest.dir / INCOMING).write_text(json.dumps(_guest_json(guest)))
        tap = network.ensure_tap(network.tap_for(guest.dir), guest.net.bridge) if guest.net \
            else None
        argv = build_argv(guest, image, accel, tap, paths) + ["-S", "-incoming", "defer"]
        runner.run(argv, timeout=60)
        pid = process.qemu_pid(paths)
        if pid is None:
            raise RuntimeFailure(f"the incoming QEMU for '{guest.name}' exited at once",
                                 process.console_tail(paths))
        limits.apply_cpu(guest.name, pid, guest.plan)
        if tap and guest.plan.bandwidth_mbit:
            limits.apply_bandwidth(tap, guest.plan.bandwidth_mbit)
        nbd_port = _free_port(listen_host)
        uri = f"tcp:{_uri_host(listen_host)}:{_free_port(listen_host)}"
        postcopy_ok = _run_sync(_listen(paths, listen_host, nbd_port, uri))
        _start_sentinel(guest)
    except BaseException:
        abort(drv, guest)
        raise
    return {"uri": uri, "postcopy": postcopy_ok,
            "nbd": {"host": listen_host, "port": nbd_port, "export": EXPORT},
            "disk_bytes": size}


async def _listen(paths: VmPaths, host: str, nbd_port: int, uri: str) -> bool:
    """Export the disk over NBD and wait for the migration stream, in one QMP session.
    Returns whether post-copy can be received here (it needs userfaultfd)."""
    async with _Session(paths.qmp) as s:
        node = next(str(b["inserted"]["node-name"]) for b in await s.cmd("query-block")
                    if b.get("device") == DRIVE_ID and b.get("inserted"))
        await s.cmd("nbd-server-start", {"addr": {"type": "inet", "data": {
            "host": host, "port": str(nbd_port)}}})
        await s.cmd("block-export-add", {"type": "nbd", "id": EXPORT_ID, "node-name": node,
                                         "name": EXPORT, "writable": True})
        postcopy_ok = True
        try:
            await s.cmd("migrate-set-capabilities", {"capabilities": [
                {"capability": "postcopy-ram", "state": True}]})
        except MonitorError:
            postcopy_ok = False
        await s.cmd("migrate-incoming", {"uri": uri})
    return postcopy_ok


def _root_node(paths: VmPaths) -> str:
    """The node name of the guest disk's root (what -drive created)."""
    for dev in qmp(paths.qmp, "query-block"):
        if dev.get("device") == DRIVE_ID and dev.get("inserted"):
            return str(dev["inserted"]["node-name"])
    raise RuntimeFailure(f"QEMU has no block device {DRIVE_ID}")


def finish(drv: QemuDriver, guest: Guest) -> dict[str, Any]:
    """Run the guest on the target: the source is stopped and the disk copy final."""
    paths = _paths(guest)
    if process.qemu_pid(paths) is None:
        raise RuntimeFailure(f"the incoming QEMU for '{guest.name}' is gone")
    (guest.dir / DONE).write_text("")  # the sentinel stands down before the guest runs
    _stop_sentinel(guest)
    resumed_at = _run_sync(_resume(paths, guest.name))
    # best effort from here on: the guest runs on this host now
    with contextlib.suppress(MonitorError):
        qmp_many(paths.qmp, [("block-export-del", {"id": EXPORT_ID}),
                             ("nbd-server-stop", None),
                             ("announce-self", {"initial": 50, "max": 550, "rounds": 5,
                                                "step": 100})])
    for f in (DONE, INCOMING, SENTINEL):
        with contextlib.suppress(FileNotFoundError):
            (guest.dir / f).unlink()
    return {"resumed_at": resumed_at}


async def _resume(paths: VmPaths, name: str) -> float:
    """cont, in one QMP session (this is inside the guest's pause); the RESUME time."""
    async with _Session(paths.qmp) as s:
        status = (await s.cmd("query-status")).get("status")
        if status not in ("paused", "running", "prelaunch"):
            raise RuntimeFailure(f"the incoming VM '{name}' is '{status}', not ready")
        if status != "running":
            await s.cmd("cont")
        for _ in range(100):
            at = s.event_time("RESUME")
            if at is not None:
                return at
            await asyncio.sleep(0.001)
    return time.time()


def abort(drv: QemuDriver, guest: Guest) -> None:
    """Undo prepare: kill the incoming QEMU and remove everything it had."""
    _stop_sentinel(guest)
    drv.delete(guest)


# ---------------------------------------------------------------------- sentinel

def _guest_json(guest: Guest) -> dict[str, Any]:
    from vpshost.agent import protocol

    return protocol.guest_to_json(guest)


# The sentinel is a bare `python -c` (no vpshost imports until it must clean up), so
# it costs no CPU the migration could use: it polls the agent's pid and the DONE file.
_SENTINEL_CODE = """
import os, sys, time
d, pid, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
while not os.path.exists(os.path.join(d, done)) and os.path.isdir(d):
    if not alive():
        from vpshost.drivers.qemu.migrate import sentinel_cleanup
        sentinel_cleanup(d)
        break
    time.sleep(0.1)
"""


def _start_sentinel(guest: Guest) -> None:
    """Watch this process (the agent): if it dies before finish, nobody will finish or
    abort, so the incoming QEMU must go. Its own session: it outlives a killed group."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SENTINEL_CODE, str(guest.dir), str(os.getpid()), DONE],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=dict(os.environ))
    (guest.dir / SENTINEL).write_text(str(proc.pid))


def _stop_sentinel(guest: Guest) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((guest.dir / SENTINEL).read_text())
        if str(guest.dir) in Path(f"/proc/{pid}/cmdline").read_text():
            os.kill(pid, signal.SIGKILL)


def sentinel_cleanup(guest_dir: str) -> None:
    """The agent died before finish: remove the incoming guest as abort would."""
    from vpshost.agent import protocol
    from vpshost.config import load
    from vpshost.drivers.qemu.driver import QemuDriver

    d = Path(guest_dir)
    guest = protocol.guest_from_json(json.loads((d / INCOMING).read_text()), d.parent)
    QemuDriver(load()).delete(guest)


# ---------------------------------------------------------------------- source side

# QEMU's migration status -> the phase a progress bar shows
_RAM_PHASES = {"postcopy-active": "postcopy", "device": "completing",
               "pre-switchover": "completing", "completed": "completing"}


class _Recorder:
    """The send's progress, as it polls, in the guest dir (drivers/base.py PROGRESS_FILE).

    Phases in order: disk-mirror, ram-precopy, [postcopy], completing (source stopped,
    final disk sync), then done or failed. ``done_bytes``/``total_bytes`` are the
    current phase's (RAM: total minus remaining, which drops when pages are dirtied
    again); ``transferred_bytes`` counts disk and RAM bytes sent so far and only grows.
    """

    def __init__(self, guest_dir: Path) -> None:
        self.dir = guest_dir
        self.t0 = time.monotonic()
        self.seq = 0
        self.phase = ""
        self.last = 0.0
        self.disk_bytes = 0  # the mirror's offset: it keeps growing while RAM moves
        self.ram_bytes = 0
        with contextlib.suppress(FileNotFoundError):
            (guest_dir / PROGRESS_FILE).unlink()  # a previous move's

    def mirror(self, job: dict[str, Any]) -> None:
        self.disk_bytes = max(self.disk_bytes, int(job.get("offset", 0)))
        self._write("disk-mirror", self.disk_bytes, int(job.get("len", 0)))

    def ram(self, info: dict[str, Any]) -> None:
        ram = info.get("ram", {})
        total, remaining = int(ram.get("total", 0)), int(ram.get("remaining", 0))
        self.ram_bytes = max(self.ram_bytes, int(ram.get("transferred", 0)))
        self._write(_RAM_PHASES.get(str(info.get("status")), "ram-precopy"),
                    max(0, total - remaining), total, remaining_bytes=remaining,
                    dirty_pages_rate=int(ram.get("dirty-pages-rate", 0)),
                    passes=int(ram.get("dirty-sync-count", 0)),
                    mbps=float(ram.get("mbps", 0.0)))

    def end(self, phase: str, **extra: Any) -> None:
        self._write(phase, int(phase == "done"), 1, force=True, **extra)

    def _write(self, phase: str, done: int, total: int, force: bool = False,
               **extra: Any) -> None:
        now = time.monotonic()
        if not force and phase == self.phase and now - self.last < RECORD_S:
            return  # each poll would be a file write; the reader polls every ~0.5 s
        self.seq += 1
        self.phase, self.last = phase, now
        sample = {"seq": self.seq, "phase": phase, "time": time.time(),
                  "elapsed_s": round(now - self.t0, 3), "done_bytes": done,
                  "total_bytes": total,
                  "percent": round(min(100.0, 100.0 * done / total), 1) if total else 0.0,
                  "transferred_bytes": self.disk_bytes + self.ram_bytes,
                  "disk_bytes": self.disk_bytes, "ram_bytes": self.ram_bytes, **extra}
        with contextlib.suppress(OSError):  # progress is for show: never fail the move
            write_progress(self.dir, sample)


class _Session:
    """One QMP connection for the whole send: commands plus the events they cause."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.qmp = QMPClient("vpshost-migrate")
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> _Session:
        await asyncio.wait_for(self.qmp.connect(str(self.sock)), 30)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.qmp.disconnect()

    async def cmd(self, name: str, args: dict[str, Any] | None = None,
                  timeout: float = 60.0) -> Any:
        try:
            return await asyncio.wait_for(self.qmp.execute(name, args), timeout)
        except ExecuteError as exc:
            raise MonitorError(f"QEMU refused {name}: {exc.error.error.desc}") from None

    def drain(self) -> list[dict[str, Any]]:
        """Events seen so far (non-blocking)."""
        self.events += [dict(ev) for ev in self.qmp.events.clear()]
        return self.events

    def event_time(self, name: str) -> float | None:
        for ev in reversed(self.drain()):
            if ev.get("event") == name:
                ts = ev.get("timestamp", {})
                return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
        return None


def _snapshots(paths: VmPaths) -> list[str]:
    return [s["name"] for s in _disk_info(paths.disk).get("snapshots", [])]


def send(drv: QemuDriver, guest: Guest, target: dict[str, Any], downtime_ms: int,
         postcopy: bool) -> dict[str, Any]:
    """Mirror the disk and migrate RAM to ``target`` (what prepare returned)."""
    paths = drv._running(guest)
    snaps = _snapshots(paths)
    if snaps:
        raise UsageError(f"VM '{guest.name}' has snapshots ({', '.join(snaps)}) that a live "
                         "move would drop",
                         "delete them, or move it cold (snapshots travel with a cold move)")
    if postcopy and not target.get("postcopy"):
        raise UsageError("the target host cannot do post-copy (no userfaultfd)",
                         "migrate without --postcopy")
    rec = _Recorder(guest.dir)
    try:
        stats = _run_sync(_send(paths, target, downtime_ms, postcopy, rec))
    except (QMPError, OSError, TimeoutError) as exc:
        _recover(paths)
        rec.end("failed", error=str(exc) or type(exc).__name__)
        raise RuntimeFailure(f"live migration of '{guest.name}' failed: "
                             f"{exc or type(exc).__name__}",
                             "the guest keeps running on the source") from None
    except BaseException as exc:
        _recover(paths)
        rec.end("failed", error=str(exc) or type(exc).__name__)
        raise
    rec.end("done", passes=stats["dirty_passes"])
    return stats


async def _send(paths: VmPaths, target: dict[str, Any], downtime_ms: int,
                postcopy: bool, rec: _Recorder) -> dict[str, Any]:
    t0 = time.monotonic()
    nbd = target["nbd"]
    async with _Session(paths.qmp) as s:
        await s.cmd("blockdev-add", {
            "driver": "nbd", "node-name": NBD_NODE, "export": nbd["export"],
            "server": {"type": "inet", "host": nbd["host"], "port": str(nbd["port"])}})
        nodes = await s.cmd("query-named-block-nodes", {"flat": True})
        sizes = {n["node-name"]: int(n["image"]["virtual-size"]) for n in nodes}
        mine = next(int(b["inserted"]["image"]["virtual-size"])
                    for b in await s.cmd("query-block") if b["device"] == DRIVE_ID)
        if sizes.get(NBD_NODE) != mine:
            raise RuntimeFailure(f"the target disk has {sizes.get(NBD_NODE)} bytes, the "
                                 f"source {mine}",
                                 "grow the plan's disk to the source's size, then retry")
        await s.cmd("blockdev-mirror", {"job-id": MIRROR_JOB, "device": DRIVE_ID,
                                        "target": NBD_NODE, "sync": "full",
                                        "on-target-error": "stop"})
        await _wait_ready(s, rec)
        mirror_s = time.monotonic() - t0
        caps = [{"capability": "events", "state": True},
                {"capability": "auto-converge", "state": True},
                {"capability": "postcopy-ram", "state": postcopy}]
        await s.cmd("migrate-set-capabilities", {"capabilities": caps})
        await s.cmd("migrate-set-parameters", {"downtime-limit": downtime_ms,
                                               "max-bandwidth": MAX_BANDWIDTH})
        t_ram = time.monotonic()
        await s.cmd("migrate", {"uri": target["uri"]})
        info = await _wait_migrated(s, postcopy, rec)
        ram_s = time.monotonic() - t_ram
        stopped_at = s.event_time("STOP")
        # the source is stopped: the mirror's last writes make the target disk final
        await s.cmd("block-job-cancel", {"device": MIRROR_JOB})
        mirrored = await _wait_gone(s, rec)
        with contextlib.suppress(MonitorError):
            await s.cmd("blockdev-del", {"node-name": NBD_NODE})
        switch_s = time.monotonic() - t_ram - ram_s
    ram = info.get("ram", {})
    return {"qemu_downtime_ms": int(info.get("downtime", 0)),
            "setup_ms": int(info.get("setup-time", 0)),
            "ram_ms": round(ram_s * 1000), "mirror_ms": round(mirror_s * 1000),
            "disk_final_sync_ms": round(switch_s * 1000),
            "ram_bytes": int(ram.get("transferred", 0)),
            "ram_total_bytes": int(ram.get("total", 0)),
            "disk_bytes": mirrored, "dirty_passes": int(ram.get("dirty-sync-count", 0)),
            "stopped_at": stopped_at or time.time() - int(info.get("downtime", 0)) / 1000,
            "send_ms": round((time.monotonic() - t0) * 1000)}


async def _wait_ready(s: _Session, rec: _Recorder, timeout: float = 3600) -> None:
    """Until the mirror is READY (source and target in sync, writes mirrored)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        jobs = {j["device"]: j for j in await s.cmd("query-block-jobs")}
        job = jobs.get(MIRROR_JOB)
        if job is None or job.get("status") in ("concluded", "aborting", "null"):
            raise RuntimeFailure(f"the disk mirror to the target stopped: {_job_error(s)}")
        if job.get("io-status", "ok") != "ok" or job.get("status") == "paused":
            raise RuntimeFailure("the disk mirror to the target hit an I/O error "
                                 "(the target went away?)")
        rec.mirror(job)
        if job.get("ready"):
            log.info("disk mirrored: %s bytes", job.get("len"))
            return
        log.info("mirroring disk: %s/%s bytes", job.get("offset"), job.get("len"))
        await asyncio.sleep(0.05)
    raise RuntimeFailure("the disk mirror did not get in sync in time")


def _job_error(s: _Session) -> str:
    for ev in reversed(s.drain()):
        if ev.get("event") in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR"):
            return str(ev.get("data", {}).get("error") or ev.get("data", {}))
    return "no reason given"


async def _wait_migrated(s: _Session, postcopy: bool, rec: _Recorder) -> dict[str, Any]:
    started_postcopy = False
    last = 0.0
    while True:
        info: dict[str, Any] = await s.cmd("query-migrate")
        status = info.get("status")
        if status not in ("failed", "cancelled", "cancelling"):
            rec.ram(info)
        if status == "completed":
            return info
        if status in ("failed", "cancelled", "cancelling"):
            raise RuntimeFailure(f"migration {status}: {info.get('error-desc', '')}".strip())
        ram = info.get("ram", {})
        if (postcopy and not started_postcopy and status == "active"
                and int(ram.get("dirty-sync-count", 0)) >= 2):
            await s.cmd("migrate-start-postcopy")  # after the first full pass
            started_postcopy = True
        if time.monotonic() - last > 0.5:  # not every poll: each command takes the BQL
            last = time.monotonic()
            jobs = {j["device"]: j for j in await s.cmd("query-block-jobs")}
            if MIRROR_JOB not in jobs or jobs[MIRROR_JOB].get("io-status", "ok") != "ok":
                raise RuntimeFailure(f"the disk mirror broke during migration: "
                                     f"{_job_error(s)}")
            rec.disk_bytes = max(rec.disk_bytes, int(jobs[MIRROR_JOB].get("offset", 0)))
            log.info("migrating: %s, %s of %s bytes, %s dirty pages/s", status,
                     ram.get("transferred"), ram.get("total"), ram.get("dirty-pages-rate"))
        await asyncio.sleep(0.02)


async def _wait_gone(s: _Session, rec: _Recorder, timeout: float = 600) -> int:
    """Until the cancelled mirror has completed; its bytes copied."""
    end = time.monotonic() + timeout
    copied = 0
    while time.monotonic() < end:
        jobs = {j["device"]: j for j in await s.cmd("query-block-jobs")}
        job = jobs.get(MIRROR_JOB)
        if job is None:
            for ev in s.drain():
                data = ev.get("data", {})
                if ev.get("event") == "BLOCK_JOB_COMPLETED" and data.get("device") == \
                        MIRROR_JOB:
                    if data.get("error"):
                        raise RuntimeFailure(f"the final disk sync failed: {data['error']}")
                    copied = int(data.get("offset", copied))
            return copied
        copied = int(job.get("offset", 0))
        rec.disk_bytes = max(rec.disk_bytes, copied)
        await asyncio.sleep(0.005)
    raise RuntimeFailure("the final disk sync did not finish in time")


def _recover(paths: VmPaths) -> None:
    """After a failed send: no migration, no mirror, the source running."""
    with contextlib.suppress(MonitorError):
        if qmp(paths.qmp, "query-migrate", timeout=10).get("status") in (
                "setup", "active", "device", "pre-switchover", "postcopy-active"):
            qmp(paths.qmp, "migrate_cancel", timeout=10)
            end = time.monotonic() + 30
            while time.monotonic() < end and qmp(paths.qmp, "query-migrate", timeout=10).get(
                    "status") in ("active", "cancelling", "device", "setup"):
                time.sleep(0.05)
    with contextlib.suppress(MonitorError):
        if any(j["device"] == MIRROR_JOB for j in qmp(paths.qmp, "query-block-jobs")):
            qmp(paths.qmp, "block-job-cancel", device=MIRROR_JOB, force=True)
            end = time.monotonic() + 30
            while time.monotonic() < end and any(
                    j["device"] == MIRROR_JOB for j in qmp(paths.qmp, "query-block-jobs")):
                time.sleep(0.05)
    with contextlib.suppress(MonitorError):
        qmp_many(paths.qmp, [("blockdev-del", {"node-name": NBD_NODE})])
    with contextlib.suppress(MonitorError):
        if qmp(paths.qmp, "query-status").get("status") in (
                "postmigrate", "finish-migrate", "paused"):
            resume_source(paths)


def resume_source(paths: VmPaths) -> None:
    """Run the source again after a migration that did not finish (cont re-activates
    the disk QEMU handed over at completion)."""
    qmp(paths.qmp, "cont")


def cleanup_source(drv: QemuDriver, guest: Guest) -> None:
    """The target runs the guest: end the source QEMU and remove its files. It is
    stopped and has handed its disk over, so SIGKILL (delete) loses nothing."""
    drv.delete(guest)


# ---------------------------------------------------------------------- cold

def files(drv: QemuDriver, guest: Guest) -> list[str]:
    """What a cold move copies: the overlay and, when it has one, its own base.

    Called before the VM stops; the base is immutable, so linking it now is safe.
    """
    paths = _paths(guest)
    if not paths.disk.exists():
        raise RuntimeFailure(f"VM '{guest.name}' has no disk at {paths.disk}")
    backing = _disk_info(paths.disk).get("full-backing-filename") or ""
    out = ["vm.json", "disk.qcow2"]
    if not backing:
        return out  # standalone (e.g. after a live move)
    own = guest.dir / BASE_FILE
    if Path(backing) != own:
        tmp = guest.dir / (BASE_FILE + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(backing, tmp)
        except OSError:
            shutil.copyfile(backing, tmp)
        tmp.chmod(0o444)
        tmp.rename(own)
        _rebase_in_place(paths, BASE_FILE)
    return [out[0], BASE_FILE, out[1]]


def _rebase_in_place(paths: VmPaths, backing: str) -> None:
    """Point the overlay at ``backing`` (same bytes, new name), running or not."""
    if process.qemu_pid(paths) is not None:
        # only the header's string changes; the open base node stays as it is
        qmp_many(paths.qmp, [("change-backing-file", {
            "device": DRIVE_ID, "image-node-name": _root_node(paths),
            "backing-file": backing})])
    else:
        runner.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", backing,
                    str(paths.disk)], timeout=60)
