"""The `vm` type through the service and the CLI, beside containers on the same bridge."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.qemu,
              pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                 reason="qemu-system-x86_64 is not installed")]


@pytest.fixture(scope="module")
def vm(vps_env: Any) -> Any:
    from vpshost.models import Plan
    from vpshost.service import CreateRequest

    name = vps_env.unique("vm")
    vps_env._mine.append(name)
    vps_env.service.create(CreateRequest(name=name, type="vm", image="tiny",
                                         plan=Plan(memory_mb=192, disk_mb=256), start=True))
    yield name
    vps_env.remove(name)


def test_vm_gets_its_address_and_a_container_on_the_bridge_reaches_it(
        vps_env: Any, vm: str, make_container: Any) -> None:
    row = vps_env.service.view(vm)
    assert row["type"] == "vm" and row["state"] == "running" and row["ip"]
    inside = vps_env.service.exec(vm, ["ip", "-4", "addr", "show", "eth0"]).stdout
    assert row["ip"] in inside
    box = make_container()
    assert vps_env.ok(box, f"ping -c 2 -W 5 {row['ip']}")
    # and the VM reaches the container back by its address
    box_ip = vps_env.service.view(box)["ip"]
    assert vps_env.service.exec(vm, ["ping", "-c", "2", "-W", "5", box_ip]).returncode == 0


def test_show_reports_qemu_overhead_and_accelerator(vps_env: Any, vm: str) -> None:
    out = vps_env.cli("show", vm, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    stats = data["stats"]
    assert stats["accel"] in ("kvm", "tcg")
    assert stats["overhead_mb"] > 0  # QEMU's own memory beyond guest RAM
    assert stats["memory_mb"] == 192


def test_snapshot_restore_through_the_cli(vps_env: Any, vm: str) -> None:
    svc = vps_env.service
    assert svc.exec(vm, ["sh", "-c", "echo before > /mnt/disk/f1 2>/dev/null || "
                         "echo before > /root/f1; sync"]).returncode == 0
    assert vps_env.cli("snapshot", "create", vm, "snap1").returncode == 0
    listed = json.loads(vps_env.cli("snapshot", "list", vm, "--json").stdout)
    assert [s["name"] for s in listed] == ["snap1"] and listed[0]["with_memory"]
    svc.exec(vm, ["sh", "-c", "echo after > /root/f2; sync"])
    restored = vps_env.cli("snapshot", "restore", vm, "snap1")
    assert restored.returncode == 0, restored.stderr
    assert svc.view(vm)["state"] == "running"
    assert svc.exec(vm, ["sh", "-c", "ls /root"]).returncode == 0
    assert "f2" not in svc.exec(vm, ["ls", "/root"]).stdout
    assert vps_env.cli("snapshot", "delete", vm, "snap1").returncode == 0


def test_pause_resume_and_live_memory_resize(vps_env: Any, vm: str) -> None:
    svc = vps_env.service
    assert svc.pause(vm)["state"] == "paused"
    assert svc.resume(vm)["state"] == "running"
    before = int(svc.exec(vm, ["sh", "-c", "grep MemTotal /proc/meminfo"]).stdout.split()[1])
    svc.resize(vm, memory_mb=128)
    after = int(svc.exec(vm, ["sh", "-c", "grep MemTotal /proc/meminfo"]).stdout.split()[1])
    assert after < before - 32 * 1024  # the balloon took at least 32 MiB back
    assert svc.view(vm)["memory_mb"] == 128


def test_forcing_kvm_where_it_is_not_usable_is_refused_clearly(vps_env: Any) -> None:
    from vpshost.host.probe import kvm_usable

    if kvm_usable()[0]:
        pytest.skip("this host has usable KVM")
    out = vps_env.cli("create", vps_env.unique("kvm"), "--type", "vm", "--image", "tiny",
                      "--accel", "kvm", "--memory", "128M", "--start")
    assert out.returncode in (1, 2)
    assert "KVM" in out.stderr and "hint" in out.stderr


def test_debian12_vm_takes_an_ssh_key_and_lets_root_in(vps_env: Any, tmp_path: Any) -> None:
    """--ssh-key on a debian-12 VM: installed through the guest agent at start, and a
    real ssh login from the host with that key works (and only with it)."""
    import subprocess
    import time

    from vpshost.models import Plan
    from vpshost.service import CreateRequest

    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    name = vps_env.unique("deb")
    vps_env._mine.append(name)
    view = vps_env.service.create(CreateRequest(
        name=name, type="vm", image="debian-12", plan=Plan(memory_mb=512, disk_mb=2048),
        start=True, options={"ssh_keys": [(tmp_path / "k.pub").read_text()],
                             "boot_timeout": 240}))
    ssh = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{view['ip']}"]
    try:
        out = None
        deadline = time.monotonic() + 120  # sshd may come up after the guest agent
        while time.monotonic() < deadline:
            out = subprocess.run([*ssh, "-i", str(key), "hostname"], capture_output=True,
                                 text=True, timeout=30)
            if out.returncode == 0:
                break
            time.sleep(3)
        assert out is not None and out.returncode == 0, out.stderr if out else None
        assert out.stdout.strip() == name
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True)
        denied = subprocess.run([*ssh, "-i", str(other), "true"], capture_output=True,
                                text=True, timeout=30)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        events = [e["kind"] for e in vps_env.service.show(name)["events"]]
        assert "ssh-keys-failed" not in events
    finally:
        vps_env.remove(name)
