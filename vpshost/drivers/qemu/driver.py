"""QemuDriver: one daemonized QEMU per VM, controlled over QMP, no state of its own.

Everything lives in the guest's directory (see paths.VmPaths): the qcow2 overlay on the
image's read-only base, the QMP/console/agent sockets, the pid file and the console
log. Whether a VM runs is read from the pid file and QMP, never remembered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
from typing import Any

from vpshost import runner
from vpshost.config import Config
from vpshost.drivers.base import Driver, ExecResult, Power, Probe, Progress, no_progress
from vpshost.drivers.qemu import accel as accel_mod
from vpshost.drivers.qemu import agent as agent_mod
from vpshost.drivers.qemu import limits, process
from vpshost.drivers.qemu.cmdline import DRIVE_ID, QEMU, build_argv
from vpshost.drivers.qemu.monitor import MonitorError, hmp, qmp, qmp_many
from vpshost.drivers.qemu.paths import VmPaths
from vpshost.errors import (
    CommandError,
    Conflict,
    NotFound,
    RuntimeFailure,
    Unsupported,
    UsageError,
)
from vpshost.host import network, vmimages
from vpshost.host.probe import kvm_usable
from vpshost.models import Guest, Plan

log = logging.getLogger(__name__)
MiB = 1024 * 1024
_SNAP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OPTIONS = {
    "accel": "kvm | tcg | '' (auto: KVM only where it really works)",
    "boot_timeout": "seconds start() waits for the guest agent (0: do not wait)",
    "disk_bus": "virtio | ide | scsi (imported disks without virtio drivers)",
    "nic_model": "virtio-net-pci | e1000 | rtl8139",
    "append": "extra kernel arguments (kernel-boot images only)",
}


def _paths(guest: Guest) -> VmPaths:
    return VmPaths(guest.dir)


def _check_snap(snap: str) -> str:
    if not _SNAP.match(snap):
        raise UsageError(f"invalid snapshot name '{snap}'",
                         "use up to 64 letters, digits, dots, hyphens and underscores")
    return snap


class QemuDriver(Driver):
    type = "vm"

    def __init__(self, config: Config) -> None:
        super().__init__(config)

    # ------------------------------------------------------------------ host
    def probe(self) -> Probe:
        qemu = shutil.which(QEMU)
        if not qemu:
            return Probe(False, f"{QEMU} not found (apt-get install qemu-system-x86)")
        ok, why = kvm_usable()
        accel = "kvm" if ok else "tcg"
        ver = runner.run([QEMU, "--version"], timeout=10, check=False).stdout.split("\n")[0]
        detail = f"{ver}; accelerator {accel}" + ("" if ok else f" ({why})")
        return Probe(True, detail, {"accel": accel, "kvm": ok, "kvm_detail": why,
                                    "qemu": qemu, "version": ver})

    def present(self) -> set[str]:
        """VMs defined on this host (a guest dir with vm.json and a disk), running or not."""
        out: set[str] = set()
        root = self.config.guests_dir
        if not root.is_dir():
            return out
        for info in root.glob("*/vm.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                if (info.parent / "disk.qcow2").exists():
                    out.add(str(json.loads(info.read_text())["name"]))
        return out

    # ------------------------------------------------------------------ disk
    def _image(self, guest: Guest) -> dict[str, Any]:
        m = vmimages.meta(self.config, guest.image)
        if m is None:
            raise NotFound(f"vm image '{guest.image}' is not on this host",
                           "build it with `vps image build` or import it")
        return m

    def create(self, guest: Guest, progress: Progress = no_progress) -> None:
        # an accelerator this host cannot give is refused before anything is made
        accel_mod.choose(str(guest.options.get("accel") or ""))
        paths = _paths(guest).check()
        if guest.image in vmimages.BUILTIN:
            vmimages.build(self.config, guest.image, progress)
        image = self._image(guest)
        if paths.disk.exists():
            raise Conflict(f"VM '{guest.name}' already has a disk at {paths.disk}")
        made_dir = not guest.dir.exists()
        guest.dir.mkdir(parents=True, exist_ok=True)
        try:
            base = vmimages.base_path(self.config, guest.image)
            assert base is not None
            info = json.loads(runner.run(["qemu-img", "info", "--output", "json", "-U",
                                          str(base)], timeout=60).stdout)
            size = max(guest.plan.disk_mb * MiB, int(info["virtual-size"]))
            progress(f"creating a {size // MiB} MiB qcow2 overlay on {guest.image}")
            runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                        "-b", str(base), str(paths.disk), str(size)], timeout=60)
            paths.info.write_text(json.dumps({"name": guest.name, "image": guest.image,
                                              "kind": image["kind"]}) + "\n")
        except BaseException:
            for f in (paths.disk, paths.info):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            if made_dir:
                shutil.rmtree(guest.dir, ignore_errors=True)
            raise

    def delete(self, guest: Guest) -> None:
        paths = _paths(guest)
        process.kill(paths)
        self._cleanup(guest)
        shutil.rmtree(guest.dir, ignore_errors=True)

    # ------------------------------------------------------------------ run
    def start(self, guest: Guest) -> None:
        paths = _paths(guest).check()
        if process.qemu_pid(paths) is not None:
            raise Conflict(f"VM '{guest.name}' is already running")
        if not paths.disk.exists():
            raise NotFound(f"VM '{guest.name}' has no disk at {paths.disk}",
                           "create it first")
        image = self._image(guest)
        accel = accel_mod.choose(str(guest.options.get("accel") or ""))
        process.clean_runtime(paths)
        tap = None
        try:
            if guest.net:
                tap = network.ensure_tap(network.tap_for(guest.dir), guest.net.bridge)
            argv = build_argv(guest, image, accel, tap, paths)
            try:
                runner.run(argv, timeout=60)
            except CommandError as exc:
                detail = (exc.stderr or exc.stdout).strip() or "no output"
                raise RuntimeFailure(f"QEMU failed to start VM '{guest.name}': {detail}",
                                     "see the message above; nothing was left running") \
                    from None
            pid = process.qemu_pid(paths)
            if pid is None:
                raise RuntimeFailure(f"QEMU for '{guest.name}' exited right after start",
                                     process.console_tail(paths))
            limits.apply_cpu(guest.name, pid, guest.plan)
            if tap and guest.plan.bandwidth_mbit:
                limits.apply_bandwidth(tap, guest.plan.bandwidth_mbit)
            default_wait = 120.0 if image.get("kind") == "kernel" else 0.0
            wait = float(guest.options.get("boot_timeout", default_wait) or 0)
            if wait > 0:
                self.wait_ready(guest, wait)
        except BaseException:
            process.kill(paths)
            self._cleanup(guest)
            raise

    def wait_ready(self, guest: Guest, timeout: float) -> float:
        """Wait until the guest agent answers (userspace is up); return the seconds taken.

        A guest that never comes up raises RuntimeFailure with the console tail.
        """
        paths = _paths(guest)
        agent = self._agent(guest)
        t0 = time.monotonic()
        if agent is None:
            return 0.0
        end = t0 + timeout
        while time.monotonic() < end:
            if process.qemu_pid(paths) is None:
                raise RuntimeFailure(f"VM '{guest.name}' stopped while booting",
                                     "console:\n" + process.console_tail(paths))
            if agent.wait(min(2.0, end - time.monotonic())):
                return time.monotonic() - t0
        raise RuntimeFailure(f"VM '{guest.name}' did not come up within {timeout:.0f}s",
                             "console:\n" + process.console_tail(paths))

    def stop(self, guest: Guest, timeout: float) -> None:
        """ACPI power button, then the guest agent, then QMP quit, then SIGKILL."""
        paths = _paths(guest)
        if process.qemu_pid(paths) is None:
            self._cleanup(guest)
            return
        with contextlib.suppress(MonitorError):
            if qmp(paths.qmp, "query-status", timeout=5).get("status") == "paused":
                qmp(paths.qmp, "cont", timeout=5)
            qmp(paths.qmp, "system_powerdown", timeout=5)
        if not process.wait_gone(paths, timeout / 2):
            agent = self._agent(guest)
            if agent is not None:
                with contextlib.suppress(RuntimeFailure):
                    agent.shutdown()
            if not process.wait_gone(paths, timeout / 2):
                log.warning("VM %s ignored shutdown for %.0fs: forcing it off",
                            guest.name, timeout)
                with contextlib.suppress(MonitorError):
                    qmp(paths.qmp, "quit", timeout=5)
                if not process.wait_gone(paths, 3):
                    process.kill(paths)
        self._cleanup(guest)

    def _cleanup(self, guest: Guest) -> None:
        """Undo what start made on the host around QEMU: tap, cgroup, sockets."""
        paths = _paths(guest)
        if process.qemu_pid(paths) is None:
            process.clean_runtime(paths)
        if guest.net:
            with contextlib.suppress(RuntimeFailure, UsageError):
                tap = network.tap_for(guest.dir)
                network.clear_limits(tap)
                network.delete_link(tap)
        limits.remove_cpu(guest.name)

    def power(self, guest: Guest) -> Power:
        paths = _paths(guest)
        if process.qemu_pid(paths) is None:
            return Power.STOPPED if paths.disk.exists() else Power.ABSENT
        try:
            status = qmp(paths.qmp, "query-status", timeout=5).get("status")
        except MonitorError:
            return Power.RUNNING
        # postmigrate: a live move's source after the hand-over, stopped until cont
        return Power.PAUSED if status in ("paused", "suspended", "postmigrate",
                                          "finish-migrate") else Power.RUNNING

    def _running(self, guest: Guest) -> VmPaths:
        paths = _paths(guest)
        if process.qemu_pid(paths) is None:
            raise Conflict(f"VM '{guest.name}' is not running",
                           "start it first with `vps start NAME`")
        return paths

    def pause(self, guest: Guest) -> None:
        qmp(self._running(guest).qmp, "stop")

    def resume(self, guest: Guest) -> None:
        qmp(self._running(guest).qmp, "cont")

    # ------------------------------------------------------------------ inside
    def _agent(self, guest: Guest) -> agent_mod.Agent | None:
        kind = str(self._image(guest).get("agent", "none"))
        return agent_mod.for_image(kind, _paths(guest).agent)

    def exec(self, guest: Guest, argv: list[str], timeout: float = 60.0) -> ExecResult:
        self._running(guest)
        if not argv:
            raise UsageError("nothing to execute", "give a command, e.g. `vps exec NAME uptime`")
        agent = self._agent(guest)
        if agent is None:
            raise Unsupported(self.type, "exec without a guest agent",
                              "use `vps console NAME` or ssh")
        return agent.exec(argv, timeout)

    def console_argv(self, guest: Guest) -> list[str]:
        """socat between the terminal and the serial socket; Ctrl-] detaches."""
        paths = self._running(guest)
        return ["socat", "-,raw,echo=0,escape=0x1d", f"UNIX-CONNECT:{paths.console}"]

    def stats(self, guest: Guest) -> dict[str, Any]:
        paths = _paths(guest)
        pid = process.qemu_pid(paths)
        if pid is None:
            return {}
        out: dict[str, Any] = {"pid": pid, "memory_mb": guest.plan.memory_mb}
        with contextlib.suppress(OSError, Exception):
            out.update(process.overhead(pid, guest.plan.memory_mb))
            import psutil

            t = psutil.Process(pid).cpu_times()
            out["cpu_seconds"] = round(t.user + t.system, 2)
        with contextlib.suppress(MonitorError):
            status, balloon = qmp_many(paths.qmp, [("query-status", None),
                                                   ("query-balloon", None)], timeout=5)
            out["status"] = status.get("status")
            out["balloon_mb"] = int(balloon.get("actual", 0)) // MiB
        out["accel"] = _accel_of(pid)
        return out

    # ------------------------------------------------------------------ limits
    def set_limits(self, guest: Guest, plan: Plan) -> None:
        """Live: memory (balloon, up to the boot size), disk I/O, CPU cap, bandwidth,
        disk growth. vcpus and memory beyond the boot size apply at the next boot."""
        plan.validate()
        paths = _paths(guest)
        pid = process.qemu_pid(paths)
        self._grow_disk(guest, plan, running=pid is not None)
        if pid is None:
            return
        boot_mb = int(qmp(paths.qmp, "query-memory-size-summary")["base-memory"]) // MiB
        target = min(plan.memory_mb, boot_mb)
        qmp_many(paths.qmp, [
            ("balloon", {"value": target * MiB}),
            ("block_set_io_throttle", {
                "device": DRIVE_ID, "bps": 0, "bps_rd": plan.io_read_bps,
                "bps_wr": plan.io_write_bps, "iops": 0, "iops_rd": plan.io_read_iops,
                "iops_wr": plan.io_write_iops}),
        ])
        limits.apply_cpu(guest.name, pid, plan)
        if guest.net:
            limits.apply_bandwidth(network.tap_for(guest.dir), plan.bandwidth_mbit)

    def _grow_disk(self, guest: Guest, plan: Plan, running: bool) -> None:
        paths = _paths(guest)
        info = json.loads(runner.run(["qemu-img", "info", "--output", "json", "-U",
                                      str(paths.disk)], timeout=60).stdout)
        current = int(info["virtual-size"])
        wanted = plan.disk_mb * MiB
        if wanted <= current:
            return  # shrinking a disk is never done; smaller plans keep the disk as is
        if running:
            qmp(paths.qmp, "block_resize", device=DRIVE_ID, size=wanted)
        else:
            runner.run(["qemu-img", "resize", "-q", str(paths.disk), str(wanted)], timeout=60)

    # ------------------------------------------------------------------ moving
    # see migrate.py for the protocol and why each step is as it is
    def migration_files(self, guest: Guest) -> list[str]:
        from vpshost.drivers.qemu import migrate

        return migrate.files(self, guest)

    def migrate_prepare(self, guest: Guest, listen_host: str) -> dict[str, Any]:
        from vpshost.drivers.qemu import migrate

        return migrate.prepare(self, guest, listen_host)

    def migrate_send(self, guest: Guest, target: dict[str, Any], downtime_ms: int,
                     postcopy: bool) -> dict[str, Any]:
        from vpshost.drivers.qemu import migrate

        pid = process.qemu_pid(_paths(guest))
        stats = migrate.send(self, guest, target, downtime_ms, postcopy)
        stats["accel"] = _accel_of(pid) if pid else ""
        return stats

    def migrate_finish(self, guest: Guest) -> dict[str, Any]:
        from vpshost.drivers.qemu import migrate

        return migrate.finish(self, guest)

    def migrate_abort(self, guest: Guest) -> None:
        from vpshost.drivers.qemu import migrate

        migrate.abort(self, guest)

    def migrate_cleanup_source(self, guest: Guest) -> None:
        from vpshost.drivers.qemu import migrate

        migrate.cleanup_source(self, guest)

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, guest: Guest, snap: str) -> None:
        """Running: disk and memory (savevm). Stopped: disk only (qemu-img)."""
        _check_snap(snap)
        paths = _paths(guest)
        if snap in self.snapshots(guest):
            raise Conflict(f"VM '{guest.name}' already has a snapshot '{snap}'")
        if process.qemu_pid(paths) is not None:
            err = hmp(paths.qmp, f"savevm {snap}")
            if err:
                raise RuntimeFailure(f"snapshot '{snap}' of '{guest.name}' failed: {err}")
        else:
            runner.run(["qemu-img", "snapshot", "-c", snap, str(paths.disk)], timeout=300)

    def restore(self, guest: Guest, snap: str) -> None:
        """Running: loadvm puts disk, memory and CPU back. A disk-only snapshot taken
        while stopped is restored by restarting the VM from that disk state."""
        _check_snap(snap)
        paths = _paths(guest)
        snaps = self.snapshots(guest)
        if snap not in snaps:
            raise NotFound(f"VM '{guest.name}' has no snapshot '{snap}'")
        if process.qemu_pid(paths) is not None:
            if snaps[snap] > 0:
                err = hmp(paths.qmp, f"loadvm {snap}")
                if err:
                    raise RuntimeFailure(f"restoring '{snap}' of '{guest.name}' failed: {err}")
                return
            self.stop(guest, 0.1)
            runner.run(["qemu-img", "snapshot", "-a", snap, str(paths.disk)], timeout=300)
            self.start(guest)
            return
        runner.run(["qemu-img", "snapshot", "-a", snap, str(paths.disk)], timeout=300)

    def delete_snapshot(self, guest: Guest, snap: str) -> None:
        _check_snap(snap)
        paths = _paths(guest)
        if snap not in self.snapshots(guest):
            raise NotFound(f"VM '{guest.name}' has no snapshot '{snap}'")
        if process.qemu_pid(paths) is not None:
            err = hmp(paths.qmp, f"delvm {snap}")
            if err:
                raise RuntimeFailure(f"deleting snapshot '{snap}' failed: {err}")
        else:
            runner.run(["qemu-img", "snapshot", "-d", snap, str(paths.disk)], timeout=300)

    def snapshots(self, guest: Guest) -> dict[str, int]:
        """Snapshot name -> size of its saved memory state (0: disk only)."""
        paths = _paths(guest)
        if not paths.disk.exists():
            return {}
        info = json.loads(runner.run(["qemu-img", "info", "--output", "json", "-U",
                                      str(paths.disk)], timeout=60).stdout)
        return {s["name"]: int(s.get("vm-state-size", 0)) for s in info.get("snapshots", [])}


def _accel_of(pid: int) -> str:
    """Read the accelerator back from the running QEMU's command line."""
    import psutil

    with contextlib.suppress(psutil.Error):
        cmd = psutil.Process(pid).cmdline()
        if "-accel" in cmd:
            return cmd[cmd.index("-accel") + 1]
    return ""
