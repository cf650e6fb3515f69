"""XenDriver: Xen domains through the ``xl`` toolstack, on the dom0 it runs in.

No state of its own: each guest's directory holds ``xen.json`` (name, image, disk
format), ``domain.cfg`` (rendered by ``xencfg`` at every start), the disk
(``disk.raw`` through blkback, or ``disk.qcow2`` through QEMU's qdisk), ``agent.sock``
(the exec channel) and ``snapshots/``. Whether a domain runs is asked of ``xl``.

Images are the ``vm`` type's: the kernel-boot ones (``tiny``, ``debian-12``) boot as PV
or PVH with their kernel. ``tiny`` gets a Xen flavour of its initramfs (built here from
the dom0's own Debian kernel, cached under ``<cache>/images/xen/``): xen-blkfront and
xen-netfront instead of virtio, the data disk on /dev/xvda, and the same busybox exec
agent speaking on a Xen PV channel (/dev/hvc1 in the guest, a unix socket in dom0)
instead of a virtio-serial port. ``exec`` therefore needs no guest network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from vpshost import runner
from vpshost.config import Config
from vpshost.drivers import xencfg
from vpshost.drivers.base import Driver, ExecResult, Power, Probe, Progress, no_progress
from vpshost.drivers.bootargs import PARSE_VPS_ARGS, kernel_args
from vpshost.errors import (
    CommandError,
    Conflict,
    NotFound,
    RuntimeFailure,
    Unsupported,
    UsageError,
)
from vpshost.models import Guest, Plan

log = logging.getLogger(__name__)
XL = "xl"
MiB = 1024 * 1024
_SNAP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
XEN_TINY_VERSION = 8
XEN_TINY_MODULES = ["xen-blkfront", "xen-netfront", "ext4", "crc32c_generic"]
OPTIONS = {
    "mode": "pv | pvh | hvm (default pv)",
    "disk_format": "raw (blkback, default) | qcow2 (qdisk)",
    "maxmem_mb": "balloon ceiling in MiB (default: the plan's memory)",
    "boot_timeout": "seconds start() waits for the guest agent (0: do not wait)",
    "append": "extra kernel arguments (PV/PVH)",
    "cpuid": "xl cpuid policy, e.g. host,rdtscp=0 (default: none; rdtscp hidden from "
             "PVH/HVM guests when Xen itself runs under QEMU TCG)",
}

XEN_TINY_INIT = r"""#!/bin/sh
# vpshost tiny init, Xen flavour: xen-blkfront/netfront, network from the kernel
# command line, data disk on /dev/xvda, exec agent on the PV channel /dev/hvc1.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /tmp /data /var/run
mount -t devpts devpts /dev/pts
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
mdev -s
IP=; GW=; HN=vps; IP6=; GW6=
""" + PARSE_VPS_ARGS + r"""hostname "$HN"
ip link set lo up
i=0; while [ $i -lt 50 ] && ! ip link show eth0 >/dev/null 2>&1; do sleep 0.1; i=$((i+1)); done
if ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up
  [ -n "$IP" ] && ip addr add "$IP" dev eth0
  [ -n "$GW" ] && ip route add default via "$GW"
  [ -n "$IP6" ] && ip -6 addr add "$IP6" dev eth0
  [ -n "$GW6" ] && ip -6 route add default via "$GW6"
