"""Unit tests of the xl config rendering and xl output parsing (no Xen needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpshost.drivers import xencfg
from vpshost.drivers.base import Power
from vpshost.drivers.bootargs import kernel_args
from vpshost.drivers.xen import parse_state, xen_agent_script
from vpshost.errors import UsageError
from vpshost.models import Guest, NetSpec, Plan

NET = NetSpec(ip="10.88.0.5", prefixlen=22, gateway="10.88.0.1", bridge="vpsbr0",
              mac="0a:76:70:00:00:05")
BOOT = xencfg.BootFiles(Path("/img/vmlinuz"), Path("/img/initrd.img"), "console=hvc0 x=1")


def guest(**kw: object) -> Guest:
    base: dict[str, object] = dict(id=5, name="web1", type="xen", image="tiny", plan=Plan(),
                                   net=NET, dir=Path("/g/web1"), options={})
    base.update(kw)
    return Guest(**base)  # type: ignore[arg-type]


def parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_pv_config_from_plan() -> None:
    g = guest(plan=Plan(vcpus=2, memory_mb=128, cpu_weight=200, cpu_cap_pct=50),
              options={"maxmem_mb": 256})
    cfg = parse(xencfg.render(g, Path("/g/web1/disk.raw"), "raw", BOOT,
                              Path("/g/web1/agent.sock")))
    assert cfg["name"] == '"web1"'
    assert cfg["type"] == '"pv"'
    assert cfg["vcpus"] == "2"
    assert cfg["memory"] == "128"
    assert cfg["maxmem"] == "256"
    assert cfg["cpu_weight"] == "512"
    assert cfg["cap"] == "50"
    assert "backendtype=phy" in cfg["disk"] and "target=/g/web1/disk.raw" in cfg["disk"]
    assert "bridge=vpsbr0" in cfg["vif"] and "mac=0a:76:70:00:00:05" in cfg["vif"]
    assert cfg["kernel"] == '"/img/vmlinuz"'
    assert cfg["ramdisk"] == '"/img/initrd.img"'
    assert "name=vpshost.agent" in cfg["channel"]
    assert "path=/g/web1/agent.sock" in cfg["channel"]


def test_maxmem_never_below_memory() -> None:
    g = guest(plan=Plan(memory_mb=512), options={"maxmem_mb": 64})
    assert parse(xencfg.render(g, Path("/d"), "raw", BOOT))["maxmem"] == "512"


def test_qcow2_goes_through_qdisk() -> None:
    spec = xencfg.disk_spec(Path("/g/d.qcow2"), "qcow2")
    assert "backendtype=qdisk" in spec and "format=qcow2" in spec
    with pytest.raises(UsageError):
        xencfg.disk_spec(Path("/g/d.vmdk"), "vmdk")


def test_hvm_boots_disk_without_kernel() -> None:
    g = guest(options={"mode": "hvm"})
    cfg = parse(xencfg.render(g, Path("/d"), "raw", xencfg.BootFiles(None, None, "")))
    assert cfg["type"] == '"hvm"'
    assert "kernel" not in cfg
    assert "channel" not in cfg
    assert "model=e1000" in cfg["vif"]


def test_pv_without_kernel_is_refused() -> None:
    with pytest.raises(UsageError, match="need a kernel"):
        xencfg.render(guest(), Path("/d"), "raw", xencfg.BootFiles(None, None, ""))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown Xen mode"):
        xencfg.mode_of(guest(options={"mode": "kvm"}))


def test_kernel_cmdline_carries_network() -> None:
    line = kernel_args(guest(options={"append": "debug"}), "console=hvc0")
    assert line == ("console=hvc0 vps.hostname=web1 vps.ip=10.88.0.5/22 vps.gw=10.88.0.1 "
                    "debug")
    assert kernel_args(guest(net=None), "") == "vps.hostname=web1"


def test_no_network_means_no_vif() -> None:
    assert parse(xencfg.render(guest(net=None), Path("/d"), "raw", BOOT))["vif"] == "[ ]"


def test_quotes_cannot_break_out() -> None:
    with pytest.raises(UsageError):
        xencfg.render(guest(options={"append": 'x" evil="1'}), Path("/d"), "raw",
                      xencfg.BootFiles(Path("/k"), None,
                                       kernel_args(guest(options={
                                           "append": 'x" evil="1'}), "")))


@pytest.mark.parametrize("weight,expected", [(100, 256), (1, 3), (10000, 25600), (50, 128)])
def test_weight_scale(weight: int, expected: int) -> None:
    assert xencfg.xen_weight(weight) == expected


@pytest.mark.parametrize("flags,power", [("r-----", Power.RUNNING), ("-b----", Power.RUNNING),
                                         ("--p---", Power.PAUSED), ("---s--", Power.STOPPED),
                                         ("----c-", Power.STOPPED), ("-----d", Power.STOPPED)])
def test_xl_state_flags(flags: str, power: Power) -> None:
    assert parse_state(flags) is power


def test_agent_script_uses_the_pv_channel() -> None:
    script = xen_agent_script()
    assert "/dev/hvc1" in script and "stty" in script
    assert "virtio-ports" not in script
    assert script.count('exec 3<>"$PORT"') == 1
    assert script.index("exec 3<>") < script.index("stty raw -echo <&3")
