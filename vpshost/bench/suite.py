"""`vps bench`: overhead, isolation, scalability, density and start-up of every guest
type this host runs, against native, in one run; JSON, a Markdown report and PNG plots.

Sizes live in one table per mode (QUICK, FULL, and TINY for the test suite), so every
mode runs the same code path. VMs here are QEMU under TCG unless the host has real
VT-x/AMD-V: their figures measure emulation, and the report says so everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vpshost.models import Plan

QUICK: dict[str, Any] = {
    "mode": "quick", "expected_min": 7,
    "overhead": {"reps": 1, "cpu_mib": 64, "mem_mib": 1024, "disk_mib": 32, "net_mib": 128,
                 "pings": 10, "fio_mb": 64, "fio_s": 3, "target_s": 1.0},
    "isolation": {"seconds": 5, "rate": 20, "plan_mb": 128},
    "scaling": {"counts": [1, 2, 4], "mib": 64},
    "density": {"container": 8, "vm": 3, "settle_s": 5},
    "startup": {"reps": 2},
    "lab": {"reps": 1, "cpu_mib": 8, "mem_mib": 128, "counts": [1, 2], "plan_mb": 96,
            "startup_reps": 1},
}
FULL: dict[str, Any] = {
    "mode": "full", "expected_min": 25,
    "overhead": {"reps": 3, "cpu_mib": 64, "mem_mib": 1024, "disk_mib": 32,
                 "net_mib": 512, "pings": 30, "fio_mb": 256, "fio_s": 10, "target_s": 3.0},
    "isolation": {"seconds": 15, "rate": 20, "plan_mb": 128},
    "scaling": {"counts": [1, 2, 4, 8, 16, 32], "mib": 512},
    "density": {"container": 100, "vm": 24, "settle_s": 15},
    "startup": {"reps": 5},
    "lab": {"reps": 3, "cpu_mib": 16, "mem_mib": 256, "counts": [1, 2, 4], "plan_mb": 96,
            "startup_reps": 2},
}
# the test suite: every section, the smallest sizes that still give numbers
TINY: dict[str, Any] = {
    "mode": "tiny", "expected_min": 4,
    "overhead": {"reps": 1, "cpu_mib": 16, "mem_mib": 256, "disk_mib": 8, "net_mib": 16,
                 "pings": 3, "fio_mb": 16, "fio_s": 1, "target_s": 0.2},
    "isolation": {"seconds": 2, "rate": 10, "plan_mb": 128},
    "scaling": {"counts": [1, 2], "mib": 16},
    "density": {"container": 2, "vm": 1, "settle_s": 1},
    "startup": {"reps": 1},
    "lab": {"reps": 1, "cpu_mib": 4, "mem_mib": 32, "counts": [1], "plan_mb": 96,
            "startup_reps": 1},
}
MODES = {"quick": QUICK, "full": FULL, "tiny": TINY}
PLAN = {"container": Plan(vcpus=1, memory_mb=128, disk_mb=256, max_procs=256),
        "vm": Plan(vcpus=1, memory_mb=128, disk_mb=512, max_procs=256)}
SECTIONS = ("overhead", "isolation", "scaling", "density", "startup")


def machine(svc: Any) -> dict[str, Any]:
    """What the figures were measured on."""
    import psutil

    info: dict[str, Any] = {"kernel": platform.release(), "cores": os.cpu_count(),
                            "memory_mb": psutil.virtual_memory().total // 2**20,
                            "python": platform.python_version()}
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in cpu.splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    from vpshost.drivers.qemu import accel

    info["vm_accel"] = accel.choose("")
    with_host = {}
    with contextlib.suppress(Exception):
        with_host = svc.host_info()
    for k in ("cgroup", "lxc_version", "qemu_version", "kvm", "kvm_detail"):
        if k in with_host:
            info[k] = with_host[k]
    return info


def available_types(svc: Any, wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """The types this host can run among ``wanted``, and why the others are skipped."""
    runs, skipped = [], {}
    for kind in wanted:
        try:
            probe = svc.driver(kind).probe()
        except Exception as exc:
            skipped[kind] = str(getattr(exc, "message", exc))
            continue
        if probe.usable:
            runs.append(kind)
        else:
            skipped[kind] = probe.detail
    return runs, skipped


def run_suite(mode: str = "quick", types: list[str] | None = None,
              out_dir: Path | None = None, progress: Any = print) -> dict[str, Any]:
    """Run every section for every type; write results.json, report.md and plots."""
    from vpshost.bench import density, isolation, labcompare, overhead, scaling, startup
    from vpshost.bench.guests import BENCH_VCPU_RATIO, bench_env, native
    from vpshost.bench.report import write_all
    from vpshost.config import load

    q = MODES[mode]
    # the lab hosts live under the default configuration, not the bench's private one
    lab_cfg = load()
    lab_missing = labcompare.missing_reason(lab_cfg)
    t_start = time.monotonic()
    result: dict[str, Any] = {"mode": mode, "params": q, "bench_vcpu_ratio": BENCH_VCPU_RATIO,
                              "started": datetime.now(UTC).isoformat(timespec="seconds")}
    with bench_env() as env:
        for kind in ("container", "vm"):
            if kind in (types or ["container", "vm"]):
                env.svc.image_build(IMAGE_OF[kind], kind, progress=lambda _m: None)
        kinds, skipped = available_types(env.svc, types or ["container", "vm", "xen"])
        result["machine"] = machine(env.svc)
        accel = result["machine"]["vm_accel"].upper()
        result["labels"] = {"native": "native", "container": "container (LXC)",
                            "vm": f"vm (QEMU {accel})", "xen": "xen"}
        result["skipped"] = skipped
        if lab_missing:
            result["skipped"]["kvm-vs-xen lab"] = lab_missing
        nat = native(env)
        progress(f"types: {', '.join(kinds)}; skipped: {', '.join(skipped) or 'none'}")

        # overhead
        places = [nat] + [env.create(k, PLAN[k], prefix="o") for k in kinds]
        result["overhead"] = overhead.run(env, places, q["overhead"], progress)
        for p in places[1:]:
            env.delete(p.name)

        # isolation
        result["isolation"] = {}
        for k in kinds:
            good = env.create(k, PLAN[k], prefix="g")
            bad = env.create(k, PLAN[k], prefix="n")
            gw = env.svc.addresses.netspec(good.ip, "02:00:00:00:00:01").gateway
            result["isolation"][k] = isolation.run_type(env, good, bad, gw,
                                                        q["isolation"], progress)
            env.delete(good.name)
            env.delete(bad.name)

        # scaling
        sq = q["scaling"]
        small = {k: Plan(vcpus=1, memory_mb=128 if k == "vm" else 64, disk_mb=PLAN[k].disk_mb)
                 for k in kinds}
        result["scaling"] = {"native": scaling.run(env, "native", sq["counts"], sq["mib"],
                                                   Plan(), progress, native=nat)}
        for k in kinds:
            result["scaling"][k] = scaling.run(env, k, sq["counts"], sq["mib"], small[k],
                                               progress)

        # density
        dq = q["density"]
        result["density"] = {k: density.run(env, k, dq[k], small[k], dq["settle_s"], progress)
                             for k in kinds}

        # start-up
        result["startup"] = {k: startup.run(env, k, q["startup"]["reps"], PLAN[k], progress)
                             for k in kinds}

        if not lab_missing:
            progress("KVM against Xen on the lab hosts")
            result["lab"] = labcompare.run(q["lab"], progress, cfg=lab_cfg)
    result["duration_s"] = round(time.monotonic() - t_start, 1)
    out = out_dir or default_dir()
    write_all(result, out)
    result["out_dir"] = str(out)
    return result


IMAGE_OF = {"container": "busybox", "vm": "tiny"}


def default_dir() -> Path:
    from vpshost.config import load

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return load().state_dir / "bench" / stamp


def latest(paths: list[Path]) -> Path | None:
    """The newest results.json under any of ``paths`` (for `vps advise`)."""
    found = [f for d in paths if d.is_dir() for f in d.rglob("results.json")]
    return max(found, key=lambda f: f.stat().st_mtime) if found else None


def load_results(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