fi
i=0; while [ $i -lt 30 ] && [ ! -b /dev/xvda ]; do sleep 0.1; i=$((i+1)); done
if mount -t ext4 /dev/xvda /data 2>/dev/null; then echo "vpshost: data disk on /data"; fi
(while true; do /sbin/vps-agent; sleep 0.5; done) &
echo "vpshost: userspace up, ip=$IP hostname=$HN"
while true; do setsid cttyhack /bin/sh -l; done
"""

# `xl shutdown` makes the guest kernel run /sbin/poweroff (orderly_poweroff); our init
# is a shell, so poweroff is done here directly.
XEN_TINY_POWEROFF = """#!/bin/sh
sync
umount /data 2>/dev/null
/bin/busybox poweroff -f
"""

# hvc resets a tty's modes at its last close: set raw mode on the open descriptor, or
# the tty echoes every request back to dom0.
XEN_AGENT_HEAD = """#!/bin/sh
PORT=/dev/hvc1
while ! stty -F "$PORT" >/dev/null 2>&1; do sleep 0.2; done
exec 3<>"$PORT"
stty raw -echo <&3 2>/dev/null
"""


def _check_snap(snap: str) -> str:
    if not _SNAP.match(snap):
        raise UsageError(f"invalid snapshot name '{snap}'",
                         "use up to 64 letters, digits, dots, hyphens and underscores")
    return snap


# ------------------------------------------------------------------ boot files
def _local_kernel() -> tuple[Path, Path] | None:
    """The dom0's own Debian kernel and module tree (a real dom0 always has them)."""
    release = Path("/proc/sys/kernel/osrelease")
    if not release.exists():
        return None
    ver = release.read_text().strip()
    vmlinuz, moddir = Path(f"/boot/vmlinuz-{ver}"), Path(f"/lib/modules/{ver}")
    if vmlinuz.exists() and (moddir / "modules.builtin").exists():
        return vmlinuz, moddir
    return None


# hvc_xen removes the console device and makes a new one when the domain resumes (after
# xl restore or xl migrate): the agent's old descriptor then only reads EOF, and while
# it is open the new console gets the next hvc index. So when the read loop ends the
# agent closes the port and opens whichever of hvc7..1 answers first (hvc0 is the
# console). Commands it runs get no copy of the port (3>&-): a background process
# holding the old tty would keep it open, and "answering", forever.
XEN_AGENT_REOPEN = """  sleep 0.3
  exec 3<&-
  PORT=
  while [ -z "$PORT" ]; do
    for n in 7 6 5 4 3 2 1; do
      [ -z "$PORT" ] && stty -F /dev/hvc$n >/dev/null 2>&1 && PORT=/dev/hvc$n
    done
    [ -z "$PORT" ] && sleep 0.2
  done
  exec 3<>"$PORT"
  stty raw -echo <&3 2>/dev/null
done
"""


def xen_agent_script() -> str:
    from vpshost.host.vmimages import TINY_AGENT

    start = TINY_AGENT.index('exec 3<>"$PORT"')
    body = TINY_AGENT[TINY_AGENT.index("\n", start) + 1:]
    tail = "  sleep 0.3\ndone\n"
    run = 'timeout "$tmo" sh /tmp/.agent.cmd </dev/null'
    if not body.endswith(tail) or body.count(run) != 1:
        raise RuntimeFailure("the tiny agent's main loop changed; update xen_agent_script")
    body = body.replace(run, 'timeout "$tmo" sh /tmp/.agent.cmd 3>&- </dev/null')
    return XEN_AGENT_HEAD + body[:-len(tail)] + XEN_AGENT_REOPEN


def xen_tiny_initramfs(moddir: Path) -> bytes:
    from vpshost.host import vmimages as vi

    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeFailure("/bin/busybox not found", "apt-get install busybox-static")
    applets = runner.run([str(busybox), "--list-full"], timeout=30).stdout.split()
    c = vi.Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp",
              "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules", "data", "root"):
        c.dir(d)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        if applet not in ("bin/busybox", "sbin/poweroff"):
            c.symlink(applet, "/bin/busybox")
    mods = vi.resolve_modules(moddir, XEN_TINY_MODULES)
    for m in mods:
        c.file(f"lib/modules/{vi._modname(m.name)}.ko", vi._module_bytes(m))
    c.file("lib/modules/order",
           "".join(f"{vi._modname(m.name)}.ko\n" for m in mods).encode())
    c.file("init", XEN_TINY_INIT.encode(), 0o755)
    c.file("sbin/vps-agent", xen_agent_script().encode(), 0o755)
    c.file("sbin/poweroff", XEN_TINY_POWEROFF.encode(), 0o755)
    c.file("etc/acpi/PWRF/00000080", XEN_TINY_POWEROFF.encode(), 0o755)
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\n")
    c.file("etc/profile", b"export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nPS1='\\h:\\w# '\n")
    return c.gz()


