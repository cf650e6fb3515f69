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


def test_reclaim_floor_and_idle_rules() -> None:
    from vpshost.config import ReclaimConfig
    from vpshost.service.reclaim import floor_mb, idle_vms

    cfg = ReclaimConfig(floor_pct=50, floor_min_mb=64)
    assert floor_mb(512, cfg) == 256 and floor_mb(100, cfg) == 64 and floor_mb(48, cfg) == 48
    assert idle_vms({"a": 1.0, "b": 1.0}, {"a": 1.1, "b": 3.0, "c": 0.0}, 2.0, 10.0) == ["a"]


@pytest.mark.slow
@pytest.mark.qemu
def test_balloon_reclaim_shrinks_an_idle_vm_when_memory_is_short(vps_env) -> None:  # type: ignore[no-untyped-def]
    """A real tiny VM (TCG): a pass with the threshold above the host's free memory
    shrinks its balloon to the floor, records it, shows it; a pass with memory
    plentiful gives it back. Metrics see the VM too."""
    import copy
    import shutil

    from tests.conftest import wait_for
    from vpshost import metrics
    from vpshost.host import ksm
    from vpshost.service import CreateRequest, Service
    from vpshost.service.reclaim import tick

    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    name = vps_env.unique("rcl")
    vps_env._mine.append(name)
    try:
        vps_env.service.create(CreateRequest(name=name, type="vm", image="tiny",
                                             plan=Plan(memory_mb=256, disk_mb=256),
                                             start=True))
        cfg = copy.deepcopy(vps_env.config)
        cfg.reclaim.free_threshold_mb = 10**9  # "memory is short", whatever the host has
        cfg.reclaim.window_s = 2.0
        cfg.reclaim.idle_cpu_pct = 60.0  # an idle TCG guest still ticks
        short = Service(cfg)
        actions = tick(short)
        assert [a["name"] for a in actions] == [name]
        assert actions[0]["action"] == "reclaimed" and actions[0]["to_mb"] == 128
        if ksm.available():
            assert ksm.status()["run"] == 1  # switched on while VMs run

        def balloon() -> int:
            return int(vps_env.service.show(name, stats=True)["stats"]["balloon_mb"])

        wait_for(lambda: balloon() <= 132, "the guest to give memory back", timeout=60,
                 interval=0.5)
        assert tick(short) == []  # already at the floor: nothing more to take
        ev = [e for e in vps_env.service.events(name) if e["kind"] == "reclaimed"]
        assert ev and "256M -> 128M" in ev[0]["message"]
        shown = vps_env.cli("show", name, "--json")
        assert '"balloon_mb": 1' in shown.stdout and "reclaimed" in shown.stdout

        sample = next(s for s in metrics.collect(vps_env.service) if s["name"] == name)
        assert sample["type"] == "vm" and sample["cpu_seconds"] > 0
        assert sample["memory_bytes"] > 0 and sample["io_read_bytes"] > 0
        assert sample["net_rx_bytes"] is not None

        cfg.reclaim.free_threshold_mb = 1  # memory plentiful again
        back = tick(Service(cfg))
        assert back and back[0]["action"] == "restored-memory" and back[0]["to_mb"] == 256
        wait_for(lambda: balloon() >= 250, "the balloon to deflate", timeout=60,
                 interval=0.5)
    finally:
        vps_env.remove(name)
