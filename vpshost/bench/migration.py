"""`vps bench migration`: live migration of a `tiny` VM through vpshost and through raw
QEMU commands, same machine, same run, alternating.

Both sides do the same work: a target QEMU started paused with ``-incoming defer``, an
NBD export of a fresh disk, ``blockdev-mirror`` (sync=full) of the source disk to it,
RAM pre-copy with auto-converge, the same downtime limit and bandwidth, the mirror
cancelled once the source stopped, then ``cont`` on the target. The raw side is a
hand-written QMP script on hand-written command lines; the vpshost side is the VM
driver's migrate_prepare/send/finish (what the agents run on each host), without the
HTTP hop between hosts. Both run on this one host (source and target are two QEMU
processes), with no network device, so the figures measure QEMU plus what vpshost
adds, not a network.

Downtime is the guest's real pause: the source's STOP event to the target's resume,
both QEMU event timestamps on the same clock; QEMU's own ``downtime`` (stop to
completion on the source) is reported too. Total is from launching the target QEMU
until the guest runs there. The accelerator is named in every figure: on machines
without VT-x/AMD-V it is TCG, and TCG figures are not KVM figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from vpshost.config import Config
from vpshost.drivers.base import Progress, no_progress
from vpshost.drivers.qemu import accel as accel_mod
from vpshost.drivers.qemu.cmdline import QEMU, kernel_args
from vpshost.drivers.qemu.driver import QemuDriver
from vpshost.drivers.qemu.migrate import MAX_BANDWIDTH
from vpshost.host import vmimages
from vpshost.models import Guest, Plan

MARKER = b"vpshost: userspace up"
DOWNTIME_MS = 300
SIZES_MB = (256, 1024)


def _wait_marker(log: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.exists() and MARKER in log.read_bytes():
            return
        time.sleep(0.05)
    raise TimeoutError(f"no '{MARKER.decode()}' in {log}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ts(ev: Any) -> float:
    t = ev["timestamp"]
    return float(t["seconds"]) + float(t["microseconds"]) / 1e6


# ---------------------------------------------------------------------- raw QEMU

def _raw_argv(cfg: Config, d: Path, memory_mb: int, accel: str, disk: Path,
              incoming: bool) -> list[str]:
    image = vmimages.meta(cfg, "tiny")
    assert image is not None
    img = Path(image["dir"])
    guest = Guest(id=0, name="raw", type="vm", image="tiny", plan=Plan(), net=None, dir=d)
    argv = [QEMU, "-machine", "q35", "-accel", accel, "-cpu", accel_mod.cpu_model(accel),
            "-smp", "1", "-m", f"{memory_mb}M", "-nodefaults", "-display", "none",
            "-daemonize", "-pidfile", str(d / "pid"),
            "-qmp", f"unix:{d / 'qmp'},server=on,wait=off",
            "-serial", f"file:{d / 'serial.log'}",
            "-drive", f"file={disk},format=qcow2,if=none,id=drive0",
            "-device", "virtio-blk-pci,drive=drive0",
            "-kernel", str(img / image["kernel"]), "-initrd", str(img / image["initrd"]),
            "-append", kernel_args(guest, str(image.get("append", "")))]
    return argv + (["-S", "-incoming", "defer"] if incoming else [])


async def _qmp(sock: Path) -> QMPClient:
    c = QMPClient("raw")
    await c.connect(str(sock))
    return c


async def _raw_migrate(src: Path, dst: Path, launch_target: list[str]) -> dict[str, float]:
    """The whole live migration by hand: the same QMP a sysadmin would type."""
    s = await _qmp(src / "qmp")
    t0 = time.monotonic()
    subprocess.run(launch_target, check=True)
    t = await _qmp(dst / "qmp")
    nbd, mig = _free_port(), _free_port()
    blocks: Any = await t.execute("query-block")
    node = next(b["inserted"]["node-name"] for b in blocks if b["device"] == "drive0")
    await t.execute("nbd-server-start", {"addr": {"type": "inet", "data": {
        "host": "127.0.0.1", "port": str(nbd)}}})
    await t.execute("block-export-add", {"type": "nbd", "id": "e", "node-name": node,
                                         "name": "drive0", "writable": True})
    await t.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{mig}"})
    await s.execute("blockdev-add", {"driver": "nbd", "node-name": "nbd", "export": "drive0",
                                     "server": {"type": "inet", "host": "127.0.0.1",
                                                "port": str(nbd)}})
    await s.execute("blockdev-mirror", {"job-id": "m", "device": "drive0", "target": "nbd",
                                        "sync": "full"})
    while True:
        jobs: Any = await s.execute("query-block-jobs")
        if any(j.get("ready") for j in jobs):
            break
        await asyncio.sleep(0.05)
    await s.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "auto-converge", "state": True}]})
    await s.execute("migrate-set-parameters", {"downtime-limit": DOWNTIME_MS,
                                               "max-bandwidth": MAX_BANDWIDTH})
    await s.execute("migrate", {"uri": f"tcp:127.0.0.1:{mig}"})
    while True:
        info: dict[str, Any] = await s.execute("query-migrate")  # type: ignore[assignment]
        if info["status"] == "completed":
            break
        if info["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"raw migration {info['status']}")
        await asyncio.sleep(0.02)
    await s.execute("block-job-cancel", {"device": "m"})
    while await s.execute("query-block-jobs"):
        await asyncio.sleep(0.005)
    await t.execute("cont")
    total = time.monotonic() - t0
    stop = next(_ts(e) for e in s.events.clear() if e["event"] == "STOP")
    resume = next(_ts(e) for e in t.events.clear() if e["event"] == "RESUME")
    await s.disconnect()
    await t.disconnect()
    return {"downtime_ms": (resume - stop) * 1000, "qemu_downtime_ms": float(info["downtime"]),
            "total_ms": total * 1000}


def _kill(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    subprocess.run(["kill", "-9", str(pid)], check=False)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


def _raw_run(cfg: Config, work: Path, memory_mb: int, accel: str) -> dict[str, float]:
    base = vmimages.base_path(cfg, "tiny")
    assert base is not None
    src, dst = work / "raw-src", work / "raw-dst"
    for d in (src, dst):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    size = json.loads(subprocess.run(["qemu-img", "info", "--output", "json", str(base)],
                                     capture_output=True, check=True).stdout)["virtual-size"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                    str(src / "disk.qcow2")], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(dst / "disk.qcow2"),
                    str(size)], check=True)
    try:
        subprocess.run(_raw_argv(cfg, src, memory_mb, accel, src / "disk.qcow2", False),
                       check=True)
        _wait_marker(src / "serial.log")
        time.sleep(1)  # settle like the driver side (its agent answered already)
        return asyncio.run(_raw_migrate(src, dst, _raw_argv(
            cfg, dst, memory_mb, accel, dst / "disk.qcow2", True)))
    finally:
        _kill(src / "pid")
        _kill(dst / "pid")
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)


# ---------------------------------------------------------------------- vpshost

def _driver_run(driver: QemuDriver, work: Path, memory_mb: int) -> dict[str, float]:
    src = Guest(id=16_777_010, name="benchmig-a", type="vm", image="tiny",
                plan=Plan(memory_mb=memory_mb, disk_mb=256), net=None,
                dir=work / "a" / "benchmig-a", options={"boot_timeout": 120})
    # the target is another name only because both run on this one host (cgroups)
    dst = dataclasses.replace(src, name="benchmig-b", dir=work / "b" / "benchmig-b")
    try:
        driver.create(src)
        driver.start(src)
        time.sleep(1)
        t0 = time.monotonic()
        incoming = driver.migrate_prepare(dst, "127.0.0.1")
        stats = driver.migrate_send(src, incoming, DOWNTIME_MS, False)
        fin = driver.migrate_finish(dst)
        total = time.monotonic() - t0
        return {"downtime_ms": (fin["resumed_at"] - stats["stopped_at"]) * 1000,
                "qemu_downtime_ms": float(stats["qemu_downtime_ms"]),
                "total_ms": total * 1000}
    finally:
        driver.delete(src)
        driver.delete(dst)


def bench_migration(cfg: Config, runs: int = 2, sizes: tuple[int, ...] = SIZES_MB,
                    progress: Progress = no_progress) -> dict[str, Any]:
    """Median downtime and total per guest size, vpshost vs raw QEMU, and the ratios."""
    vmimages.build(cfg, "tiny", progress)
    accel = accel_mod.choose("")
    work = cfg.state_dir / "bench-migration"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    driver = QemuDriver(cfg)
    out: dict[str, Any] = {"accel": accel, "downtime_limit_ms": DOWNTIME_MS, "runs": runs,
                           "sizes": {}}
    try:
        for mb in sizes:
            raw: list[dict[str, float]] = []
            via: list[dict[str, float]] = []
            for i in range(runs):
                progress(f"{mb} MiB, run {i + 1}/{runs}: raw QEMU ({accel})")
                raw.append(_raw_run(cfg, work, mb, accel))
                progress(f"{mb} MiB, run {i + 1}/{runs}: through vpshost ({accel})")
                via.append(_driver_run(driver, work, mb))

            def med(rows: list[dict[str, float]], key: str) -> float:
                return round(statistics.median(r[key] for r in rows), 1)

            row = {f"{side}_{k}": med(rows, k) for side, rows in (("vpshost", via),
                                                                    ("raw", raw))
                   for k in ("downtime_ms", "qemu_downtime_ms", "total_ms")}
            row["downtime_ratio"] = round(row["vpshost_downtime_ms"]
                                          / max(row["raw_downtime_ms"], 0.1), 2)
            row["total_ratio"] = round(row["vpshost_total_ms"]
                                       / max(row["raw_total_ms"], 0.1), 2)
            row["downtime_goal_met"] = row["vpshost_downtime_ms"] <= DOWNTIME_MS
            row["total_goal_met"] = row["total_ratio"] <= 1.2
            out["sizes"][f"{mb}MiB"] = row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def render(result: dict[str, Any]) -> str:
    acc = str(result["accel"]).upper()
    lines = [f"live migration, accelerator {acc}, downtime limit "
             f"{result['downtime_limit_ms']} ms, median of {result['runs']} run(s)",
             f"{'guest':>8} {'side':>8} {'downtime':>10} {'qemu dt':>9} {'total':>9}"]
    for size, r in result["sizes"].items():
        for side in ("vpshost", "raw"):
            lines.append(f"{size:>8} {side:>8} {r[side + '_downtime_ms']:>8.0f}ms "
                         f"{r[side + '_qemu_downtime_ms']:>7.0f}ms {r[side + '_total_ms']:>7.0f}ms")
        lines.append(f"{size:>8} {'ratio':>8} {r['downtime_ratio']:>9.2f}x {'':>9} "
                     f"{r['total_ratio']:>8.2f}x   goals: downtime<=300ms "
                     f"{'met' if r['downtime_goal_met'] else 'MISSED'}, total<=1.2x raw "
                     f"{'met' if r['total_goal_met'] else 'MISSED'} ({acc})")
    return "\n".join(lines)
