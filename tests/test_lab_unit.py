"""Unit tests of the lab hosts' QEMU command lines (no QEMU started)."""

from __future__ import annotations

from pathlib import Path

from vpshost.lab import hosts, image

IMG = {"dir": "/cache/lab/image"}


def host(kind: str) -> hosts.LabHost:
    return hosts.LabHost(f"{kind}1", kind, 11, Path("/cache/lab/hosts/x"))


def test_xen_host_boots_xen_with_dom0_kernel() -> None:
    argv = hosts.build_argv(host("xen"), IMG, memory_mb=1536, dom0_mb=768)
    assert argv[argv.index("-cpu") + 1] == "max,-smap,-smep"
    assert argv[argv.index("-kernel") + 1] == "/cache/lab/image/xen.elf"
    assert "dom0_mem=768M,max:768M" in argv[argv.index("-append") + 1]
    initrd = argv[argv.index("-initrd") + 1]
    kernel_part, _, ramdisk = initrd.rpartition(",")
    assert ramdisk == "/cache/lab/image/initrd.img"
    assert "console=hvc0" in kernel_part and "," not in kernel_part
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "1536M"


def test_kvm_host_boots_linux_with_svm() -> None:
    argv = hosts.build_argv(host("kvm"), IMG)
    assert argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-kernel") + 1] == "/cache/lab/image/vmlinuz"
    assert "console=ttyS0" in argv[argv.index("-append") + 1]


def test_lab_host_addressing() -> None:
    h = host("xen")
    assert h.ip == "10.99.0.11"
    assert h.url == f"http://10.99.0.11:{image.AGENT_PORT}"
    assert h.tap == "vpslabt11"
    assert h.mac == "0a:76:72:00:00:0b"


def test_status_and_exec_ports() -> None:
    argv = " ".join(hosts.build_argv(host("xen"), IMG))
    assert f"name={image.STATUS_PORT}" in argv
    assert f"name={image.EXEC_PORT}" in argv


def test_dependencies_are_plain_requirements() -> None:
    deps = image.dependencies()
    assert deps and all("extra" not in d for d in deps)
