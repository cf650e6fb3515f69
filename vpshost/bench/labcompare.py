"""KVM against Xen at the same nesting level, on the two lab hosts.

Both lab hosts are Debian under QEMU TCG on this machine (docs/xen.md): a Xen 4.17 dom0
and a KVM host (kvm-amd on TCG's emulated SVM). The same tiny image boots as a PV
domain on one and as a `vm` with `--accel kvm` on the other; the same fixed jobs run
natively in each lab host (in dom0 for Xen) and inside its guests. Absolute times
measure emulation; the ratios (guest against its own lab host) compare the two
hypervisors' overheads, which is the article's question.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vpshost.bench.guests import job_seconds, timed_job
from vpshost.bench.overhead import cpu_job, mem_job
from vpshost.config import Config, load
from vpshost.errors import UsageError
from vpshost.lab import hosts
from vpshost.models import Plan

Progress = Callable[[str], None]
# lab host kind -> the guest type and options that run the tiny image on it
SIDES: dict[str, tuple[str, dict[str, Any]]] = {
    "xen": ("xen", {"mode": "pv"}),
    "kvm": ("vm", {"accel": "kvm", "boot_timeout": 240}),
}
DISK_MB = 256  # the tiny image's data disk: several guests must fit the lab host's disk
LABELS = {"xen": "Xen 4.17 PV domain", "kvm": "KVM vm (kvm-amd)"}
SIZES: dict[str, Any] = {"reps": 3, "cpu_mib": 16, "mem_mib": 256, "counts": [1, 2, 4],
                         "plan_mb": 96, "startup_reps": 2}


def _say(_msg: str) -> None:
    pass


def hosts_up(cfg: Config) -> dict[str, hosts.LabHost]:
    """The first running lab host of each kind."""
    found: dict[str, hosts.LabHost] = {}
    for h in hosts.all_hosts(cfg):
        if h.kind in SIDES and h.kind not in found and hosts.pid(h) is not None \
                and hosts.agent_answers(h):
            found[h.kind] = h
    return found


def missing_reason(cfg: Config) -> str | None:
    """Why the comparison cannot run now, or None when both lab hosts are up."""
    up = hosts_up(cfg)
    gone = [k for k in SIDES if k not in up]
    if not gone:
        return None
    return ("the " + " and ".join(gone) + " lab host" + ("s are" if len(gone) > 1 else " is")
            + " not up (`vps lab xen up`, `vps lab kvm up`), so the same-nesting-level "
            "KVM-against-Xen comparison did not run")


def _native(cfg: Config, host: hosts.LabHost, job: str) -> float:
    res = hosts.exec_in(cfg, host.name, ["sh", "-c", timed_job(job)], 600)
    return job_seconds(res.returncode, res.stdout, host.name)


def _in_guest(svc: Any, name: str, job: str) -> float:
    res = svc.exec(name, ["sh", "-c", timed_job(job)], timeout=600)
    return job_seconds(res.returncode, res.stdout, name)


class _Side:
    """One lab host and the guests the comparison made on it."""

    def __init__(self, svc: Any, cfg: Config, host: hosts.LabHost, sizes: dict[str, Any],
                 progress: Progress) -> None:
        self.svc, self.cfg, self.host, self.sizes = svc, cfg, host, sizes
        self.say = progress
        self.type, self.options = SIDES[host.kind]
        self.guests: list[str] = []

    def create(self) -> tuple[str, float]:
        from vpshost.service import CreateRequest

        name = f"lc{self.host.kind[0]}-{uuid.uuid4().hex[:5]}"
        t0 = time.monotonic()
        self.guests.append(name)
        self.svc.create(CreateRequest(
            name=name, type=self.type, image="tiny", start=True, host=self.host.name,
            plan=Plan(vcpus=1, memory_mb=self.sizes["plan_mb"], disk_mb=DISK_MB),
            options=dict(self.options)))
        # ready means a command runs inside, for both types
        self.svc.exec(name, ["true"], timeout=120)
        return name, time.monotonic() - t0

    def delete_all(self) -> None:
        for name in self.guests:
            with contextlib.suppress(Exception):
                self.svc.delete(name, force=True)
        self.guests.clear()

    def median(self, run: Callable[[], float]) -> float:
        return statistics.median(run() for _ in range(self.sizes["reps"]))

    def measure(self) -> dict[str, Any]:
        s, kind = self.sizes, self.host.kind
        out: dict[str, Any] = {"label": LABELS[kind], "host": self.host.name}
        cpu, mem = cpu_job(s["cpu_mib"]), mem_job(s["mem_mib"])
        self.say(f"{kind}: native jobs in the lab host")
        native = {"cpu_s": self.median(lambda: _native(self.cfg, self.host, cpu)),
                  "mem_s": self.median(lambda: _native(self.cfg, self.host, mem))}
        self.say(f"{kind}: start-up ({s['startup_reps']} guests)")
        boots = [self.create()[1] for _ in range(s["startup_reps"])]
        first = self.guests[0]
        self.say(f"{kind}: jobs in a guest")
        guest = {"cpu_s": self.median(lambda: _in_guest(self.svc, first, cpu)),
                 "mem_s": self.median(lambda: _in_guest(self.svc, first, mem))}
        out["native"], out["guest"] = native, guest
        # throughput relative to native: native time over guest time (1.0 = native)
        out["ratio"] = {k.removesuffix("_s"): round(native[k] / guest[k], 3) for k in native}
        out["startup_s"] = [round(b, 1) for b in boots]
        out["scaling"] = self.scaling(cpu)
        return out

    def scaling(self, job: str) -> list[dict[str, Any]]:
        """The CPU job in n guests at once: MiB per second in all, and failures."""
        rows = []
        for n in self.sizes["counts"]:
            failed = 0
            while len(self.guests) < n:
                try:
                    self.create()
                except Exception as exc:  # a guest that does not fit is the finding
                    self.say(f"{self.host.kind}: guest {len(self.guests) + 1} failed: {exc}")
                    failed += 1
                    break
            names = self.guests[:n]
            self.say(f"{self.host.kind}: scaling, {len(names)} guest(s) at once")
            with ThreadPoolExecutor(len(names)) as pool:
                futures = [pool.submit(_in_guest, self.svc, g, job) for g in names]
            times = []
            for f in futures:
                try:
                    times.append(f.result())
                except Exception:
                    failed += 1
            mib = self.sizes["cpu_mib"] * len(times)
            rows.append({"guests": n, "ran": len(times), "failed": failed,
                         "mib_per_s": round(mib / max(times), 2) if times else 0.0})
        return rows


def run(sizes: dict[str, Any] | None = None, progress: Progress = _say,
        boot: bool = False, cfg: Config | None = None) -> dict[str, Any]:
    """Measure both lab hosts; boot the missing ones first when ``boot``. ``cfg`` is
    the configuration the lab hosts were started under (the default one)."""
    from vpshost.service import Service

    sizes = sizes or SIZES
    cfg = cfg or load()
    up = hosts_up(cfg)
    booted = []
    if boot:
        for kind in SIDES:
            if kind not in up:
                progress(f"booting the {kind} lab host (about a minute)")
                hosts.up(cfg, kind, f"{kind}1", timeout=600)
                booted.append(f"{kind}1")
        up = hosts_up(cfg)
    reason = missing_reason(cfg)
    if reason:
        raise UsageError(reason, "start them, or run `vps bench lab --boot`")
    t0 = time.monotonic()
    result: dict[str, Any] = {"sizes": sizes, "nesting": (
        "both lab hosts are QEMU TCG guests of this machine with -cpu max; Xen runs the "
        "PV domain, the KVM host runs QEMU with kvm-amd on the emulated SVM")}
    try:
        with tempfile.TemporaryDirectory(prefix="vpslab-bench-", dir="/var/tmp") as d:
            ccfg = load()
            ccfg.state_dir, ccfg.db_url = Path(d), ""
            ccfg.reclaim.interval_s = 0
            # as in the suite: measure the oversold lab host, not admission's refusal
            from vpshost.bench.guests import BENCH_VCPU_RATIO

            for guest_type, _options in SIDES.values():
                ccfg.overcommit.for_type(guest_type).vcpu = BENCH_VCPU_RATIO
            svc = Service(ccfg)
            for h in up.values():
                svc.host_add(h.name, h.url, hosts.secret(h))
            for kind, h in up.items():
                side = _Side(svc, cfg, h, sizes, progress)
                try:
                    result[kind] = side.measure()
                finally:
                    side.delete_all()
    finally:
        for name in booted:
            with contextlib.suppress(Exception):
                hosts.down(cfg, name)
    result["duration_s"] = round(time.monotonic() - t0, 1)
    return result


def markdown(r: dict[str, Any]) -> list[str]:
    """The report's section (a list of lines)."""
    lines = ["## KVM against Xen at the same nesting level", "",
             f"Both measured on lab hosts: {r['nesting']}. Ratios are guest against its "
             "own lab host (1.0 = no overhead); absolute times measure emulation.", "",
             "| | " + " | ".join(r[k]["label"] for k in SIDES) + " |",
             "|---|" + "---:|" * len(SIDES)]
    rows = [("CPU job (md5sum), ratio to lab host", lambda x: x["ratio"]["cpu"]),
            ("memory bandwidth (dd), ratio to lab host", lambda x: x["ratio"]["mem"]),
            ("CPU job in the lab host, s", lambda x: x["native"]["cpu_s"]),
            ("CPU job in the guest, s", lambda x: x["guest"]["cpu_s"]),
            ("create to ready, s (each)", lambda x: ", ".join(map(str, x["startup_s"])))]
    for title, get in rows:
        lines.append(f"| {title} | " + " | ".join(str(get(r[k])) for k in SIDES) + " |")
    lines += ["", "Scaling, the CPU job in n guests at once (MiB/s in all; failures):", "",
              "| guests | " + " | ".join(r[k]["label"] for k in SIDES) + " |",
              "|---:|" + "---:|" * len(SIDES)]
    for i, n in enumerate(r["sizes"]["counts"]):
        cells = []
        for k in SIDES:
            row = r[k]["scaling"][i]
            cells.append(f"{row['mib_per_s']}" + (f" ({row['failed']} failed)"
                                                    if row["failed"] else ""))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines + [""]


