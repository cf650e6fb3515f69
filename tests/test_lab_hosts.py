"""Real nested lab hosts: a Xen dom0 and a KVM host under QEMU TCG (docs/xen.md).

Slow (the first run builds the lab image, ~2 min; each host boots in about a minute):
run only these with ``.venv/bin/pytest -m lab``. A lab host that is already up is
reused and left up; one these tests boot is powered off at the end.

The control plane here is a Service on a temporary state directory (its own store),
with the lab hosts registered through their agents, exactly as `vps host add` does.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.lab]


def _problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (bridge, taps, chroot)"
    for tool in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "qemu-img"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


if _problem():
    pytest.skip(_problem() or "", allow_module_level=True)

from vpshost.config import Config, load  # noqa: E402
from vpshost.lab import hosts  # noqa: E402
from vpshost.models import Plan  # noqa: E402
from vpshost.service import CreateRequest, Service  # noqa: E402


def _lab_cfg() -> Config:
    return load()


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    cfg = load()
    cfg.state_dir = tmp_path_factory.mktemp("lab-control")
    cfg.db_url = ""
    yield Service(cfg)


def _host_up(kind: str, name: str) -> Iterator[hosts.LabHost]:
    cfg = _lab_cfg()
    booted = False
    h = hosts._load(cfg, name)
    if h is None or hosts.pid(h) is None:
        hosts.up(cfg, kind, name, timeout=600)
        booted = True
    h = hosts._load(cfg, name)
    assert h is not None
    if not booted:
        hosts.sync_code(cfg, name)  # this checkout's code, not the one it booted with
        hosts.wait_agent(h, 120)
    yield h
    if booted:
        hosts.down(cfg, name)


@pytest.fixture(scope="module")
def xen_host(control: Service) -> Iterator[hosts.LabHost]:
    for h in _host_up("xen", "xen1"):
        control.host_add(h.name, h.url, hosts.secret(h))
        yield h


@pytest.fixture(scope="module")
def kvm_host(control: Service) -> Iterator[hosts.LabHost]:
    for h in _host_up("kvm", "kvm1"):
        control.host_add(h.name, h.url, hosts.secret(h))
        yield h


def lab_sh(host: hosts.LabHost, script: str, timeout: float = 120) -> Any:
    return hosts.exec_in(_lab_cfg(), host.name, ["sh", "-c", script], timeout)


def guest_sh(svc: Service, name: str, script: str) -> str:
    res = svc.exec(name, ["sh", "-c", script])
    out = res.stdout if hasattr(res, "stdout") else res["stdout"]
    return str(out)


@contextmanager
def booted(control: Service, host: hosts.LabHost, name: str, kind: str, plan: Plan,
           options: dict[str, Any]) -> Iterator[tuple[dict[str, Any], float]]:
    """A tiny-image guest created and started on ``host``: its view and the seconds
    that took; deleted afterwards, pass or fail."""
    t0 = time.monotonic()
    view = control.create(CreateRequest(name=name, type=kind, image="tiny", plan=plan,
                                        start=True, options=options, host=host.name))
    try:
        boot = time.monotonic() - t0
        assert view["state"] == "running"
        yield view, boot
    finally:
        control.delete(name, force=True)


def assert_xl_type(host: hosts.LabHost, view: dict[str, Any], mode: str) -> None:
    """The domain answers ping from dom0 and xl reports it as ``mode``."""
    res = lab_sh(host, f"ping -c 2 -W 3 {view['ip']} && xl list -l {view['name']} | "
                 f"grep -o '\"type\": \"{mode}\"' | head -1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f'"type": "{mode}"' in res.stdout


def meminfo_kb(svc: Service, name: str) -> int:
    return int(guest_sh(svc, name, "grep MemTotal /proc/meminfo").split()[1])


@pytest.fixture(scope="module")
def pv_guest(control: Service, xen_host: hosts.LabHost) -> Iterator[dict[str, Any]]:
    t0 = time.monotonic()
    view = control.create(CreateRequest(name="labpv", type="xen", image="tiny",
                                        plan=Plan(memory_mb=128), start=True,
                                        options={"mode": "pv"}, host=xen_host.name))
    view["boot_s"] = time.monotonic() - t0
    yield view
    control.delete("labpv", force=True)


def test_pv_domain_boots_and_answers_ping(control: Service, xen_host: hosts.LabHost,
                                          pv_guest: dict[str, Any]) -> None:
    assert pv_guest["state"] == "running"
    ip = pv_guest["ip"]
    res = lab_sh(xen_host, f"ping -c 2 -W 3 {ip}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert guest_sh(control, "labpv", "hostname").strip() == "labpv"
    lst = lab_sh(xen_host, "xl list labpv").stdout
    assert "labpv" in lst
    print(f"PV domain create+start through the agent: {pv_guest['boot_s']:.1f}s")


def test_pv_memory_resize_seen_inside(control: Service, pv_guest: dict[str, Any]) -> None:
    before = meminfo_kb(control, "labpv")
    control.resize("labpv", memory_mb=96)
    deadline = time.monotonic() + 30
    after = before
    while time.monotonic() < deadline:
        after = meminfo_kb(control, "labpv")
        if after <= before - 24 * 1024:
            break
        time.sleep(1)
    assert after <= before - 24 * 1024, (before, after)
    control.resize("labpv", memory_mb=128)


def test_pv_save_and_restore(control: Service, xen_host: hosts.LabHost,
                             pv_guest: dict[str, Any]) -> None:
    guest_sh(control, "labpv", "echo before > /data/marker; sync")
    control.snapshot("labpv", "s1")
    # the checkpoint leaves the domain running, exec included
    guest_sh(control, "labpv", "echo after > /data/marker; sync")
    view = control.restore("labpv", "s1")
    assert view["state"] == "running"
    res = lab_sh(xen_host, f"ping -c 2 -W 3 {pv_guest['ip']}")
    assert res.returncode == 0, res.stdout + res.stderr
    # the disk is back as it was at the snapshot (compared before anything inside
    # touches it), and exec works again (the guest's agent reopens its PV channel)
    disk = "/var/lib/vpshost/guests/labpv/disk.raw"
    res = lab_sh(xen_host, f"cmp {disk} /var/lib/vpshost/guests/labpv/snapshots/s1.disk.raw "
                 "&& echo same")
    assert "same" in res.stdout, res.stdout + res.stderr
    assert guest_sh(control, "labpv", "cat /data/marker").strip() == "before"


def test_kvm_vm_boots_with_kvm_and_answers(control: Service,
                                           kvm_host: hosts.LabHost) -> None:
    with booted(control, kvm_host, "labkvm", "vm", Plan(memory_mb=128),
                {"accel": "kvm"}) as (view, boot):
        assert guest_sh(control, "labkvm", "hostname").strip() == "labkvm"
        res = lab_sh(kvm_host, f"ping -c 2 -W 3 {view['ip']}; "
                     "ps -eo args | grep '[q]emu-system' | grep -o -- '-accel [a-z]*'")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "-accel kvm" in res.stdout
        print(f"vm (KVM inside the TCG lab host) create+start: {boot:.1f}s")


def test_lab_status_reports_agent(xen_host: hosts.LabHost) -> None:
    (row,) = hosts.status(_lab_cfg(), "xen", xen_host.name)
    assert row["state"] == "up" and row["agent"] is True
    assert row["uptime_s"] > 0
    assert Path(row["serial_log"]).read_text(errors="replace").count("Xen") > 0


def test_kvm_against_xen_at_the_same_nesting_level(xen_host: hosts.LabHost,
                                                   kvm_host: hosts.LabHost) -> None:
    """`vps bench lab`: a PV domain and a KVM vm from the same image, each against its
    own lab host. Sanity only, never speed. With VPS_LAB_BENCH_OUT=DIR it runs the full
    sizes and writes lab.json, lab.md and lab.png there (how docs/results got them)."""
    from vpshost.bench import labcompare
    from vpshost.bench.suite import MODES

    out = os.environ.get("VPS_LAB_BENCH_OUT")
    sizes = labcompare.SIZES if out else MODES["tiny"]["lab"]
    r = labcompare.run(sizes, progress=print, cfg=_lab_cfg())
    if out:
        labcompare.write(r, Path(out))
    print("\n".join(labcompare.markdown(r)))
    for kind in ("xen", "kvm"):
        side = r[kind]
        assert side["host"] in (xen_host.name, kvm_host.name)
        assert all(v > 0 for v in (*side["native"].values(), *side["guest"].values()))
        assert all(0 < v < 10 for v in side["ratio"].values()), side["ratio"]
        assert len(side["startup_s"]) == sizes["startup_reps"]
        assert [row["guests"] for row in side["scaling"]] == sizes["counts"]
        assert side["scaling"][0]["ran"] == 1 and side["scaling"][0]["mib_per_s"] > 0
    # every guest the comparison made is gone again
    assert "lc" not in lab_sh(xen_host, "xl list").stdout


FIND_IN_EXTENTS = (
    "import os,sys\n"
    "fd=os.open(sys.argv[1],os.O_RDONLY); want=sys.argv[2].encode(); pos=0\n"
    "end=os.fstat(fd).st_size; hit=False\n"
    "while pos<end and not hit:\n"
    "  try: pos=os.lseek(fd,pos,os.SEEK_DATA)\n"
    "  except OSError: break\n"
    "  stop=os.lseek(fd,pos,os.SEEK_HOLE); os.lseek(fd,pos,os.SEEK_SET)\n"
    "  hit=want in os.read(fd,stop-pos); pos=stop\n"
    'print("found" if hit else "missing")'
)


@pytest.fixture(scope="module")
def xen_host2(control: Service, xen_host: hosts.LabHost) -> Iterator[hosts.LabHost]:
    for h in _host_up("xen", "xen2"):
        control.host_add(h.name, h.url, hosts.secret(h))
        yield h


def test_pv_domain_moves_between_two_xen_hosts(control: Service, xen_host: hosts.LabHost,
                                               xen_host2: hosts.LabHost) -> None:
    """Cold move xen1 -> xen2 through the control plane: save, copy, restore."""
    marker = f"vpsmark-{time.monotonic_ns()}"
    view = control.create(CreateRequest(name="labmv", type="xen", image="tiny",
                                        plan=Plan(memory_mb=96, disk_mb=64), start=True,
                                        options={"mode": "pv"}, host=xen_host.name))
    try:
        guest_sh(control, "labmv", f"echo {marker} > /data/marker; sync")
        t0 = time.monotonic()
        moved = control.migrate("labmv", to=xen_host2.name)
        took = time.monotonic() - t0
        assert moved["host"] == xen_host2.name and moved["ip"] == view["ip"]
        assert moved["state"] == "running"
        res = lab_sh(xen_host2, f"xl list labmv && ping -c 2 -W 3 {view['ip']}")
        assert res.returncode == 0, res.stdout + res.stderr
        disk = "/var/lib/vpshost/guests/labmv/disk.raw"
        # read only the disk's data extents: grep over the whole 1 GiB sparse file is
        # minutes of work for a dom0 under nested TCG
        found = lab_sh(xen_host2, f"python3 -c '{FIND_IN_EXTENTS}' {disk} {marker}")
        assert found.stdout.strip() == "found", found.stdout + found.stderr
        assert "labmv" not in lab_sh(xen_host, "xl list").stdout
        print(f"PV domain moved xen1 -> xen2 in {took:.1f}s ({moved['migration']})")
    finally:
        control.delete("labmv", force=True)


# ---------------------------------------------------------------------- PVH, HVM

def test_pvh_domain_boots_and_answers(control: Service, xen_host: hosts.LabHost) -> None:
    with booted(control, xen_host, "labpvh", "xen", Plan(memory_mb=96, disk_mb=64),
                {"mode": "pvh"}) as (view, boot):
        assert guest_sh(control, "labpvh", "hostname").strip() == "labpvh"
        assert_xl_type(xen_host, view, "pvh")
        print(f"PVH domain create+start through the agent: {boot:.1f}s")


def test_hvm_domain_boots_and_answers(control: Service, xen_host: hosts.LabHost) -> None:
    """HVM works on the nested host: Xen sees AMD SVM (QEMU TCG's -cpu max) with nested
    paging; the tiny kernel boots through QEMU's direct kernel boot, with the PV disk,
    network and exec channel (PVHVM drivers)."""
    with booted(control, xen_host, "labhvm", "xen", Plan(memory_mb=128, disk_mb=64),
                {"mode": "hvm"}) as (view, boot):
        out = guest_sh(control, "labhvm", "hostname; "
                       "dmesg | grep -c 'Hypervisor detected: Xen HVM'; "
                       "grep -c ' /data ' /proc/mounts")
        assert out.split() == ["labhvm", "1", "1"], out
        assert_xl_type(xen_host, view, "hvm")
        print(f"HVM domain create+start through the agent: {boot:.1f}s")


# ---------------------------------------------------------------------- live moves

GUEST_DIR = "/var/lib/vpshost/guests"
# the guest writes a counter to its disk 5 times a second: blocks that change while
# the memory moves, so the final disk sync is exercised
TICKER = ("setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /data/tick; sync; "
          "usleep 200000; done' </dev/null >/dev/null 2>&1 &")


def _tick(host: hosts.LabHost, name: str) -> int:
    res = lab_sh(host, f"debugfs -R 'cat /tick' {GUEST_DIR}/{name}/disk.raw 2>/dev/null")
    return int(res.stdout.strip() or 0)


def _absent(host: hosts.LabHost, name: str) -> bool:
    """No domain of that name (nor an incoming/migrated-away one), no guest dir."""
    res = lab_sh(host, f"xl list | grep -c '^{name}' ; test -e {GUEST_DIR}/{name} && "
                 "echo dir-present || echo dir-absent")
    return res.stdout.split() == ["0", "dir-absent"]


@pytest.fixture(scope="module")
def mig_guest(control: Service, xen_host: hosts.LabHost,
              xen_host2: hosts.LabHost) -> Iterator[dict[str, Any]]:
    view = control.create(CreateRequest(name="labmig", type="xen", image="tiny",
                                        plan=Plan(memory_mb=96, disk_mb=64), start=True,
                                        options={"mode": "pv"}, host=xen_host.name))
    yield view
    control.delete("labmig", force=True)


def test_live_move_failing_on_the_target_leaves_the_guest_on_the_source(
        control: Service, xen_host: hosts.LabHost, xen_host2: hosts.LabHost,
        mig_guest: dict[str, Any]) -> None:
    """The target's receiver (and with it `xl migrate-receive`) is killed while the
    memory streams: xl resumes the domain at the source, the target is cleaned up."""
    errors: list[BaseException] = []

    def move() -> None:
        try:
            control.migrate("labmig", to=xen_host2.name, live=True)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    t = threading.Thread(target=move)
    t.start()
    # the pre-copy is done when the source has its block digests; xl migrate follows
    killed = ""
    end = time.monotonic() + 120
    while time.monotonic() < end and t.is_alive():
        if lab_sh(xen_host, f"test -e {GUEST_DIR}/labmig/migrate.blocks.json").returncode == 0:
            time.sleep(4)  # into xl migrate's memory stream (it takes ~17 s here)
            killed = lab_sh(xen_host2, f"kill -9 -$(cat {GUEST_DIR}/labmig/"
                            "migrate.receiver.pid) && echo killed").stdout
            break
        time.sleep(0.3)
    t.join(300)
    assert "killed" in killed
    assert errors, "the move should have failed"
    view = control.view("labmig")
    assert view["host"] == xen_host.name and view["state"] == "running"
    res = lab_sh(xen_host, f"xl list labmig && ping -c 2 -W 3 {mig_guest['ip']}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert guest_sh(control, "labmig", "hostname").strip() == "labmig"
    assert _absent(xen_host2, "labmig")
    print(f"failed live move, as expected: {errors[0]}")


def test_pv_domain_live_migrates_between_two_xen_hosts(
        control: Service, xen_host: hosts.LabHost, xen_host2: hosts.LabHost,
        mig_guest: dict[str, Any]) -> None:
    """`vps migrate --live`: xl migrate xen1 -> xen2 while the guest runs and writes."""
    marker = f"vpsmark-{time.monotonic_ns()}"
    guest_sh(control, "labmig", f"echo {marker} > /data/marker; sync; {TICKER}")
    t0 = time.monotonic()
    moved = control.migrate("labmig", to=xen_host2.name, live=True)
    took = time.monotonic() - t0
    stats = moved["migration"]
    assert stats["mode"] == "live"
    assert moved["host"] == xen_host2.name and moved["ip"] == mig_guest["ip"]
    assert moved["state"] == "running"
    res = lab_sh(xen_host2, f"xl list labmig && ping -c 2 -W 3 {mig_guest['ip']}")
    assert res.returncode == 0, res.stdout + res.stderr
    found = lab_sh(xen_host2, f"python3 -c '{FIND_IN_EXTENTS}' {GUEST_DIR}/labmig/disk.raw "
                   f"{marker}")
    assert found.stdout.strip() == "found", found.stdout + found.stderr
    # the guest kept running through the move and writes its disk on xen2 now
    first = _tick(xen_host2, "labmig")
    time.sleep(2)
    assert _tick(xen_host2, "labmig") > first > 0
    assert _absent(xen_host, "labmig")
    # exec works on the new host: the guest's agent reopens its PV channel after resume
    assert guest_sh(control, "labmig", "cat /data/marker").strip() == marker
    print(f"PV domain live-migrated xen1 -> xen2 in {took:.1f}s ({stats})")
