"""The QEMU command line and kernel arguments, as pure data (no QEMU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpshost.drivers.qemu import accel
from vpshost.drivers.qemu.cmdline import build_argv, kernel_args, throttle_opts
from vpshost.drivers.qemu.paths import VmPaths
from vpshost.errors import UsageError
from vpshost.models import Guest, NetSpec, Plan

NET = NetSpec(ip="10.88.0.5", prefixlen=22, gateway="10.88.0.1", bridge="vpsbr0",
              mac="0a:76:70:00:00:05")
KERNEL_IMAGE = {"kind": "kernel", "agent": "tiny", "dir": "/img", "kernel": "vmlinuz",
                "initrd": "initrd.img", "append": "console=ttyS0"}


def guest(**kw: object) -> Guest:
    base: dict[str, object] = dict(id=5, name="web1", type="vm", image="tiny",
                                   plan=Plan(vcpus=2, memory_mb=512), net=NET,
                                   dir=Path("/g/web1"))
    base.update(kw)
    return Guest(**base)  # type: ignore[arg-type]


def test_kernel_args_carry_the_network() -> None:
    args = kernel_args(guest(), "console=ttyS0")
    assert args == ("console=ttyS0 vps.hostname=web1 vps.ip=10.88.0.5/22 "
                    "vps.gw=10.88.0.1")


def test_throttling_only_for_set_limits() -> None:
    assert throttle_opts(Plan()) == []
    assert throttle_opts(Plan(io_write_bps=1048576, io_read_iops=100)) == [
        "throttling.bps-write=1048576", "throttling.iops-read=100"]


def test_argv_kernel_boot_tcg() -> None:
    argv = build_argv(guest(), KERNEL_IMAGE, "tcg", "vpstap5", VmPaths(Path("/g/web1")))
    s = " ".join(argv)
    assert "-accel tcg -cpu max -smp 2 -m 512M" in s
    assert "-kernel /img/vmlinuz -initrd /img/initrd.img" in s
    assert "tap,id=net0,ifname=vpstap5,script=no,downscript=no" in s
    assert "virtio-net-pci,netdev=net0,mac=0a:76:70:00:00:05" in s
    assert "name=vpshost.agent" in s and "virtio-balloon-pci" in s and "virtio-rng-pci" in s
    assert "bootindex" not in s  # -kernel owns the boot


def test_argv_disk_boot_kvm_ide() -> None:
    image = {"kind": "disk", "agent": "qga", "dir": "/img"}
    argv = build_argv(guest(options={"disk_bus": "ide", "nic_model": "e1000"}), image,
                      "kvm", "vpstap5", VmPaths(Path("/g/web1")))
    s = " ".join(argv)
    assert "-accel kvm -cpu host" in s and "-kernel" not in s
    assert "ide-hd,drive=drive0,id=vblk0,bootindex=0" in s
    assert "e1000,netdev=net0" in s and "name=org.qemu.guest_agent.0" in s


def test_unknown_accelerator_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown accelerator"):
        accel.choose("xen")


def test_long_guest_dir_is_refused() -> None:
    with pytest.raises(UsageError, match="too long"):
        VmPaths(Path("/" + "x" * 120)).check()