def xen_tiny_boot(cfg: Config, progress: Progress = no_progress) -> tuple[Path, Path]:
    """The tiny image's kernel and its Xen initramfs (cached per kernel version)."""
    from vpshost.host import vmimages

    local = _local_kernel()
    if local is None:
        vmlinuz, moddir = vmimages._kernel_files(vmimages.kernel_tree(cfg, progress))
    else:
        vmlinuz, moddir = local
    d = cfg.images_dir / "xen" / f"tiny-{moddir.name}"
    stamp = d / "version"
    if stamp.exists() and stamp.read_text().strip() == str(XEN_TINY_VERSION):
        return d / "vmlinuz", d / "initrd.img"
    progress("building the Xen flavour of the tiny initramfs")
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vmlinuz, d / "vmlinuz.tmp")
    (d / "initrd.img.tmp").write_bytes(xen_tiny_initramfs(moddir))
    (d / "vmlinuz.tmp").rename(d / "vmlinuz")
    (d / "initrd.img.tmp").rename(d / "initrd.img")
    stamp.write_text(f"{XEN_TINY_VERSION}\n")
    return d / "vmlinuz", d / "initrd.img"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return ""


# ------------------------------------------------------------------ xl
def xl(*args: str, timeout: float = 120.0, check: bool = True) -> runner.Result:
    return runner.run([XL, *args], timeout=timeout, check=check)


def xl_list() -> dict[str, dict[str, Any]]:
    """Running domains by name: id, memory (MiB), vcpus, state flags, cpu seconds."""
    res = xl("list", timeout=30, check=False)
    out: dict[str, dict[str, Any]] = {}
    for line in res.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 6:
            continue
        out[parts[0]] = {"id": int(parts[1]), "memory_mb": int(parts[2]),
                         "vcpus": int(parts[3]), "state": parts[4],
                         "cpu_seconds": float(parts[5])}
    return out


def parse_state(flags: str) -> Power:
    """xl's state column, e.g. ``-b----`` (r running, b blocked, p paused, s shutdown,
    c crashed, d dying)."""
    f = flags.ljust(6, "-")
    if f[2] == "p":
        return Power.PAUSED
    if f[3] == "s" or f[4] == "c" or f[5] == "d":
        return Power.STOPPED
    return Power.RUNNING


