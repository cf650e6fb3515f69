"""Admission control under per-type overcommit ratios: pure rules, then one real refusal
from the `vps` command with the default ratios."""

from __future__ import annotations

import json

import pytest

from vpshost.config import OvercommitConfig, Ratios
from vpshost.models import Plan
from vpshost.service.capacity import CapacityError, Commit, Physical, admit, summary

HOST = Physical(vcpu=2, memory=4096, disk=10_000)


def ratios(**per_type: Ratios) -> OvercommitConfig:
    return OvercommitConfig(**per_type)


def test_fits_up_to_the_ratio_and_not_beyond() -> None:
    cfg = ratios(vm=Ratios(vcpu=4.0, memory=1.0, disk=1.0))
    commits = [Commit("vm", 2, 256, 100)] * 3  # 6 of 8 vCPUs sold
    admit(HOST, commits, cfg, "vm", Plan(vcpus=2, memory_mb=256, disk_mb=100))
    commits.append(Commit("vm", 2, 256, 100))  # now 8 of 8
    with pytest.raises(CapacityError) as exc:
        admit(HOST, commits, cfg, "vm", Plan(vcpus=1, memory_mb=256, disk_mb=100))
    msg = exc.value.message
    assert "not enough vcpu for this vm" in msg
    assert "8 vCPUs committed" in msg and "2 CPUs x 4" in msg and "0 vCPUs left" in msg
    assert "[overcommit.vm] vcpu" in exc.value.hint


def test_names_the_tightest_resource() -> None:
    cfg = ratios()
    commits = [Commit("container", 1, 3900, 100)]
    # memory is over by a lot, disk by a little: memory is named
    with pytest.raises(CapacityError) as exc:
        admit(HOST, commits, cfg, "container", Plan(memory_mb=1024, disk_mb=9950))
    assert "not enough memory" in exc.value.message
    assert "196 MiB left" in exc.value.message


def test_memory_overcommit_ratio_lets_more_in() -> None:
    commits = [Commit("container", 1, 4000, 10)]
    with pytest.raises(CapacityError):
        admit(HOST, commits, ratios(), "container", Plan(memory_mb=512))
    admit(HOST, commits, ratios(container=Ratios(memory=1.5)), "container",
          Plan(memory_mb=512))


def test_types_share_the_host_at_their_own_cost() -> None:
    # containers sold 8 vCPUs at 4x: they use both physical CPUs, so even a VM at 4x
    # has no room, and the message says other types hold the room
    cfg = ratios(container=Ratios(vcpu=4.0), vm=Ratios(vcpu=4.0))
    commits = [Commit("container", 2, 64, 64)] * 4
    with pytest.raises(CapacityError) as exc:
        admit(HOST, commits, cfg, "vm", Plan(vcpus=1, memory_mb=64, disk_mb=64))
    assert "other types already use 2" in exc.value.message


def test_summary_reports_cost_and_room() -> None:
    cfg = ratios(vm=Ratios(vcpu=2.0, memory=1.0, disk=1.0))
    s = summary(HOST, [Commit("vm", 2, 1024, 500), Commit("container", 4, 512, 100)], cfg)
    assert s["types"]["vm"]["vcpu"] == {"committed": 2, "ratio": 2.0, "physical_cost": 1.0,
                                        "available": 0}
    assert s["used"]["vcpu"] == 2.0  # 2/2 + 4/4
    assert s["used"]["memory"] == 1536
    assert s["types"]["container"]["memory"]["available"] == 4096 - 1536
    assert s["used_pct"]["disk"] == 6.0


@pytest.mark.lxc
def test_cli_refuses_past_the_vcpu_ratio(vps_env) -> None:  # type: ignore[no-untyped-def]
    """Default ratios (vcpu 4.0): fill the container vCPU room with stopped 2-vCPU
    containers, then `vps create` one more and read the refusal."""
    cap = json.loads(vps_env.cli("host", "capacity", "--json").stdout)
    room = cap["types"]["container"]["vcpu"]["available"]
    assert cap["types"]["container"]["vcpu"]["ratio"] == 4.0
    made = []
    try:
        for _ in range(room // 2):
            made.append(vps_env.create(start=False, vcpus=2, memory_mb=32, disk_mb=32))
        if room % 2:
            made.append(vps_env.create(start=False, vcpus=1, memory_mb=32, disk_mb=32))
        name = vps_env.unique("over")
        r = vps_env.cli("create", name, "--cpus", "1", "--memory", "32M", "--disk", "32M")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "not enough vcpu for this container" in r.stderr
        assert f"{cap['physical']['vcpu']} CPUs x 4" in r.stderr
        assert "hint:" in r.stderr and "vps host capacity" in r.stderr
        assert name not in vps_env.names()
        after = json.loads(vps_env.cli("host", "capacity", "--json").stdout)
        assert after["types"]["container"]["vcpu"]["available"] == 0
    finally:  # give the room back to the other tests of the session
        for n in made:
            vps_env.remove(n)