def write(r: dict[str, Any], out: Path) -> None:
    """lab.json, lab.md and lab.png in ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "lab.json").write_text(json.dumps(r, indent=1) + "\n")
    plot(r, out / "lab.png")
    (out / "lab.md").write_text("\n".join([*markdown(r), "![kvm against xen](lab.png)", ""]))


def plot(r: dict[str, Any], path: Path) -> None:
    from vpshost.bench.plots import _plt

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["cpu", "mem"]
    width = 0.38
    for i, kind in enumerate(SIDES):
        ax1.bar([x + i * width for x in range(len(names))],
                [r[kind]["ratio"][n] for n in names], width, label=r[kind]["label"])
        rows = r[kind]["scaling"]
        ax2.plot([row["guests"] for row in rows], [row["mib_per_s"] for row in rows],
                 marker="o", label=r[kind]["label"])
    ax1.set_xticks([x + width / 2 for x in range(len(names))], ["CPU", "memory"])
    ax1.axhline(1.0, color="grey", linewidth=0.8)
    ax1.set_ylabel("throughput, guest / its lab host")
    ax1.set_title("overhead at the same nesting level")
    ax1.legend()
    ax2.set_xlabel("guests running the CPU job at once")
    ax2.set_ylabel("MiB/s, all guests")
    ax2.set_title("scaling on a 2-vCPU lab host")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
