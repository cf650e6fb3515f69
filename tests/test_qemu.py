"""The `vm` driver against real QEMU under TCG (no mocks): boot, network, exec,
snapshots, balloon, I/O limits, VMware import, start failures.

One tiny VM is shared by most tests (module fixture) to stay within a few minutes on
a 2-core machine. Each run uses its own scratch bridge (``vpqm<hex>``, a private /24 in
10.213.x.0) and guest ids in a random high range, so runs never collide with each other
or with a running vpshost. The image cache is the machine's real one: `tiny` is built
once (seconds), `debian-12` once (a minute or two of debootstrap).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpshost.config import Config, load
from vpshost.drivers.base import Power
from vpshost.drivers.qemu import QemuDriver
from vpshost.drivers.qemu.paths import VmPaths
from vpshost.drivers.qemu.process import qemu_pid
from vpshost.errors import RuntimeFailure, UsageError
from vpshost.host import network, vmimages
from vpshost.host.probe import kvm_usable
from vpshost.models import Guest, NetSpec, Plan

pytestmark = [
    pytest.mark.qemu, pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU"),
    pytest.mark.skipif(subprocess.run(["id", "-u"], capture_output=True, text=True)
                       .stdout.strip() != "0", reason="needs root (taps, bridges)"),
]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def cfg() -> Iterator[Config]:
    state = Path(tempfile.mkdtemp(prefix="vpq", dir="/tmp"))  # short: unix socket paths
    c = load()
    c.state_dir = state
    yield c
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def driver(cfg: Config) -> QemuDriver:
    return QemuDriver(cfg)


@pytest.fixture(scope="module")
def bridge() -> Iterator[tuple[str, str]]:
    """A private scratch bridge: (name, '10.213.N') prefix of its /24."""
    name = f"vpqm{random.getrandbits(20):05x}"
    prefix = f"10.213.{random.randint(1, 254)}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", f"{prefix}.1/24", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield name, prefix
    subprocess.run(["ip", "link", "del", name], check=False)


_ids = iter(random.sample(range(15_000_000, 16_000_000), 50))


def make_guest(cfg: Config, name: str, image: str = "tiny", plan: Plan | None = None,
               bridge: tuple[str, str] | None = None, host: int = 5,
               **options: object) -> Guest:
    gid = next(_ids)
    net = None
    if bridge:
        net = NetSpec(ip=f"{bridge[1]}.{host}", prefixlen=24, gateway=f"{bridge[1]}.1",
                      bridge=bridge[0], mac=f"0a:76:70:{gid >> 16 & 255:02x}:"
                      f"{gid >> 8 & 255:02x}:{gid & 255:02x}")
    return Guest(id=gid, name=name, type="vm", image=image,
                 plan=plan or Plan(memory_mb=256, disk_mb=256), net=net,
                 dir=cfg.guests_dir / name, options=dict(options))


@pytest.fixture(scope="module")
def vm(cfg: Config, driver: QemuDriver, bridge: tuple[str, str]) -> Iterator[Guest]:
    g = make_guest(cfg, "tiny1", bridge=bridge)
    driver.create(g)
    try:
        driver.start(g)
        yield g
    finally:
        driver.delete(g)


def sh(driver: QemuDriver, g: Guest, cmd: str, timeout: float = 60) -> str:
    res = driver.exec(g, ["sh", "-c", cmd], timeout=timeout)
    assert res.returncode == 0, (cmd, res)
    return res.stdout


def test_tiny_boots_gets_address_and_answers_ping(driver: QemuDriver, vm: Guest) -> None:
    assert driver.power(vm) is Power.RUNNING
    assert vm.net is not None
    assert f"inet {vm.net.ip}/24" in sh(driver, vm, "ip -4 addr show eth0")
    ping = subprocess.run(["busybox", "ping", "-c", "2", "-W", "3", vm.net.ip], capture_output=True)
    assert ping.returncode == 0, ping.stdout
    # and the guest reaches its gateway (the host's bridge address)
    assert "0% packet loss" in sh(driver, vm, f"ping -c 1 -W 3 {vm.net.gateway}")


def test_exec_returns_code_and_both_streams(driver: QemuDriver, vm: Guest) -> None:
    res = driver.exec(vm, ["sh", "-c", "echo \"it's out\"; echo err >&2; exit 7"])
    assert (res.returncode, res.stdout, res.stderr) == (7, "it's out\n", "err\n")
    assert driver.exec(vm, ["hostname"]).stdout.strip() == vm.name


def test_stats_report_qemu_overhead(driver: QemuDriver, vm: Guest) -> None:
    st = driver.stats(vm)
    assert st["accel"] in ("tcg", "kvm")
    assert st["balloon_mb"] == 256
    assert 0 < st["overhead_mb"] < st["rss_mb"]


def test_snapshot_then_restore_drops_later_file(driver: QemuDriver, vm: Guest) -> None:
    sh(driver, vm, "echo one > /data/before && sync")
    driver.snapshot(vm, "s1")
    assert driver.snapshots(vm)["s1"] > 0  # memory state saved too
    sh(driver, vm, "echo two > /data/after && sync")
    driver.restore(vm, "s1")
    listing = sh(driver, vm, "ls /data").split()
    assert "before" in listing and "after" not in listing
    driver.delete_snapshot(vm, "s1")
    assert "s1" not in driver.snapshots(vm)


def test_pause_resume(driver: QemuDriver, vm: Guest) -> None:
    driver.pause(vm)
    assert driver.power(vm) is Power.PAUSED
    driver.resume(vm)
    assert driver.power(vm) is Power.RUNNING


def _memtotal_mb(driver: QemuDriver, vm: Guest) -> int:
    return int(sh(driver, vm, "grep MemTotal /proc/meminfo").split()[1]) // 1024


def test_balloon_resize_seen_inside(driver: QemuDriver, vm: Guest) -> None:
    before = _memtotal_mb(driver, vm)
    driver.set_limits(vm, Plan(memory_mb=128, disk_mb=256))
    deadline = time.monotonic() + 20
    while _memtotal_mb(driver, vm) > before - 100 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _memtotal_mb(driver, vm) <= before - 100
    assert driver.stats(vm)["balloon_mb"] <= 140
    driver.set_limits(vm, Plan(memory_mb=256, disk_mb=256))


def _dd_rate(driver: QemuDriver, vm: Guest) -> float:
    """MiB/s of a 4 MiB O_DIRECT write inside the guest, timed by the host."""
    t0 = time.monotonic()
    sh(driver, vm, "dd if=/dev/zero of=/data/io bs=64k count=64 oflag=direct 2>&1")
    return 4 / (time.monotonic() - t0)


def test_io_limit_seen_by_dd(driver: QemuDriver, vm: Guest) -> None:
    free = _dd_rate(driver, vm)
    driver.set_limits(vm, Plan(memory_mb=256, disk_mb=256, io_write_bps=MiB))
    try:
        limited = _dd_rate(driver, vm)
    finally:
        driver.set_limits(vm, Plan(memory_mb=256, disk_mb=256))
    assert limited < 2.0, f"{limited:.2f} MiB/s under a 1 MiB/s limit"
    assert free > 2 * limited, f"unlimited {free:.2f} MiB/s vs limited {limited:.2f}"


def test_cpu_cap_in_qemu_cgroup_and_bandwidth_on_tap(driver: QemuDriver, vm: Guest) -> None:
    from vpshost.drivers.qemu.limits import cgroup_dir

    driver.set_limits(vm, Plan(memory_mb=256, disk_mb=256, cpu_cap_pct=20,
                               bandwidth_mbit=10))
    try:
        d = cgroup_dir(vm.name)
        pid = qemu_pid(VmPaths(vm.dir))
        assert str(pid) in (d / "cgroup.procs").read_text().split()
        quota = d / "cpu.cfs_quota_us"
        if quota.exists():
            assert quota.read_text().strip() == "20000"
        else:
            assert (d / "cpu.max").read_text().split()[0] == "20000"
        tc = subprocess.run(["tc", "qdisc", "show", "dev", network.tap_for(vm.dir)],
                            capture_output=True, text=True).stdout
        assert "tbf" in tc and "10Mbit" in tc
    finally:
        driver.set_limits(vm, Plan(memory_mb=256, disk_mb=256))


def test_console_log_and_argv(driver: QemuDriver, vm: Guest) -> None:
    assert "vpshost: userspace up" in (vm.dir / "console.log").read_text(errors="replace")
    argv = driver.console_argv(vm)
    assert argv[0] == "socat" and str(vm.dir / "console.sock") in argv[-1]


def test_present_and_graceful_stop(driver: QemuDriver, cfg: Config,
                                   bridge: tuple[str, str]) -> None:
    g = make_guest(cfg, "tiny2", bridge=bridge, host=6)
    driver.create(g)
    try:
        driver.start(g)
        assert "tiny2" in driver.present()
        tap = network.tap_for(g.dir)
        assert Path(f"/sys/class/net/{tap}/brif").exists() or \
            Path(f"/sys/class/net/{tap}/master").exists()
        t0 = time.monotonic()
        driver.stop(g, 30)
        assert time.monotonic() - t0 < 15, "ACPI power-off was ignored"
        assert driver.power(g) is Power.STOPPED
        assert not Path(f"/sys/class/net/{tap}").exists()
        # disk-only snapshot while stopped, then grow the disk while stopped
        driver.snapshot(g, "cold")
        assert driver.snapshots(g)["cold"] == 0
        driver.set_limits(g, Plan(memory_mb=256, disk_mb=1536))
        info = subprocess.run(["qemu-img", "info", "-U", str(g.dir / "disk.qcow2")],
                              capture_output=True, text=True).stdout
        assert "1.5 GiB" in info
    finally:
        driver.delete(g)
    assert driver.power(g) is Power.ABSENT and not g.dir.exists()


def test_forcing_kvm_without_kvm_is_refused(driver: QemuDriver, cfg: Config) -> None:
    if kvm_usable()[0]:
        pytest.skip("this host has usable KVM")
    g = make_guest(cfg, "nokvm", accel="kvm")
    try:
        with pytest.raises(UsageError, match="KVM is not available"):
            driver.create(g)  # refused before anything is made
        assert driver.power(g) is Power.ABSENT
    finally:
        driver.delete(g)


def test_qemu_failing_at_start_shows_stderr_and_leaves_nothing(
        driver: QemuDriver, cfg: Config, bridge: tuple[str, str]) -> None:
    g = make_guest(cfg, "broken", bridge=bridge, host=7, nic_model="no-such-nic")
    driver.create(g)
    try:
        with pytest.raises(RuntimeFailure, match="no-such-nic"):
            driver.start(g)
        assert qemu_pid(VmPaths(g.dir)) is None
        assert not Path(f"/sys/class/net/{network.tap_for(g.dir)}").exists()
    finally:
        driver.delete(g)


# ---------------------------------------------------------------- VMware import

def _bootable_fat_disk(cfg: Config, dest: Path) -> Path:
    """A disk with its own bootloader: a FAT volume holding the tiny kernel and
    initramfs, made bootable by SYSLINUX (installed through mtools, no mount)."""
    if not shutil.which("syslinux") or not shutil.which("mcopy"):
        pytest.skip("needs the syslinux and mtools packages")
    kernel, initrd = vmimages.tiny_boot_files(cfg, dest)
    raw = dest / "boot.img"
    subprocess.run(["truncate", "-s", "48M", str(raw)], check=True)
    subprocess.run(["mformat", "-i", str(raw), "-F", "::"], check=True)
    conf = dest / "syslinux.cfg"
    conf.write_text("DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n"
                    "  APPEND initrd=initrd.img console=ttyS0 quiet panic=-1\n")
    subprocess.run(["mcopy", "-i", str(raw), str(kernel), str(initrd), str(conf), "::/"],
                   check=True)
    subprocess.run(["syslinux", "--install", str(raw)], check=True)
    return raw


@pytest.fixture(scope="module")
def vmdk(cfg: Config) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vpqi", dir="/tmp"))
    raw = _bootable_fat_disk(cfg, d)
    out = d / "appliance.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(out)],
                   check=True)
    yield out
    shutil.rmtree(d, ignore_errors=True)


def test_vmdk_imports_and_boots_from_its_bootloader(driver: QemuDriver, cfg: Config,
                                                     vmdk: Path) -> None:
    name = f"imp{random.getrandbits(24):06x}"
    vmimages.import_image(cfg, vmdk, name)
    g = make_guest(cfg, "imported", image=name, boot_timeout=0)
    try:
        listed = {i["name"]: i for i in vmimages.list_vm_images(cfg)}
        assert listed[name]["kind"] == "disk" and listed[name]["built"]
        driver.create(g)
        driver.start(g)
        log = g.dir / "console.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "vpshost: userspace up" in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert "vpshost: userspace up" in text, text[-2000:]
    finally:
        driver.delete(g)
        vmimages.remove_image(cfg, name)


def test_ova_imports(cfg: Config, vmdk: Path) -> None:
    ova = vmdk.with_suffix(".ova")
    ovf = vmdk.with_suffix(".ovf")
    ovf.write_text('<Envelope><References><File ovf:href="appliance.vmdk" ovf:id="f1"/>'
                   "</References></Envelope>")
    with tarfile.open(ova, "w") as tar:
        tar.add(ovf, "appliance.ovf")
        tar.add(vmdk, "appliance.vmdk")
    name = f"ova{random.getrandbits(24):06x}"
    try:
        base = vmimages.import_image(cfg, ova, name)
        m = vmimages.meta(cfg, name)
        assert base.exists() and m is not None and m["source"].startswith("ova:")
    finally:
        vmimages.remove_image(cfg, name)


def test_truncated_vmdk_is_refused(cfg: Config, vmdk: Path) -> None:
    bad = vmdk.with_name("truncated.vmdk")
    data = vmdk.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    name = f"bad{random.getrandbits(24):06x}"
    with pytest.raises(UsageError, match="truncated|damaged|not a disk image"):
        vmimages.import_image(cfg, bad, name)
    assert vmimages.meta(cfg, name) is None
    assert not vmimages.image_dir(cfg, name).exists()


def test_unsupported_file_is_refused(cfg: Config, tmp_path: Path) -> None:
    junk = tmp_path / "notes.vmdk"
    junk.write_text("just text, not a disk\n")
    with pytest.raises(UsageError):
        vmimages.import_image(cfg, junk, f"junk{random.getrandbits(16):04x}")


# ---------------------------------------------------------------- debian-12

def test_exec_in_debian12_through_qemu_guest_agent(driver: QemuDriver, cfg: Config,
                                                    bridge: tuple[str, str]) -> None:
    vmimages.build(cfg, "debian-12")
    g = make_guest(cfg, "deb1", image="debian-12", bridge=bridge, host=8,
                   plan=Plan(memory_mb=512, disk_mb=256), boot_timeout=180)
    driver.create(g)
    try:
        driver.start(g)
        res = driver.exec(g, ["sh", "-c", "cat /etc/debian_version; ip -4 addr show eth0"])
        assert res.returncode == 0 and res.stdout.startswith("12")
        assert g.net is not None and f"inet {g.net.ip}/24" in res.stdout
        t0 = time.monotonic()
        driver.stop(g, 60)
        assert time.monotonic() - t0 < 50
        assert driver.power(g) is Power.STOPPED
    finally:
        driver.delete(g)
