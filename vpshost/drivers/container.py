"""OpenVZ-style system containers through LXC.

Each container lives in ``<state>/guests/<name>/``: LXC's ``config``, an ext4 ``disk.img``
of the plan's size (mounted through a loop device, so ``df /`` inside shows the plan
and writing past it fails with ENOSPC), and LXC's log. The guests directory is LXC's
lxcpath, so the stock lxc-* tools see the same containers.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from vpshost.drivers import lxcsnap
from vpshost.drivers.base import (
    Driver,
    ExecResult,
    Power,
    Probe,
    Progress,
    no_progress,
    write_progress,
)
from vpshost.errors import CommandError, Conflict, RuntimeFailure, UsageError
from vpshost.host import cgroups, images, lxcfs
from vpshost.models import Guest, Plan
from vpshost.runner import run

LXC_CONFIG = Path("/usr/share/lxc/config")
EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What an ext4 needs beyond its files (journal, inodes), in MiB, before we refuse a disk.
FS_OVERHEAD_MB = 24
# lxc-start tries when it loses a race for a loop device to a concurrent start
LOOP_RACE_ATTEMPTS = 5
# Live moves (CRIU through lxc-checkpoint): the images in the guest dir, and the one
# file they travel in (the agents move flat guest files, not directories)
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_TAR = "checkpoint.tar"
CRIU_TIMEOUT = 600.0


def criu_problem() -> str | None:
    """Why CRIU cannot checkpoint on this host, in criu's own words; None when
    `criu check` passes. Asked afresh every time: drivers keep nothing."""
    if not shutil.which("criu"):
        return "criu is not installed (apt-get install criu)"
    r = run(["criu", "check"], timeout=60, check=False)
    return None if r.ok else criu_reason(r.stdout + "\n" + r.stderr)


def criu_reason(text: str) -> str:
    """criu's error lines without their source locations and the noise of its helper
    processes ("exited, status=1"), first cause first."""
    found: list[str] = []
    for line in text.splitlines():
        msg = re.sub(r"^\s*Error \([^)]*\):\s*", "", line).strip()
        if msg and not msg.startswith("exited, status=") and msg not in found:
            found.append(msg)
    return "; ".join(found[:3]) or "criu check failed and said nothing"


def _log_tail(path: Path, lines: int = 6) -> str:
    """The last error lines of a CRIU log (LXC has criu write them to the -D dir)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln for ln in text if "Error" in ln] or text
    return "\n  ".join(errors[-lines:])


