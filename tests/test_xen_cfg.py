"""Unit tests of the xl config rendering and xl output parsing (no Xen needed)."""

from __future__ import annotations

import shlex
import socket
import threading
from pathlib import Path

import pytest

from vpshost.drivers import xencfg, xenmigrate
from vpshost.drivers.base import Power
from vpshost.drivers.bootargs import kernel_args
from vpshost.drivers.xen import parse_state, xen_agent_script
from vpshost.errors import Unsupported, UsageError
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
    # opened at start, and again when a resume (restore, migration) replaced the device
    assert script.count('exec 3<>"$PORT"') == 2
    assert script.index("exec 3<>") < script.index("stty raw -echo <&3")
    assert script.rstrip().endswith("stty raw -echo <&3 2>/dev/null\ndone")
    assert "sh /tmp/.agent.cmd 3>&- </dev/null" in script  # children get no port


# ---------------------------------------------------------------------- modes vs host

XL_INFO_NESTED = """host                   : xen1
release                : 6.1.0-27-amd64
xen_version            : 4.17.3-pre
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64
virt_caps              : pv hvm hap shadow gnttab-v1 gnttab-v2
total_memory           : 1535
free_memory            : 748
"""
XL_INFO_NO_HVM = XL_INFO_NESTED.replace("pv hvm hap shadow", "pv shadow").replace(
    " hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64", "")


def test_xl_info_parsed() -> None:
    info = xencfg.parse_xl_info(XL_INFO_NESTED)
    assert info["virt_caps"] == "pv hvm hap shadow gnttab-v1 gnttab-v2"
    assert info["free_memory"] == "748"


def test_modes_follow_virt_caps() -> None:
    assert xencfg.host_modes("pv hvm hap shadow") == ["pv", "pvh", "hvm"]
    assert xencfg.host_modes("pv shadow gnttab-v1") == ["pv"]
    assert xencfg.host_modes("") == ["pv"]


@pytest.mark.parametrize("mode", ["hvm", "pvh"])
def test_hvm_and_pvh_refused_without_hvm_caps(mode: str) -> None:
    caps = xencfg.parse_xl_info(XL_INFO_NO_HVM)["virt_caps"]
    with pytest.raises(Unsupported, match=f"{mode} guests on this host") as err:
        xencfg.check_mode(mode, caps)
    assert "virt_caps 'pv shadow gnttab-v1 gnttab-v2'" in str(err.value)
    assert err.value.hint == "use --mode pv"
    xencfg.check_mode("pv", caps)  # PV needs nothing from the CPU
    xencfg.check_mode(mode, xencfg.parse_xl_info(XL_INFO_NESTED)["virt_caps"])


def test_hvm_with_kernel_uses_direct_kernel_boot_and_channel() -> None:
    g = guest(options={"mode": "hvm"})
    cfg = parse(xencfg.render(g, Path("/g/web1/disk.raw"), "raw", BOOT,
                              Path("/g/web1/agent.sock")))
    assert cfg["type"] == '"hvm"'
    assert cfg["kernel"] == '"/img/vmlinuz"' and cfg["ramdisk"] == '"/img/initrd.img"'
    assert cfg["boot"] == '"c"' and cfg["serial"] == '"pty"'
    assert "name=vpshost.agent" in cfg["channel"]


def test_pvh_renders_like_pv_with_its_type() -> None:
    g = guest(options={"mode": "pvh"})
    cfg = parse(xencfg.render(g, Path("/d"), "raw", BOOT, Path("/g/web1/agent.sock")))
    assert cfg["type"] == '"pvh"'
    assert cfg["kernel"] == '"/img/vmlinuz"' and "boot" not in cfg
    assert "name=vpshost.agent" in cfg["channel"]


# ---------------------------------------------------------------------- live migration

def test_xl_migrate_command_lines() -> None:
    rune = xenmigrate.relay_command("/venv/bin/python", "10.99.0.12", 4711, "tok",
                                    Path("/g/web 1"))
    argv = shlex.split(rune)
    assert argv[0] == "exec" and argv[1] == "/venv/bin/python" and argv[2] == "-c"
    assert "xenmigrate import relay" in argv[3]
    assert argv[4:] == ["10.99.0.12", "4711", "tok", "/g/web 1"]
    assert xenmigrate.xl_migrate_argv("web1", Path("/g/web1/migrate.cfg"), rune) == [
        "xl", "migrate", "-s", "", "-C", "/g/web1/migrate.cfg", "web1", rune]
    # no -p: the target unpauses inside xl's own handshake
    assert xenmigrate.receive_argv() == ["xl", "migrate-receive"]


def _gate_run(chunks: list[bytes]) -> tuple[list[tuple[str, bytes]], xenmigrate.ReadyGate]:
    gate = xenmigrate.ReadyGate()
    out: list[tuple[str, bytes]] = []
    for c in chunks:
        out += list(gate.feed(c))
    tail = gate.flush()
    if tail:
        out.append(("data", tail))
    return out, gate


