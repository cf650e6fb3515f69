"""The QEMU command line for one VM: pure data in, argv out (unit-testable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vpshost.drivers.bootargs import kernel_args
from vpshost.drivers.qemu.accel import cpu_model
from vpshost.drivers.qemu.paths import VmPaths
from vpshost.models import Guest, Plan

QEMU = "qemu-system-x86_64"
DRIVE_ID = "drive0"
DISK_DEV_ID = "vblk0"
BALLOON_ID = "balloon0"
AGENT_PORTS = {"tiny": "vpshost.agent", "qga": "org.qemu.guest_agent.0"}
DISK_BUSES = ("virtio", "ide", "scsi")
NIC_MODELS = ("virtio-net-pci", "e1000", "rtl8139")




def throttle_opts(plan: Plan) -> list[str]:
    """-drive throttling.* for the plan's I/O limits (none when all are 0)."""
    pairs = {"bps-read": plan.io_read_bps, "bps-write": plan.io_write_bps,
             "iops-read": plan.io_read_iops, "iops-write": plan.io_write_iops}
    return [f"throttling.{k}={v}" for k, v in pairs.items() if v]


def build_argv(guest: Guest, image: dict[str, Any], accel: str, tap: str | None,
               paths: VmPaths) -> list[str]:
    """Everything the VM is, as one argv; the QEMU process daemonizes itself."""
    plan = guest.plan
    opts = guest.options
    argv = [
        QEMU, "-name", f"guest={guest.name},debug-threads=on",
        "-machine", "q35", "-accel", accel, "-cpu", cpu_model(accel),
        "-smp", str(plan.vcpus), "-m", f"{plan.memory_mb}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-daemonize", "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
        "-chardev", (f"socket,id=serial0,path={paths.console},server=on,wait=off,"
                     f"logfile={paths.console_log},logappend=on"),
        "-serial", "chardev:serial0",
        "-rtc", "base=utc",
    ]
    bus = str(opts.get("disk_bus") or "virtio")
    drive = [f"file={paths.disk}", "format=qcow2", f"id={DRIVE_ID}", "if=none",
             *throttle_opts(plan)]
    argv += ["-drive", ",".join(drive)]
    boot = ",bootindex=0" if image.get("kind") == "disk" else ""  # -kernel takes index 0
    if bus == "ide":
        argv += ["-device", f"ide-hd,drive={DRIVE_ID},id={DISK_DEV_ID}{boot}"]
    elif bus == "scsi":
        argv += ["-device", "virtio-scsi-pci,id=scsi0",
                 "-device", f"scsi-hd,drive={DRIVE_ID},id={DISK_DEV_ID}{boot}"]
    else:
        argv += ["-device", f"virtio-blk-pci,drive={DRIVE_ID},id={DISK_DEV_ID}{boot}"]
    if tap and guest.net:
        nic = str(opts.get("nic_model") or "virtio-net-pci")
        argv += ["-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
                 "-device", f"{nic},netdev=net0,mac={guest.net.mac}"]
    argv += ["-device", f"virtio-balloon-pci,id={BALLOON_ID}",
             "-object", "rng-random,id=rng0,filename=/dev/urandom",
             "-device", "virtio-rng-pci,rng=rng0"]
    port = AGENT_PORTS.get(str(image.get("agent", "")))
    if port:
        argv += ["-device", "virtio-serial-pci,id=vser0",
                 "-chardev", f"socket,id=agent0,path={paths.agent},server=on,wait=off",
                 "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={port}"]
    if image.get("kind") == "kernel":
        d = Path(image["dir"])
        argv += ["-kernel", str(d / image["kernel"]), "-initrd", str(d / image["initrd"]),
                 "-append", kernel_args(guest, str(image.get("append", "")))]
    return argv
