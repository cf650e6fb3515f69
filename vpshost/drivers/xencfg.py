"""xl domain configuration files rendered from a Guest: pure data in, text out.

The mapping from a plan to xl (see xl.cfg(5)):

- ``type``: ``pv``, ``pvh`` or ``hvm`` from ``guest.options["mode"]`` (default pv);
- ``vcpus``; ``memory`` is the boot size and ``maxmem`` the balloon ceiling
  (``options["maxmem_mb"]``, default the plan's memory), so ``xl mem-set`` can shrink
  and grow the domain between the two without a reboot;
- credit2 ``cpu_weight`` (Xen's scale is 1..65535, default 256, so the plan's 1..10000
  cgroup-style weight with default 100 is scaled by 2.56) and ``cap`` (percent of one
  physical CPU, the same unit as ``plan.cpu_cap_pct``; 0 means none);
- one ``vif`` on ``guest.net.bridge`` with the guest's MAC;
- one disk, ``xvda``: a raw file through blkback (``backendtype=phy``: a loop device
  in dom0), a qcow2 file through QEMU's qdisk backend;
- ``kernel``/``ramdisk``/``cmdline`` with the ``vps.ip=``/``vps.gw=``/
  ``vps.hostname=`` arguments the tiny init reads (the same the vm driver passes):
  PV and PVH always, HVM when the image is a kernel-boot one (QEMU's direct kernel
  boot); HVM without a kernel boots the disk (``boot="c"``);
- PVH and HVM need ``hvm`` in ``xl info``'s ``virt_caps`` (``check_mode``);
- a PV channel named ``vpshost.agent`` on a unix socket (QEMU serves it in dom0; the
  guest sees it as /dev/hvc1), carrying the tiny exec agent's line protocol;
- ``on_poweroff=destroy``, ``on_reboot=restart``, ``on_crash=destroy``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vpshost.errors import Unsupported, UsageError
from vpshost.models import Guest

MODES = ("pv", "pvh", "hvm")
XEN_DEFAULT_WEIGHT = 256
AGENT_CHANNEL = "vpshost.agent"


@dataclass(frozen=True)
class BootFiles:
    """What a PV/PVH guest boots (HVM boots the disk and ignores these)."""

    kernel: Path | None
    ramdisk: Path | None
    cmdline: str


def mode_of(guest: Guest) -> str:
    mode = str(guest.options.get("mode") or "pv").lower()
    if mode not in MODES:
        raise UsageError(f"unknown Xen mode '{mode}'", f"choose one of {', '.join(MODES)}")
    return mode


def parse_xl_info(text: str) -> dict[str, str]:
    """``xl info`` output as a dict (``key : value`` lines)."""
    return dict(re.findall(r"^(\w+)\s*:\s*(.*?)\s*$", text, re.MULTILINE))


def host_modes(virt_caps: str) -> list[str]:
    """The modes a host can run, from ``xl info``'s ``virt_caps``: PV always; PVH and
    HVM both run in a hardware-virtualized container, so they need ``hvm``."""
    return ["pv", "pvh", "hvm"] if "hvm" in virt_caps.split() else ["pv"]


def check_mode(mode: str, virt_caps: str) -> None:
    """Refuse a mode the host cannot run, saying what ``xl info`` showed."""
    if mode not in host_modes(virt_caps):
        raise Unsupported("xen", f"{mode} guests on this host: `xl info` shows virt_caps "
                          f"'{virt_caps.strip() or '(none)'}', without 'hvm' (the CPU, or "
                          "the hypervisor under a nested host, exposes no VT-x/AMD-V)",
                          "use --mode pv")


# QEMU's TCG reports an RDTSCP a guest runs as an RDTSC exit to the hypervisor nested in
# it; Xen (which intercepts RDTSC for HVM-container guests when the TSC is not
# invariant) then finds a different instruction than the exit says, injects #UD and
# the PVH/HVM guest's kernel crashes at its first RDTSCP. Measured in the lab:
# "SVM Insn len emulation failed ... 0f 01 f9". Hiding RDTSCP avoids it.
TCG_CPU_MODEL = "QEMU TCG CPU"
TCG_CPUID = "host,rdtscp=0"


def default_cpuid(mode: str, cpu_model: str) -> str | None:
    """The ``cpuid`` line a guest gets unless it names one: only PVH/HVM guests on a
    Xen that itself runs under QEMU TCG (dom0's CPU model says so)."""
    if mode in ("pvh", "hvm") and TCG_CPU_MODEL in cpu_model:
        return TCG_CPUID
    return None


def xen_weight(plan_weight: int) -> int:
    """cgroup-style 1..10000 (default 100) to credit2's 1..65535 (default 256)."""
    return max(1, min(65535, round(plan_weight * XEN_DEFAULT_WEIGHT / 100)))




def _q(value: str) -> str:
    if '"' in value or "\n" in value:
        raise UsageError(f"value {value!r} cannot go into an xl config file")
    return f'"{value}"'


def disk_spec(path: Path, fmt: str, vdev: str = "xvda") -> str:
    """xl disk spec: raw through blkback (loop device), qcow2 through qdisk."""
    if fmt == "raw":
        return f"format=raw, vdev={vdev}, access=rw, backendtype=phy, target={path}"
    if fmt == "qcow2":
        return f"format=qcow2, vdev={vdev}, access=rw, backendtype=qdisk, target={path}"
    raise UsageError(f"disk format '{fmt}' is not supported for Xen guests", "use raw or qcow2")


def render(guest: Guest, disk: Path, disk_format: str, boot: BootFiles,
           agent_socket: Path | None = None, cpuid: str | None = None) -> str:
    """The complete xl configuration of the guest."""
    plan = guest.plan
    mode = mode_of(guest)
    maxmem = max(plan.memory_mb, int(guest.options.get("maxmem_mb") or plan.memory_mb))
    lines = [
        "# generated by vpshost: edits are overwritten at the next start",
        f"name = {_q(guest.name)}",
        f"type = {_q(mode)}",
        f"vcpus = {plan.vcpus}",
        f"memory = {plan.memory_mb}",
        f"maxmem = {maxmem}",
        f"cpu_weight = {xen_weight(plan.cpu_weight)}",
        f"cap = {plan.cpu_cap_pct}",
        f"disk = [ {_q(disk_spec(disk, disk_format))} ]",
    ]
    cpuid = str(guest.options.get("cpuid") or "") or cpuid
    if cpuid:
        lines.append(f"cpuid = {_q(cpuid)}")
    if guest.net:
        vif = f"mac={guest.net.mac}, bridge={guest.net.bridge}"
        if mode == "hvm":
            vif += ", model=e1000"
        lines.append(f"vif = [ {_q(vif)} ]")
    else:
        lines.append("vif = [ ]")
    if mode in ("pv", "pvh") and boot.kernel is None:
        raise UsageError(f"Xen {mode} guests need a kernel",
                         "use a kernel-boot image such as 'tiny', or --mode hvm")
    if boot.kernel is not None:
        # HVM too: QEMU's direct kernel boot (qemu-xen device model) when given one
        lines.append(f"kernel = {_q(str(boot.kernel))}")
        if boot.ramdisk:
            lines.append(f"ramdisk = {_q(str(boot.ramdisk))}")
        lines.append(f"cmdline = {_q(boot.cmdline)}")
    if mode == "hvm":
        lines += ["boot = \"c\"", "serial = \"pty\"", "vga = \"none\"", "vnc = 0",
                  "sdl = 0"]
    if agent_socket is not None:
        # xl gives the first channel devid 0, which libxl refuses ("Primary console has
        # invalid configuration", Xen 4.17): a placeholder takes that slot, so the
        # agent's channel is console 1, /dev/hvc1 in the guest.
        chan = f"connection=socket, path={agent_socket}, name={AGENT_CHANNEL}"
        lines.append(f"channel = [ \"connection=pty, name=vpshost.reserved\", {_q(chan)} ]")
    lines += ["on_poweroff = \"destroy\"", "on_reboot = \"restart\"",
              "on_crash = \"destroy\""]
    return "\n".join(lines) + "\n"
