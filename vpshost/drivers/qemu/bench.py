"""Boot time and memory overhead of `tiny` VMs: through vpshost vs raw QEMU.

Both paths are timed the same way, from launch until the guest's init prints
"vpshost: userspace up" on its serial console, in the same run and alternating, so
the ratio measures what vpshost adds (Python, overlay, QMP sockets, daemonizing,
cgroup placement), not the machine's mood. The driver's "ready" time adds the first
answer of the exec agent, which is what `vps start` waits for.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from vpshost.config import Config
from vpshost.drivers.base import Progress, no_progress
from vpshost.drivers.qemu import accel as accel_mod
from vpshost.drivers.qemu.cmdline import QEMU, kernel_args
from vpshost.drivers.qemu.driver import QemuDriver
from vpshost.host import vmimages
from vpshost.models import Guest, NetSpec, Plan

MARKER = b"vpshost: userspace up"


def _wait_marker(log: Path, t0: float, timeout: float) -> float:
    while time.monotonic() - t0 < timeout:
        try:
            if MARKER in log.read_bytes():
                return time.monotonic() - t0
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"no '{MARKER.decode()}' in {log} after {timeout:.0f}s")


def _raw_boot(cfg: Config, work: Path, guest: Guest, accel: str) -> float:
    """The same VM as a hand-written QEMU command line, no vpshost in the way."""
    image = vmimages.meta(cfg, "tiny")
    assert image is not None
    d = Path(image["dir"])
    disk = work / "raw.qcow2"
    log = work / "raw.log"
    log.unlink(missing_ok=True)
    disk.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(d / image["disk"]), str(disk)], check=True)
    argv = [QEMU, "-machine", "q35", "-accel", accel, "-cpu", accel_mod.cpu_model(accel),
            "-smp", "1", "-m", f"{guest.plan.memory_mb}M", "-nodefaults", "-display", "none",
            "-serial", f"file:{log}", "-drive", f"file={disk},format=qcow2,if=virtio",
            "-device", "virtio-balloon-pci", "-device", "virtio-rng-pci",
            "-kernel", str(d / image["kernel"]), "-initrd", str(d / image["initrd"]),
            "-append", kernel_args(guest, str(image.get("append", "")))]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return _wait_marker(log, t0, 120)
    finally:
        proc.kill()
        proc.wait()


def _driver_boot(driver: QemuDriver, guest: Guest) -> dict[str, float]:
    log = guest.dir / "console.log"
    log.unlink(missing_ok=True)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        seen = pool.submit(_wait_marker, log, t0, 120)
        driver.start(guest)  # waits for the agent: the guest is usable when it returns
        ready = time.monotonic() - t0
        userspace = seen.result()
    time.sleep(2)  # let it go idle before measuring memory and CPU
    st = driver.stats(guest)
    proc = psutil.Process(int(st["pid"]))
    proc.cpu_percent(None)
    time.sleep(2)
    idle_cpu = proc.cpu_percent(None)
    st = driver.stats(guest)
    driver.stop(guest, 10)
    return {"userspace_s": userspace, "ready_s": ready, "overhead_mb": st["overhead_mb"],
            "rss_mb": st["rss_mb"], "idle_cpu_pct": idle_cpu}


def bench_vm(cfg: Config, runs: int = 3, memory_mb: int = 128, bridge: str | None = None,
             progress: Progress = no_progress) -> dict[str, Any]:
    """Median boot times (driver vs raw), ratio, per-VM overhead and a density estimate."""
    vmimages.build(cfg, "tiny", progress)
    accel = accel_mod.choose("")
    work = cfg.state_dir / "bench-vm"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    net = None
    if bridge:
        net = NetSpec(ip="10.255.255.250", prefixlen=24, gateway="", bridge=bridge,
                      mac="0a:76:70:ff:ff:fa")
    guest = Guest(id=16_777_000, name="benchvm", type="vm", image="tiny",
                  plan=Plan(memory_mb=memory_mb, disk_mb=256), net=net,
                  dir=work / "benchvm", options={"boot_timeout": 60})
    driver = QemuDriver(cfg)
    raw: list[float] = []
    via: list[dict[str, float]] = []
    try:
        driver.create(guest)
        for i in range(runs):
            progress(f"run {i + 1}/{runs}: raw qemu")
            raw.append(_raw_boot(cfg, work, guest, accel))
            progress(f"run {i + 1}/{runs}: through the driver")
            via.append(_driver_boot(driver, guest))
    finally:
        driver.delete(guest)
        shutil.rmtree(work, ignore_errors=True)

    def med(key: str) -> float:
        return round(statistics.median(v[key] for v in via), 2)

    raw_s = round(statistics.median(raw), 2)
    per_vm_mb = med("rss_mb")
    avail_mb = psutil.virtual_memory().available / 2**20
    idle = max(med("idle_cpu_pct"), 0.1)
    fit_mem = int(avail_mb * 0.9 // per_vm_mb)
    fit_cpu = int((os.cpu_count() or 1) * 100 * 0.8 // idle)
    return {
        "accel": accel, "runs": runs, "guest_memory_mb": memory_mb,
        "raw_userspace_s": raw_s, "driver_userspace_s": med("userspace_s"),
        "driver_ready_s": med("ready_s"),
        "ratio_userspace": round(med("userspace_s") / raw_s, 2),
        "ratio_ready": round(med("ready_s") / raw_s, 2),
        "qemu_overhead_mb": med("overhead_mb"), "rss_per_idle_vm_mb": per_vm_mb,
        "idle_cpu_pct_per_vm": med("idle_cpu_pct"),
        "idle_vms_fit_memory": fit_mem, "idle_vms_fit_cpu": fit_cpu,
        "idle_vms_fit": min(fit_mem, fit_cpu),
        "note": "fit = estimate from one idle VM: 90% of available RAM / RSS, "
                "80% of host CPUs / idle CPU%",
    }