def test_ready_gate_holds_the_ready_message_even_split() -> None:
    banner = b"xl migration receiver ready, send binary domain data.\n"
    stream = banner + xenmigrate.READY + xenmigrate.REPORT + b"\0"
    for cut in (1, 7, 30, len(banner) + 5, len(banner) + 33, len(stream) - 1):
        out, gate = _gate_run([stream[:cut], stream[cut:]])
        kinds = [k for k, _ in out]
        assert kinds.count("ready") == 1
        before = b"".join(d for k, d in out[:kinds.index("ready")])
        assert before == banner  # nothing of the message leaks before the hook
        assert b"".join(d for _k, d in out) == stream  # and everything gets through
        assert gate.report == 0


def test_ready_gate_forwards_what_cannot_be_the_message_at_once() -> None:
    banner = b"xl migration receiver ready, send binary domain data.\n"
    gate = xenmigrate.ReadyGate()
    # xl waits for the whole banner before it sends anything: none of it may be held
    assert list(gate.feed(banner)) == [("data", banner)]
    assert list(gate.feed(b"xx" + xenmigrate.READY[:5])) == [("data", b"xx")]
    assert list(gate.feed(xenmigrate.READY[5:])) == [("ready", xenmigrate.READY)]


def test_ready_gate_reports_failure_status() -> None:
    _out, gate = _gate_run([xenmigrate.READY, xenmigrate.REPORT, b"\x03"])
    assert gate.report == 3
    _out, gate = _gate_run([b"xl migration receiver ready"])
    assert not gate.seen_ready and gate.report is None


def _receive_into(path: Path) -> tuple[int, threading.Thread, list[bool]]:
    srv = socket.create_server(("127.0.0.1", 0))
    finals: list[bool] = []

    def serve() -> None:
        with srv, open(path, "r+b") as disk:
            for _ in range(2):
                conn, _addr = srv.accept()
                with conn:
                    assert xenmigrate._readline(conn, 10) == b"tok disk"
                    finals.append(xenmigrate.write_frames(conn, disk))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return int(srv.getsockname()[1]), t, finals


def test_disk_precopy_then_final_sync_makes_an_exact_sparse_copy(tmp_path: Path) -> None:
    B = xenmigrate.BLOCK
    src, dst = tmp_path / "src.raw", tmp_path / "dst.raw"
    with open(src, "wb") as f:
        f.truncate(64 * B)
        for i in (0, 1, 10, 40):
            f.seek(i * B)
            f.write(bytes([i + 1]) * B)
    dst.touch()
    port, t, finals = _receive_into(dst)
    known, sent = xenmigrate.push_disk(src, "127.0.0.1", port, "tok", None, final=False)
    assert set(known) == {0, B, 10 * B, 40 * B} and sent == 4 * B
    assert dst.read_bytes() == src.read_bytes()
    # the guest writes on: one block changes, one is new, one is discarded (a hole)
    with open(src, "r+b") as f:
        f.seek(10 * B)
        f.write(b"x" * 100)
        f.seek(50 * B)
        f.write(b"new" * 1000)
        fcntl_punch(f.fileno(), 40 * B, B)
    _known2, sent2 = xenmigrate.push_disk(src, "127.0.0.1", port, "tok", known, final=True)
    t.join(10)
    assert sent2 == 2 * B  # only the changed and the new block travel
    assert dst.read_bytes() == src.read_bytes()
    assert finals == [False, True]
    assert dst.stat().st_blocks * 512 < 16 * B  # still sparse


def fcntl_punch(fd: int, offset: int, length: int) -> None:
    """fallocate(PUNCH_HOLE|KEEP_SIZE), as a guest's discard does through a loop dev."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, 0x02 | 0x01, offset, length) != 0:
        pytest.skip("no hole punching on this file system")


def test_rdtscp_hidden_only_for_hvm_containers_under_tcg() -> None:
    tcg = "QEMU TCG CPU version 2.5+"
    assert xencfg.default_cpuid("pvh", tcg) == "host,rdtscp=0"
    assert xencfg.default_cpuid("hvm", tcg) == "host,rdtscp=0"
    assert xencfg.default_cpuid("pv", tcg) is None
    assert xencfg.default_cpuid("pvh", "AMD EPYC 7763 64-Core Processor") is None
    g = guest(options={"mode": "pvh"})
    assert parse(xencfg.render(g, Path("/d"), "raw", BOOT, None,
                               "host,rdtscp=0"))["cpuid"] == '"host,rdtscp=0"'
    assert "cpuid" not in parse(xencfg.render(g, Path("/d"), "raw", BOOT))
    mine = guest(options={"mode": "pvh", "cpuid": "host,avx=0"})
    assert parse(xencfg.render(mine, Path("/d"), "raw", BOOT, None,
                               "host,rdtscp=0"))["cpuid"] == '"host,avx=0"'
