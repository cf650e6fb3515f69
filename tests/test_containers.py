"""Limits seen and enforced from inside real LXC containers (no mocks of LXC).

Memory (OOM kill inside, the container and its neighbour survive), processes (a flood
stops at the pids limit), disk (df shows the plan, writing past it gives ENOSPC), CPUs
and memory through lxcfs (nproc, /proc/meminfo, procps free in debian-12), the CPU cap
in the container's cgroup, and live resizing.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vpshost.host import cgroups

if TYPE_CHECKING:
    from conftest import Env

pytestmark = pytest.mark.lxc

V2 = cgroups.layout() is cgroups.Layout.V2


def cg(env: Env, name: str, key: str) -> str:
    """A cgroup file of the container, read from the host side."""
    return env.lxc("cgroup", name, key)


def oom_kills(env: Env, name: str) -> int:
    text = cg(env, name, "memory.events" if V2 else "memory.oom_control")
    m = re.search(r"^oom_kill (\d+)$", text, re.M)
    assert m, f"no oom_kill counter in {text!r}"
    return int(m.group(1))


def meminfo_kb(env: Env, name: str, key: str = "MemTotal") -> int:
    out = env.ok(name, "cat /proc/meminfo")
    m = re.search(rf"^{key}:\s+(\d+) kB$", out, re.M)
    assert m, out
    return int(m.group(1))


def pid_ns_members(init_pid: int) -> list[int]:
    """Host pids of every process in the pid namespace whose init is ``init_pid``."""
    ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns/pid") == ns:
                    out.append(int(entry.name))
            except OSError:
                continue  # exited meanwhile
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# -- memory ---------------------------------------------------------------------------

def test_memory_hog_is_oom_killed_inside_while_container_and_neighbour_live(
        vps_env: Env, make_container: Callable[..., str]) -> None:
    hog = make_container(memory_mb=64)
    neighbour = make_container(memory_mb=64)
    before = oom_kills(vps_env, hog)

    # dd allocates (and fills) a 300M buffer: more than the whole container may have.
    r = vps_env.sh(hog, "dd if=/dev/zero of=/dev/null bs=300M count=1")

    assert r.returncode == 128 + signal.SIGKILL, (r.returncode, r.stderr)
    assert oom_kills(vps_env, hog) > before, "the kernel's OOM killer did not fire"
    # The container itself lives on, and so does its neighbour.
    assert vps_env.lxc_state(hog) == "RUNNING"
    assert vps_env.ok(hog, "echo alive").strip() == "alive"
    assert vps_env.lxc_state(neighbour) == "RUNNING"
    assert vps_env.ok(neighbour, "echo alive").strip() == "alive"
    assert oom_kills(vps_env, neighbour) == 0
    assert vps_env.row(hog)["state"] == "running"


def test_meminfo_shows_the_plan_and_follows_a_live_resize(
        vps_env: Env, make_container: Callable[..., str]) -> None:
    name = make_container(memory_mb=64)
    assert meminfo_kb(vps_env, name) == 64 * 1024
    limit_key = "memory.max" if V2 else "memory.limit_in_bytes"
    assert int(cg(vps_env, name, limit_key)) == 64 * 1024 * 1024

    shown = vps_env.service.resize(name, memory_mb=96)

    assert shown["memory_mb"] == 96
    assert int(cg(vps_env, name, limit_key)) == 96 * 1024 * 1024
    assert meminfo_kb(vps_env, name) == 96 * 1024
    # and down again
    vps_env.service.resize(name, memory_mb=48)
    assert meminfo_kb(vps_env, name) == 48 * 1024


# -- processes ------------------------------------------------------------------------

def test_process_flood_stops_at_the_pids_limit(
        vps_env: Env, make_container: Callable[..., str]) -> None:
    limit = 32
    name = make_container(memory_mb=64, max_procs=limit)
    assert cg(vps_env, name, "pids.max") == str(limit)
    init = vps_env.init_pid(name)

    # 100 background sleeps; ash gives up at the first fork the kernel refuses.
    r = vps_env.sh(name, "i=0; while [ $i -lt 100 ]; do sleep 600 </dev/null >/dev/null "
                         "2>&1 & i=$((i+1)); done; echo spawned all")
    try:
        assert r.returncode != 0 and "spawned all" not in r.stdout
        assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr
        members = pid_ns_members(init)
        sleeps = [p for p in members if comm(p) == "sleep"]
        assert 0 < len(sleeps) < 100
        assert len(members) <= limit
        assert int(cg(vps_env, name, "pids.current")) <= limit
        events = cg(vps_env, name, "pids.events")
        assert int(events.split()[-1]) > 0, events  # the kernel counted refused forks
    finally:
        for pid in pid_ns_members(init):
            if comm(pid) == "sleep":
                os.kill(pid, signal.SIGKILL)
    vps_env.wait_for(lambda: int(cg(vps_env, name, "pids.current")) < limit // 2,
             "the flood's processes to be reaped")
    # The container survived its flood: it runs commands again.
    assert vps_env.lxc_state(name) == "RUNNING"
    count = int(vps_env.ok(name, "ps | wc -l"))
    assert count <= limit


# -- disk -----------------------------------------------------------------------------

def test_df_shows_the_plan_disk_and_writing_past_it_fails(
        vps_env: Env, make_container: Callable[..., str]) -> None:
    name = make_container(disk_mb=64)
    fields = vps_env.ok(name, "df -k /").splitlines()[-1].split()
    total_kb = int(fields[1])
    # ext4's journal and inode tables take some of it, never more than the plan
    assert 0.8 * 64 * 1024 <= total_kb <= 64 * 1024, fields

    r = vps_env.sh(name, "dd if=/dev/zero of=/fill bs=1M count=200")

    assert r.returncode != 0
    assert "No space left on device" in r.stderr
    # The host's disk was not touched: the container can free its own space again.
    vps_env.ok(name, "rm /fill && touch /after")


# -- CPUs -----------------------------------------------------------------------------

@pytest.mark.parametrize("vcpus", [1, 2])
def test_nproc_and_cpuinfo_match_the_plan(vps_env: Env, make_container: Callable[..., str],
                                          vcpus: int) -> None:
    if vcpus > (os.cpu_count() or 1):
        pytest.skip(f"this host has fewer than {vcpus} CPUs")
    name = make_container(vcpus=vcpus, memory_mb=64)
    assert int(vps_env.ok(name, "nproc")) == vcpus
    cpuinfo = vps_env.ok(name, "cat /proc/cpuinfo")
    assert len(re.findall(r"^processor\s*:", cpuinfo, re.M)) == vcpus


def test_cpu_cap_sets_the_cfs_quota_and_resizes_live(
        vps_env: Env, make_container: Callable[..., str]) -> None:
    name = make_container(memory_mb=64, cpu_cap_pct=50)
    if V2:
        assert cg(vps_env, name, "cpu.max") == "50000 100000"
    else:
        assert cg(vps_env, name, "cpu.cfs_period_us") == "100000"
        assert cg(vps_env, name, "cpu.cfs_quota_us") == "50000"

    vps_env.service.resize(name, cpu_cap_pct=25)

    if V2:
        assert cg(vps_env, name, "cpu.max") == "25000 100000"
    else:
        assert cg(vps_env, name, "cpu.cfs_quota_us") == "25000"
    assert vps_env.service.show(name)["cpu_cap_pct"] == 25


def test_no_cpu_cap_means_unlimited_quota(vps_env: Env,
                                          make_container: Callable[..., str]) -> None:
    name = make_container(memory_mb=64)
    if V2:
        assert cg(vps_env, name, "cpu.max").startswith("max")
    else:
        assert cg(vps_env, name, "cpu.cfs_quota_us") == "-1"


# -- debian-12: procps free through lxcfs ----------------------------------------------

def test_debian_free_shows_the_plan_memory(vps_env: Env,
                                           make_container: Callable[..., str]) -> None:
    name = make_container(image="debian-12", memory_mb=160, disk_mb=300)
    out = vps_env.ok(name, "free -m")
    mem = next(line.split() for line in out.splitlines() if line.startswith("Mem:"))
    assert int(mem[1]) == 160, out
    assert meminfo_kb(vps_env, name) == 160 * 1024
    assert int(vps_env.ok(name, "nproc")) == 1


# -- concurrency ----------------------------------------------------------------------

def test_concurrent_starts_all_succeed(vps_env: Env) -> None:
    """Starts at the same moment (as the API's worker pool does them) race for free loop
    devices inside lxc-start; every one of them must still come up."""
    from concurrent.futures import ThreadPoolExecutor

    from vpshost.service import Service

    names = [vps_env.unique("par") for _ in range(6)]  # the default ratio allows 8 vCPUs
    last = names[-1]
    try:
        for name in names:
            vps_env.create(name, start=False, memory_mb=32, disk_mb=32)
        # The bridge exists before the race (the first start on a fresh host makes it).
        vps_env.service.start(names.pop())
        barrier = threading.Barrier(len(names))

        def start(name: str) -> str:
            svc = Service(vps_env.config)  # one per thread, as separate requests have
            barrier.wait()
            return svc.start(name)["state"]

        with ThreadPoolExecutor(len(names)) as pool:
            states = list(pool.map(start, names))
        assert states == ["running"] * len(names)
        assert all(vps_env.lxc_state(n) == "RUNNING" for n in names)
    finally:
        names.append(last)
        for name in names:
            vps_env.remove(name)
