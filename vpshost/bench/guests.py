"""The places a benchmark job runs: the host itself ("native"), or a guest of a type.

Every job is a busybox shell script, so native, container and vm run the same program:
native runs the host's /bin/busybox, containers and the tiny VM image are busybox
userlands. Jobs time themselves from the guest kernel's clock (10 ms resolution; every job is
sized to last well over a second natively) so exec overheads stay out of the figure.

The suite runs in its own state directory, bridge prefix, subnet and nftables table
(like `vps bench lifecycle`), so it never touches the user's guests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpshost.models import Plan

ENV = {"VPS_BRIDGE_PREFIX": "vpsbn", "VPS_SUBNET": "10.213.0.0/16", "VPS_NAT_TABLE": "vpsbn"}
IMAGES = {"container": "busybox", "vm": "tiny"}
BENCH_VCPU_RATIO = 64.0
# The start time of a `cut` process (field 22 of /proc/self/stat: clock ticks since
# boot) before and after the job. Not /proc/uptime: inside containers lxcfs serves that
# file with its own notion of uptime.
TIMER = "t0=$(cut -d' ' -f22 /proc/self/stat); "
ELAPSED = "t1=$(cut -d' ' -f22 /proc/self/stat); echo \"ELAPSED $t0 $t1\""
TICKS = 100  # USER_HZ; Linux reports /proc times in 1/100 s on every architecture


def why(exc: BaseException) -> str:
    """One line on why a guest could not be made (the service's message when it has one)."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def timed_job(job: str) -> str:
    """``job`` between the guest-clock timestamps that :func:`job_seconds` reads."""
    # "&&": a failing job (a full disk, say) prints no timing and job_seconds raises
    return TIMER + job + " && " + ELAPSED


def job_seconds(rc: int, out: str, where: str) -> float:
    """The seconds a :func:`timed_job` took, or an error naming where it failed."""
    if rc != 0 or "ELAPSED" not in out:
        raise RuntimeError(f"job failed in {where} (rc {rc}): {out[-400:]}")
    return elapsed(out)


def elapsed(out: str) -> float:
    """Seconds between the TIMER and ELAPSED lines of a job's output."""
    for line in out.splitlines():
        if line.startswith("ELAPSED "):
            _, a, b = line.split()
            return max(0.005, (int(b) - int(a)) / TICKS)
    raise ValueError(f"no timing in the job's output: {out[-300:]!r}")


@dataclass
class Place:
    """Where a job runs: ``native`` or a guest name; ``scratch`` is a writable dir."""

    kind: str  # native | container | vm
    name: str
    ip: str
    scratch: str
    pid: int | None = None


@dataclass
class BenchEnv:
    svc: Any
    state_dir: Path
    made: list[str] = field(default_factory=list)
    native_dir: Path = Path("/var/tmp")

    # -- guests -------------------------------------------------------------------------
    def create(self, kind: str, plan: Plan, prefix: str = "b") -> Place:
        from vpshost.service import CreateRequest

        name = f"{prefix}{kind[0]}-{uuid.uuid4().hex[:6]}"
        self.made.append(name)
        opts = {"boot_timeout": 180} if kind == "vm" else {}
        self.svc.create(CreateRequest(name=name, type=kind, image=IMAGES[kind], plan=plan,
                                      start=True, options=opts))
        return self.place(name)

    def place(self, name: str) -> Place:
        row = self.svc.view(name)
        kind = row["type"]
        if kind == "container":
            self.wait_ready(name)
        return Place(kind, name, row["ip"], "/data" if kind == "vm" else "/root")

    def wait_ready(self, name: str, timeout: float = 60) -> float:
        """Until an exec answers: a container's "ready" (VMs: start waits for the agent)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(Exception):
                if self.svc.exec(name, ["true"], timeout=10).returncode == 0:
                    return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"{name} did not answer exec within {timeout:.0f}s")

    def delete(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.svc.delete(name, force=True)
        if name in self.made:
            self.made.remove(name)

    def restart(self, p: Place) -> None:
        """Force a guest off and on again (after a stressor that may have wrecked it)."""
        with contextlib.suppress(Exception):
            self.svc.stop(p.name, timeout=0)
        self.svc.start(p.name)
        if p.kind == "container":
            self.wait_ready(p.name)

    # -- running jobs ---------------------------------------------------------------------
    def sh(self, p: Place, script: str, timeout: float = 300) -> tuple[int, str]:
        if p.kind == "native":
            try:
                r = subprocess.run(["busybox", "sh", "-c", script], capture_output=True,
                                   text=True, timeout=timeout, cwd=p.scratch)
            except subprocess.TimeoutExpired:
                return 124, "timeout"
            return r.returncode, r.stdout + r.stderr
        try:
            res = self.svc.exec(p.name, ["sh", "-c", script], timeout=timeout)
        except Exception as exc:  # a wrecked guest: the caller counts it as a failure
            return 255, str(exc)
        return res.returncode, res.stdout + res.stderr

    def timed(self, p: Place, job: str, timeout: float = 600) -> float:
        """Run ``job`` between the guest-clock timestamps; its seconds."""
        rc, out = self.sh(p, timed_job(job), timeout)
        return job_seconds(rc, out, p.name)

    def alive(self, p: Place, timeout: float = 15) -> bool:
        rc, out = self.sh(p, "echo alive", timeout)
        return rc == 0 and "alive" in out

    def init_pid(self, p: Place) -> int | None:
        """A container's init pid (to enter its cgroups for host-side fio)."""
        from vpshost.runner import run

        out = run(["lxc-info", "-n", p.name, "-P", str(self.svc.config.guests_dir), "-p",
                   "-H"], check=False).stdout.strip()
        return int(out) if out.isdigit() else None


def native(env: BenchEnv) -> Place:
    d = env.state_dir / "native"
    d.mkdir(parents=True, exist_ok=True)
    return Place("native", "native", "127.0.0.1", str(d))


@contextlib.contextmanager
def bench_env(base: Path | None = None) -> Iterator[BenchEnv]:
    """A throwaway vpshost (state dir, bridges, subnet, nft table); all removed after."""
    from vpshost.config import load
    from vpshost.host import network
    from vpshost.service import Service

    state = Path(tempfile.mkdtemp(prefix="vpsbench-", dir=str(base or "/var/tmp")))
    state.chmod(0o711)
    saved = {k: os.environ.get(k) for k in [*ENV, "VPS_STATE_DIR"]}
    os.environ.update(ENV, VPS_STATE_DIR=str(state))
    cfg = load()
    cfg.reclaim.interval_s = 0
    # The bench measures what the host does when it is oversold: admission control would
    # stop scaling and density at vcpus x 4 guests. Memory keeps its ratio: density still
    # stops where memory would run out.
    for kind in ("container", "vm", "xen"):
        cfg.overcommit.for_type(kind).vcpu = BENCH_VCPU_RATIO
    env = BenchEnv(Service(cfg), state)
    try:
        yield env
    finally:
        for name in list(env.made):
            env.delete(name)
        for row in env.svc.list():
            with contextlib.suppress(Exception):
                env.svc.delete(row["name"], force=True)
        with contextlib.suppress(Exception):
            network.teardown(cfg.network)
        shutil.rmtree(state, ignore_errors=True)
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