class XenDriver(Driver):
    type = "xen"

    # ------------------------------------------------------------------ host
    def probe(self) -> Probe:
        caps = Path("/proc/xen/capabilities")
        try:
            is_dom0 = "control_d" in caps.read_text()
        except OSError:
            is_dom0 = False
        if not is_dom0:
            return Probe(False, "not a Xen dom0 (/proc/xen/capabilities has no control_d); "
                                "boot a Xen host, e.g. `vps lab xen up`")
        if not shutil.which(XL):
            return Probe(False, "xl not found (apt-get install xen-utils-4.17)")
        res = xl("info", timeout=30, check=False)
        if not res.ok:
            return Probe(False, f"xl info failed: {(res.stderr or res.stdout).strip()}")
        info = xencfg.parse_xl_info(res.stdout)
        modes = xencfg.host_modes(info.get("virt_caps", ""))
        detail = (f"Xen {info.get('xen_version', '?')}, {info.get('free_memory', '?')} MiB "
                  f"free of {info.get('total_memory', '?')}, modes {', '.join(modes)}")
        return Probe(True, detail, {"xen_version": info.get("xen_version"),
                                    "free_memory_mb": int(info.get("free_memory", 0) or 0),
                                    "total_memory_mb": int(info.get("total_memory", 0) or 0),
                                    "virt_caps": info.get("virt_caps", ""), "modes": modes})

    def _check_mode(self, guest: Guest) -> None:
        """PVH and HVM need hardware virtualization that Xen can use: refuse them
        clearly on a host whose ``xl info`` shows none."""
        mode = xencfg.mode_of(guest)
        if mode == "pv":
            return
        res = xl("info", timeout=30, check=False)
        if res.ok:
            xencfg.check_mode(mode, xencfg.parse_xl_info(res.stdout).get("virt_caps", ""))

    def present(self) -> set[str]:
        out: set[str] = set()
        root = self.config.guests_dir
        if root.is_dir():
            for info in root.glob("*/xen.json"):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    out.add(str(json.loads(info.read_text())["name"]))
        return out

    # ------------------------------------------------------------------ files
    def _info(self, guest: Guest) -> dict[str, Any]:
        f = guest.dir / "xen.json"
        if not f.exists():
            raise NotFound(f"Xen guest '{guest.name}' has no definition here",
                           "create it first")
        data: dict[str, Any] = json.loads(f.read_text())
        return data

    def _disk(self, guest: Guest) -> tuple[Path, str]:
        fmt = str(self._info(guest).get("disk_format", "raw"))
        return guest.dir / f"disk.{fmt}", fmt

    def _boot(self, guest: Guest) -> xencfg.BootFiles:
        from vpshost.host import vmimages

        m = vmimages.meta(self.config, guest.image)
        if m is None:
            raise NotFound(f"image '{guest.image}' is not on this host",
                           "`vps image build tiny --type vm`")
        mode = xencfg.mode_of(guest)
        if mode == "hvm" and m.get("kind") != "kernel":
            return xencfg.BootFiles(None, None, "")  # the disk's own bootloader
        if m.get("kind") != "kernel":
            raise Unsupported(self.type, f"{mode} guests from the disk image '{guest.image}'",
                              "use --mode hvm for images with their own bootloader")
        if guest.image == "tiny":
            kernel, initrd = xen_tiny_boot(self.config)
            # HVM: the emulated serial port first, the PV console (hvc0) as /dev/console
            append = ("console=ttyS0 " if mode == "hvm" else "") + \
                "console=hvc0 panic=-1 quiet"
        else:
            d = Path(m["dir"])
            kernel, initrd = d / m["kernel"], d / m["initrd"]
            append = str(m.get("append", "")).replace("/dev/vda", "/dev/xvda")
            append = append.replace("console=ttyS0", "console=hvc0")
        return xencfg.BootFiles(kernel, initrd, kernel_args(guest, append))

    def render(self, guest: Guest) -> str:
        disk, fmt = self._disk(guest)
        agent = guest.dir / "agent.sock" if guest.image == "tiny" else None
        return xencfg.render(guest, disk, fmt, self._boot(guest), agent,
                             xencfg.default_cpuid(xencfg.mode_of(guest), _cpu_model()))

    # ------------------------------------------------------------------ lifecycle
    def create(self, guest: Guest, progress: Progress = no_progress) -> None:
        from vpshost.host import vmimages

        self._check_mode(guest)
        fmt = str(guest.options.get("disk_format") or "raw")
        if fmt not in ("raw", "qcow2"):
            raise UsageError(f"unknown disk format '{fmt}'", "use raw or qcow2")
        if (guest.dir / "xen.json").exists():
            raise Conflict(f"Xen guest '{guest.name}' already exists here")
        if guest.image in vmimages.BUILTIN:
            vmimages.build(self.config, guest.image, progress)
        base = vmimages.base_path(self.config, guest.image)
        if base is None:
            raise NotFound(f"image '{guest.image}' is not on this host")
        made_dir = not guest.dir.exists()
        guest.dir.mkdir(parents=True, exist_ok=True)
        disk = guest.dir / f"disk.{fmt}"
        try:
            info = json.loads(runner.run(["qemu-img", "info", "--output", "json", "-U",
                                          str(base)], timeout=60).stdout)
            size = max(guest.plan.disk_mb * MiB, int(info["virtual-size"]))
            if fmt == "raw":
                progress(f"copying {guest.image} to a sparse raw disk ({size // MiB} MiB)")
                runner.run(["qemu-img", "convert", "-O", "raw", str(base), str(disk)],
                           timeout=1800)
                with open(disk, "r+b") as fh:
                    fh.truncate(size)
            else:
                runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            str(base), str(disk), str(size)], timeout=60)
            if guest.image == "tiny":
                xen_tiny_boot(self.config, progress)
            (guest.dir / "xen.json").write_text(json.dumps(
                {"name": guest.name, "image": guest.image, "disk_format": fmt}) + "\n")
        except BaseException:
            for f in (disk, guest.dir / "xen.json"):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            if made_dir:
                shutil.rmtree(guest.dir, ignore_errors=True)
            raise

    def start(self, guest: Guest) -> None:
        if guest.name in xl_list():
            raise Conflict(f"Xen domain '{guest.name}' is already running")
        disk, _fmt = self._disk(guest)
        if not disk.exists():
            raise NotFound(f"Xen guest '{guest.name}' has no disk at {disk}")
        self._check_mode(guest)
        cfgfile = guest.dir / "domain.cfg"
        cfgfile.write_text(self.render(guest))
        with contextlib.suppress(FileNotFoundError):
            (guest.dir / "agent.sock").unlink()
        try:
            xl("create", str(cfgfile), timeout=180)
        except CommandError as exc:
            self._destroy(guest)
            raise RuntimeFailure(f"xl create of '{guest.name}' failed: "
                                 f"{(exc.stderr or exc.stdout).strip()[-800:]}") from None
        wait = float(guest.options.get("boot_timeout", 240 if guest.image == "tiny" else 0)
                     or 0)
        if wait > 0:
            try:
                self.wait_ready(guest, wait)
            except BaseException:
                self._destroy(guest)
                raise

    def wait_ready(self, guest: Guest, timeout: float) -> float:
        agent = self._agent(guest)
        t0 = time.monotonic()
        if agent is None:
            return 0.0
        end = t0 + timeout
        while time.monotonic() < end:
            if guest.name not in xl_list():
                raise RuntimeFailure(f"Xen domain '{guest.name}' stopped while booting")
            if agent.sock_ready() and agent.wait(min(3.0, end - time.monotonic())):
                return time.monotonic() - t0
            time.sleep(0.5)
        raise RuntimeFailure(f"Xen domain '{guest.name}' did not come up within "
                             f"{timeout:.0f}s", "see `xl console` / `xl dmesg` on the host")

    def _destroy(self, guest: Guest) -> None:
        if guest.name in xl_list():
            xl("destroy", guest.name, timeout=60, check=False)

    def stop(self, guest: Guest, timeout: float) -> None:
        if guest.name not in xl_list():
            return
        if self.power(guest) == Power.PAUSED:
            xl("unpause", guest.name, timeout=30, check=False)
        try:
            xl("shutdown", "-w", "-F", guest.name, timeout=max(timeout, 1.0))
        except CommandError:
            log.warning("Xen domain %s ignored shutdown for %.0fs: destroying it",
                        guest.name, timeout)
            self._destroy(guest)
        # `xl shutdown -w` returns when the domain is gone; make sure
        end = time.monotonic() + 10
        while guest.name in xl_list() and time.monotonic() < end:
            time.sleep(0.3)
        self._destroy(guest)

    def delete(self, guest: Guest) -> None:
        self._destroy(guest)
        shutil.rmtree(guest.dir, ignore_errors=True)

    def power(self, guest: Guest) -> Power:
        dom = xl_list().get(guest.name)
        if dom is None:
            return Power.STOPPED if (guest.dir / "xen.json").exists() else Power.ABSENT
        return parse_state(dom["state"])

    def _running(self, guest: Guest) -> dict[str, Any]:
        dom = xl_list().get(guest.name)
        if dom is None:
            raise Conflict(f"Xen domain '{guest.name}' is not running",
                           "start it first with `vps start NAME`")
        return dom

    def pause(self, guest: Guest) -> None:
        self._running(guest)
        xl("pause", guest.name, timeout=30)

    def resume(self, guest: Guest) -> None:
        self._running(guest)
        xl("unpause", guest.name, timeout=30)

    # ------------------------------------------------------------------ inside
    def _agent(self, guest: Guest) -> Any:
        if guest.image != "tiny":
            return None
        from vpshost.drivers.qemu.agent import TinyAgent

        class ChannelAgent(TinyAgent):
            def sock_ready(self) -> bool:
                return self.path.exists()

            def ping(self, timeout: float = 2.0) -> bool:
                # a request sent while the guest's tty is still in cooked mode comes
                # back as an echo, not a reply: not up yet
                try:
                    return super().ping(timeout)
                except ValueError:
                    return False

        return ChannelAgent(guest.dir / "agent.sock")

    def exec(self, guest: Guest, argv: list[str], timeout: float = 60.0) -> ExecResult:
        self._running(guest)
        if not argv:
            raise UsageError("nothing to execute", "give a command, e.g. `vps exec NAME uptime`")
        agent = self._agent(guest)
        if agent is None:
            raise Unsupported(self.type, f"exec in '{guest.image}' {xencfg.mode_of(guest)} "
                              "guests (the exec agent runs in the tiny image's guests)",
                              "use `vps console NAME` or ssh")
        result: ExecResult = agent.exec(argv, timeout)
        return result

    def console_argv(self, guest: Guest) -> list[str]:
        self._running(guest)
        return [XL, "console", guest.name]

    def stats(self, guest: Guest) -> dict[str, Any]:
        dom = xl_list().get(guest.name)
        if dom is None:
            return {}
        return {"domid": dom["id"], "memory_mb": dom["memory_mb"], "vcpus": dom["vcpus"],
                "state": dom["state"], "cpu_seconds": dom["cpu_seconds"],
                "mode": xencfg.mode_of(guest)}

    # ------------------------------------------------------------------ limits
    def set_limits(self, guest: Guest, plan: Plan) -> None:
        """Live: memory through the balloon (``xl mem-set``, up to maxmem), credit2 weight
        and cap. vcpus and disk size apply at the next start; I/O limits are not
        supported for Xen guests."""
        plan.validate()
        disk, fmt = self._disk(guest)
        if fmt == "raw" and disk.exists() and disk.stat().st_size < plan.disk_mb * MiB:
            with open(disk, "r+b") as fh:
                fh.truncate(plan.disk_mb * MiB)
        if guest.name not in xl_list():
            return
        xl("mem-set", guest.name, f"{plan.memory_mb}m", timeout=60)
        xl("sched-credit2", "-d", guest.name, "-w", str(xencfg.xen_weight(plan.cpu_weight)),
           "-c", str(plan.cpu_cap_pct), timeout=30)

    # ------------------------------------------------------------------ migration
    def migration_files(self, guest: Guest) -> list[str]:
        """What a cold move copies: the definition and the disk (the domain config is
        rendered again on the target at start)."""
        _disk, fmt = self._disk(guest)
        return ["xen.json", f"disk.{fmt}"]

    # Live: `xl migrate` with the disk synced around it (vpshost/drivers/xenmigrate.py).
    def migrate_prepare(self, guest: Guest, listen_host: str) -> dict[str, Any]:
        from vpshost.drivers import xenmigrate

        return xenmigrate.prepare(self, guest, listen_host)

    def migrate_send(self, guest: Guest, target: dict[str, Any], downtime_ms: int,
                     postcopy: bool) -> dict[str, Any]:
        """``downtime_ms`` is not a knob xl has: its pre-copy runs a fixed number of
        rounds; the measured downtime comes back in the stats."""
        from vpshost.drivers import xenmigrate

        return xenmigrate.send(self, guest, target, downtime_ms, postcopy)

    def migrate_finish(self, guest: Guest) -> dict[str, Any] | None:
        from vpshost.drivers import xenmigrate

        return xenmigrate.finish(self, guest)

    def migrate_abort(self, guest: Guest) -> None:
        from vpshost.drivers import xenmigrate

        xenmigrate.abort(self, guest)

    # ------------------------------------------------------------------ snapshots
    def _snapdir(self, guest: Guest) -> Path:
        return guest.dir / "snapshots"

    def snapshots(self, guest: Guest) -> dict[str, int]:
        d = self._snapdir(guest)
        if not d.is_dir():
            return {}
        return {f.stem: f.stat().st_size for f in d.glob("*.save")} | {
            f.name.split(".")[0]: 0 for f in d.glob("*.disk.*")
            if not (d / f"{f.name.split('.')[0]}.save").exists()}

    def snapshot(self, guest: Guest, snap: str) -> None:
        """Running: memory (``xl save -c``) and disk, taken while the domain is paused,
        so both are of the same instant. Stopped: the disk only."""
        _check_snap(snap)
        if snap in self.snapshots(guest):
            raise Conflict(f"Xen guest '{guest.name}' already has a snapshot '{snap}'")
        d = self._snapdir(guest)
        d.mkdir(exist_ok=True)
        disk, fmt = self._disk(guest)
        running = guest.name in xl_list()
        was_paused = running and self.power(guest) == Power.PAUSED
        if was_paused:
            # a PV guest suspends itself for a save: it has to run to answer
            xl("unpause", guest.name, timeout=30)
        try:
            if running:
                # -c: the domain goes on after the save; -p: paused, so the disk copied
                # next is of the same instant as the saved memory
                xl("save", "-c", "-p", guest.name, str(d / f"{snap}.save"), timeout=1800)
            runner.run(["cp", "--sparse=always", str(disk), str(d / f"{snap}.disk.{fmt}")],
                       timeout=1800)
        except BaseException:
            for f in d.glob(f"{snap}.*"):
                f.unlink()
            raise
        finally:
            if running and not was_paused and guest.name in xl_list():
                xl("unpause", guest.name, timeout=30, check=False)

    def restore(self, guest: Guest, snap: str) -> None:
        """Disk and memory back as they were: the running domain is destroyed and
        ``xl restore`` brings the saved one back (running). A disk-only snapshot
        puts the disk back; a running guest is restarted on it."""
        _check_snap(snap)
        d = self._snapdir(guest)
        disk, fmt = self._disk(guest)
        saved_disk = d / f"{snap}.disk.{fmt}"
        if not saved_disk.exists():
            raise NotFound(f"Xen guest '{guest.name}' has no snapshot '{snap}'")
        state = d / f"{snap}.save"
        running = guest.name in xl_list()
        self._destroy(guest)
        runner.run(["cp", "--sparse=always", str(saved_disk), str(disk)], timeout=1800)
        if state.exists():
            with contextlib.suppress(FileNotFoundError):
                (guest.dir / "agent.sock").unlink()
            xl("restore", str(state), timeout=1800)
        elif running:
            self.start(guest)

    def delete_snapshot(self, guest: Guest, snap: str) -> None:
        _check_snap(snap)
        files = list(self._snapdir(guest).glob(f"{snap}.*"))
        if not files:
            raise NotFound(f"Xen guest '{guest.name}' has no snapshot '{snap}'")
        for f in files:
            f.unlink()