class ContainerDriver(Driver):
    type = "container"

    # -- helpers -----------------------------------------------------------------
    @property
    def lxcpath(self) -> str:
        return str(self.config.guests_dir)

    def _lxc(self, tool: str, guest: Guest, *args: str, timeout: float = 60.0,
             check: bool = True) -> Any:
        return run([f"lxc-{tool}", "-n", guest.name, "-P", self.lxcpath, *args],
                   timeout=timeout, check=check)

    def _shift(self, guest: Guest) -> int:
        return 0 if guest.privileged else self.config.container.idmap_base

    def _render_config(self, guest: Guest) -> str:
        c = self.config.container
        kind = cgroups.layout()
        image = images.get(guest.image)
        lines = [
            f"lxc.uts.name = {guest.name}",
            f"lxc.rootfs.path = loop:{guest.dir / 'disk.img'}",
            f"lxc.include = {LXC_CONFIG / 'common.conf'}",
        ]
        if not guest.privileged:
            lines += [
                f"lxc.include = {LXC_CONFIG / 'userns.conf'}",
                f"lxc.idmap = u 0 {c.idmap_base} {c.idmap_size}",
                f"lxc.idmap = g 0 {c.idmap_base} {c.idmap_size}",
            ]
        lines += [
            "lxc.mount.auto = proc:mixed sys:ro cgroup:mixed",
            "lxc.tty.max = 1",
            "lxc.pty.max = 64",
            f"lxc.signal.halt = {image.halt_signal}",
            f"lxc.log.file = {guest.dir / 'lxc.log'}",
            "lxc.log.level = WARN",
            f"lxc.console.logfile = {guest.dir / 'console.log'}",
        ]
        if guest.net:
            n = guest.net
            lines += [
                "lxc.net.0.type = veth",
                f"lxc.net.0.link = {n.bridge}",
                "lxc.net.0.flags = up",
                "lxc.net.0.name = eth0",
                f"lxc.net.0.hwaddr = {n.mac}",
                f"lxc.net.0.ipv4.address = {n.ip}/{n.prefixlen}",
                f"lxc.net.0.ipv4.gateway = {n.gateway}",
            ]
            if n.ip6:
                lines += [f"lxc.net.0.ipv6.address = {n.ip6}/{n.prefixlen6}",
                          f"lxc.net.0.ipv6.gateway = {n.gateway6}"]
        settings = cgroups.plan_settings(guest.plan, guest.id, kind,
                                         swap=cgroups.swap_accounting())
        lines += cgroups.lxc_keys(settings, kind)
        return "\n".join(lines) + "\n"

    def prepare_host(self) -> None:
        """What unprivileged containers need from the host: subordinate ids for root
        (newuidmap refuses a map /etc/subuid does not grant) and a running lxcfs."""
        c = self.config.container
        line = f"root:{c.idmap_base}:{c.idmap_size}"
        for path in (Path("/etc/subuid"), Path("/etc/subgid")):
            text = path.read_text() if path.exists() else ""
            if line not in text.split():
                path.write_text(text + ("" if text.endswith("\n") or not text else "\n")
                                + line + "\n")
        lxcfs.ensure(Path(c.lxcfs_dir))
        self._ensure_traversable()

    def _ensure_traversable(self) -> None:
        """The container's root (a mapped, unprivileged uid) must be able to pass through
        every directory above its disk image, or lxc-start fails with EACCES."""
        own = [self.config.guests_dir, self.config.state_dir]
        for d in own:
            d.mkdir(parents=True, exist_ok=True)
            mode = d.stat().st_mode
            if mode & 0o001 == 0:
                d.chmod(stat.S_IMODE(mode) | 0o011)
        for d in self.config.state_dir.resolve().parents:
            if d.stat().st_mode & 0o001 == 0:
                raise UsageError(f"{d} is not searchable by other users, so unprivileged "
                                 "containers under it cannot start",
                                 f"chmod o+x {d}, or set VPS_STATE_DIR elsewhere")

    # -- the interface -----------------------------------------------------------
    def probe(self) -> Probe:
        if not shutil.which("lxc-start"):
            return Probe(False, "LXC is not installed (apt-get install lxc)")
        version = run(["lxc-start", "--version"]).stdout.strip()
        lxcfs_up = lxcfs.serving(Path(self.config.container.lxcfs_dir))
        detail = f"LXC {version}" + ("" if lxcfs_up else "; lxcfs not running: "
                                     "/proc inside shows the host's memory and CPUs")
        return Probe(True, detail, {"lxc_version": version, "lxcfs": lxcfs_up})

    def create(self, guest: Guest, progress: Progress = no_progress) -> None:
        shift = self._shift(guest)
        rootfs = images.build(self.config, guest.image, progress, shift=shift)
        need = images.tree_size_mb(rootfs) + FS_OVERHEAD_MB
        if guest.plan.disk_mb < need:
            raise UsageError(f"image {guest.image} needs a disk of at least {need}M, "
                             f"the plan has {guest.plan.disk_mb}M",
                             f"use --disk {need}M or more")
        guest.dir.mkdir(parents=True, exist_ok=True)
        try:
            disk = guest.dir / "disk.img"
            progress(f"making a {guest.plan.disk_mb}M ext4 root filesystem")
            with open(disk, "wb") as f:
                f.truncate(guest.plan.disk_mb * 1024 * 1024)
            # -m 0: no blocks reserved for root, so df inside shows the whole plan
            run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(rootfs),
                 "-E", f"root_owner={shift}:{shift}", str(disk)], timeout=600)
            (guest.dir / "config").write_text(self._render_config(guest))
        except BaseException:
            shutil.rmtree(guest.dir, ignore_errors=True)
            raise

    def start(self, guest: Guest) -> None:
        # The config is rendered again so a changed plan or address takes effect.
        (guest.dir / "config").write_text(self._render_config(guest))
        if not guest.privileged:
            self.prepare_host()
        log = guest.dir / "lxc.log"
        for attempt in range(1, LOOP_RACE_ATTEMPTS + 1):
            seen = log.stat().st_size if log.exists() else 0
            try:
                self._lxc("start", guest, "-d", timeout=60)
                break
            except CommandError as exc:
                text = log.read_bytes()[seen:].decode(errors="replace") if log.exists() else ""
                lines = text.splitlines()
                tail = ([ln for ln in lines if " ERROR " in ln] or lines)[-8:]
                self._lxc("stop", guest, "-k", check=False)
                # Two lxc-starts at once may pick the same free loop device; the loser's
                # LOOP_SET_FD fails with EBUSY. Another try picks another device.
                if attempt < LOOP_RACE_ATTEMPTS and "Failed to set loop fd" in text:
                    continue
                raise RuntimeFailure(f"container {guest.name} failed to start: "
                                     + ("\n  ".join(["", *tail]) or exc.stderr)) from None
        if any((guest.plan.io_read_bps, guest.plan.io_write_bps,
                guest.plan.io_read_iops, guest.plan.io_write_iops)):
            self._apply_io(guest, guest.plan)
        if guest.plan.bandwidth_mbit:
            self._apply_bandwidth(guest, guest.plan.bandwidth_mbit)

    def host_link(self, guest: Guest) -> str | None:
        """The host end of the container's veth (LXC names it; we look it up)."""
        out = self._lxc("info", guest, check=False).stdout
        for line in out.splitlines():
            if line.strip().startswith("Link:"):
                return line.split(":", 1)[1].strip()
        return None

    def _apply_bandwidth(self, guest: Guest, mbit: int) -> None:
        from vpshost.host import network

        link = self.host_link(guest)
        if link is None:
            return
        if mbit:
            network.set_egress_limit(link, mbit)  # what the container downloads
            network.set_ingress_limit(link, mbit)  # what it uploads
        else:
            network.clear_limits(link)

    def stop(self, guest: Guest, timeout: float) -> None:
        if guest.plan.bandwidth_mbit:
            link = self.host_link(guest)
            if link:
                from vpshost.host import network

                network.clear_limits(link)  # its IFB would outlive the veth otherwise
        # lxc-stop sends the image's halt signal, waits, then kills what is left.
        self._lxc("stop", guest, "-t", str(int(max(1, timeout))), timeout=timeout + 30,
                  check=False)
        if self.power(guest) is Power.RUNNING:
            self._lxc("stop", guest, "-k", timeout=30)

    def delete(self, guest: Guest) -> None:
        if (guest.dir / "config").exists() and self.power(guest) is not Power.STOPPED:
            self._lxc("stop", guest, "-k", check=False, timeout=30)
        shutil.rmtree(guest.dir, ignore_errors=True)

    def power(self, guest: Guest) -> Power:
        if not (guest.dir / "config").exists():
            return Power.ABSENT
        out = self._lxc("info", guest, "-s", "-H", check=False).stdout.strip()
        return {"RUNNING": Power.RUNNING, "FROZEN": Power.PAUSED}.get(out, Power.STOPPED)

    def present(self) -> set[str]:
        root = self.config.guests_dir
        if not root.is_dir():
            return set()
        return {p.parent.name for p in root.glob("*/config")
                if p.read_text().startswith("lxc.")}

    def exec(self, guest: Guest, argv: list[str], timeout: float = 60.0) -> ExecResult:
        r = self._lxc("attach", guest, "--clear-env", "-v", f"PATH={EXEC_PATH}",
                      "-v", "HOME=/root", "-v", "TERM=dumb", "--", *argv,
                      timeout=timeout, check=False)
        return ExecResult(r.returncode, r.stdout, r.stderr)

    def console_argv(self, guest: Guest) -> list[str]:
        return ["lxc-console", "-n", guest.name, "-P", self.lxcpath, "-t", "1"]

    def migration_files(self, guest: Guest) -> list[str]:
        # the config is rendered from the Guest at every start; snapshots travel too
        return ["disk.img", *lxcsnap.files(guest)]

    # -- snapshots: copies of disk.img (vpshost/drivers/lxcsnap.py) ------------------
    def snapshot(self, guest: Guest, snap: str) -> bool:
        lxcsnap.take(self, guest, snap)
        return False  # disk only: no memory state without CRIU

    def restore(self, guest: Guest, snap: str) -> None:
        lxcsnap.restore(self, guest, snap, self.config.container.stop_timeout)

    def delete_snapshot(self, guest: Guest, snap: str) -> None:
        lxcsnap.delete(guest, snap)

    # -- live moves with CRIU ------------------------------------------------------
    # check (both hosts) -> prepare (target: a dir) -> send (source: lxc-checkpoint -s,
    # the images tarred; the control plane copies them and disk.img) -> finish (target:
    # lxc-checkpoint -r). The container is stopped from the dump to the restore.
    def migrate_check(self, guest: Guest) -> None:
        problem = criu_problem()
        if problem:
            raise UsageError(
                f"cannot move container '{guest.name}' live: CRIU cannot checkpoint on "
                f"this host (`criu check`: {problem})",
                "use --frozen (freeze, copy, start afresh there) or a cold move "
                "(without --live)")

    def migrate_prepare(self, guest: Guest, listen_host: str) -> dict[str, Any]:
        self.migrate_check(guest)
        if (guest.dir / "config").exists() or (guest.dir / "disk.img").exists():
            raise Conflict(f"container '{guest.name}' already exists on this host",
                           "remove the stale copy (`vps delete` on that host) and retry")
        guest.dir.mkdir(parents=True, exist_ok=True)
        return {"criu": True}

    def migrate_send(self, guest: Guest, target: dict[str, Any], downtime_ms: int,
                     postcopy: bool) -> dict[str, Any]:
        """Checkpoint and stop the container; its images in one file to carry.
        ``downtime_ms`` cannot bound a CRIU move: the disk travels inside the pause."""
        if postcopy:
            raise UsageError("post-copy is for VMs; a container moves as a CRIU checkpoint",
                             "migrate without --postcopy")
        self.migrate_check(guest)
        ckpt, tar = guest.dir / CHECKPOINT_DIR, guest.dir / CHECKPOINT_TAR
        shutil.rmtree(ckpt, ignore_errors=True)
        tar.unlink(missing_ok=True)
        write_progress(guest.dir, {"seq": 1, "phase": "checkpoint", "time": time.time()})
        link = self.host_link(guest) if guest.plan.bandwidth_mbit else None
        stopped_at, t0 = time.time(), time.monotonic()
        try:
            self._lxc("checkpoint", guest, "-s", "-v", "-D", str(ckpt), timeout=CRIU_TIMEOUT)
        except CommandError as exc:
            raise RuntimeFailure(f"checkpointing container '{guest.name}' failed: "
                                 + (_log_tail(ckpt / "dump.log") or exc.stderr.strip()),
                                 "it keeps running here (criu resumes it after a failed "
                                 "dump)") from None
        dump_s = time.monotonic() - t0
        if link:
            from vpshost.host import network

            network.clear_limits(link)  # its IFB would outlive the veth otherwise
        run(["tar", "-C", str(guest.dir), "-cf", str(tar), CHECKPOINT_DIR],
            timeout=CRIU_TIMEOUT)
        size = tar.stat().st_size
        write_progress(guest.dir, {"seq": 2, "phase": "done", "time": time.time(),
                                   "done_bytes": size, "total_bytes": size,
                                   "transferred_bytes": size, "percent": 100.0})
        # everything a cold move would copy (disk, snapshots), and the checkpoint
        return {"files": [*self.migration_files(guest), CHECKPOINT_TAR],
                "stopped_at": stopped_at,
                "checkpoint_ms": round(dump_s * 1000), "checkpoint_bytes": size}

    def migrate_finish(self, guest: Guest) -> dict[str, Any] | None:
        """Restore the copied checkpoint: the same processes run on, here."""
        ckpt, tar = guest.dir / CHECKPOINT_DIR, guest.dir / CHECKPOINT_TAR
        shutil.rmtree(ckpt, ignore_errors=True)
        run(["tar", "-C", str(guest.dir), "-xf", str(tar)], timeout=CRIU_TIMEOUT)
        (guest.dir / "config").write_text(self._render_config(guest))
        if not guest.privileged:
            self.prepare_host()
        self._restore(guest, ckpt)
        resumed_at = time.time()
        shutil.rmtree(ckpt, ignore_errors=True)
        tar.unlink(missing_ok=True)
        return {"resumed_at": resumed_at}

    def migrate_abort(self, guest: Guest) -> None:
        self.delete(guest)

    def migrate_revert(self, guest: Guest) -> None:
        """After a failed move: restore the source from its own checkpoint (its disk
        has not changed since the dump), or at worst start it afresh."""
        state = self.power(guest)
        if state is Power.PAUSED:
            self.resume(guest)
        if state is not Power.STOPPED:
            return
        ckpt = guest.dir / CHECKPOINT_DIR
        if (ckpt / "inventory.img").exists():
            with contextlib.suppress(RuntimeFailure):
                self._restore(guest, ckpt)
                return
            self._lxc("stop", guest, "-k", check=False)  # whatever a failed restore left
        self.start(guest)

    def _restore(self, guest: Guest, ckpt: Path) -> None:
        try:
            self._lxc("checkpoint", guest, "-r", "-v", "-D", str(ckpt), timeout=CRIU_TIMEOUT)
        except CommandError as exc:
            raise RuntimeFailure(f"restoring container '{guest.name}' from its checkpoint "
                                 "failed: " + (_log_tail(ckpt / "restore.log")
                                               or exc.stderr.strip())) from None
        # what start adds beyond LXC's config
        if any((guest.plan.io_read_bps, guest.plan.io_write_bps,
                guest.plan.io_read_iops, guest.plan.io_write_iops)):
            self._apply_io(guest, guest.plan)
        if guest.plan.bandwidth_mbit:
            self._apply_bandwidth(guest, guest.plan.bandwidth_mbit)

    def pause(self, guest: Guest) -> None:
        self._lxc("freeze", guest)

    def resume(self, guest: Guest) -> None:
        self._lxc("unfreeze", guest)

    def set_limits(self, guest: Guest, plan: Plan) -> None:
        running = self.power(guest) is Power.RUNNING
        if plan.disk_mb > guest.plan.disk_mb:
            if running:
                raise UsageError(f"the disk of container {guest.name} grows only while it "
                                 "is stopped", f"vps stop {guest.name}, then resize")
            self._grow_disk(guest, plan.disk_mb)
        if not running:
            return  # the config is rendered from the plan at the next start
        kind = cgroups.layout()
        settings = cgroups.plan_settings(plan, guest.id, kind, swap=cgroups.swap_accounting())
        # v1 refuses a memory limit above memsw: order the writes so both stay valid
        order = sorted(settings, key=lambda k: ("memsw" in k) == (plan.memory_mb
                       < guest.plan.memory_mb))
        for key in order:
            # "--": a value such as -1 (no CPU cap) is not an option
            self._lxc("cgroup", guest, "--", key, settings[key])
        self._apply_io(guest, plan)

    def _grow_disk(self, guest: Guest, disk_mb: int) -> None:
        disk = guest.dir / "disk.img"
        run(["e2fsck", "-f", "-p", str(disk)], timeout=600)  # resize2fs insists on it
        with open(disk, "r+b") as f:
            f.truncate(disk_mb * 1024 * 1024)
        run(["resize2fs", "-p", str(disk)], timeout=600)

    def _apply_io(self, guest: Guest, plan: Plan) -> None:
        device = self._loop_device(guest)
        if device:
            for key, value in cgroups.io_settings(plan, device, cgroups.layout()).items():
                self._lxc("cgroup", guest, "--", key, value)

    def _loop_device(self, guest: Guest) -> str | None:
        """'major:minor' of the loop device LXC attached the disk image to."""
        out = run(["losetup", "-j", str(guest.dir / "disk.img")], check=False).stdout
        if not out.strip():
            return None
        dev = out.split(":", 1)[0]
        rdev = os.stat(dev).st_rdev
        return f"{os.major(rdev)}:{os.minor(rdev)}"

    def stats(self, guest: Guest) -> dict[str, Any]:
        out: dict[str, Any] = {}
        keys = {"memory_bytes": "memory.usage_in_bytes", "pids": "pids.current",
                "cpu_ns": "cpuacct.usage"}
        if cgroups.layout() is cgroups.Layout.V2:
            keys = {"memory_bytes": "memory.current", "pids": "pids.current"}
        for name, key in keys.items():
            r = self._lxc("cgroup", guest, key, check=False)
            if r.ok and r.stdout.strip().isdigit():
                out[name] = int(r.stdout.strip())
        return out
