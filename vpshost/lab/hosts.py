"""Boot, inspect and power off the nested lab hosts (``vps lab xen|kvm up|down|status``).

A lab host is one daemonized ``qemu-system-x86_64 -accel tcg`` on this machine. Its files
live in ``<cache_dir>/lab/hosts/<name>/``:

- ``disk.qcow2``: an overlay on the shared lab image (made at ``up``, removed at ``down``);
- ``config.img``: a small ext4 disk (label ``vpslabcfg``) with ``lab.env`` (name,
  address, agent port), ``secret``, the vpshost code (``src/``) and seed images;
- ``secret``: the agent's shared secret (kept across up/down so a registration stays
  valid);
- ``serial.log`` (Xen's and the kernel's console), ``status.log`` (the boot script's
  virtio serial port), ``qemu.pid``, ``qmp.sock``, ``host.json``.

The Xen host boots ``xen.elf`` with QEMU's multiboot loader and the Debian kernel as
dom0 (``-cpu max,-smap,-smep``: without them the PV dom0 faults at its first
instruction). The KVM host boots the same kernel directly under ``-cpu max``, which
exposes AMD SVM, so ``kvm_amd`` loads inside and /dev/kvm works there.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpshost import runner
from vpshost.config import Config
from vpshost.errors import CommandError, Conflict, NotFound, RuntimeFailure, UsageError
from vpshost.lab import image as lab_image
from vpshost.lab import net
from vpshost.models import check_name

Progress = Callable[[str], None]
KINDS = ("xen", "kvm")
QEMU = "qemu-system-x86_64"
DEFAULT_MEMORY_MB = 1536
DEFAULT_DOM0_MB = 768
DEFAULT_SMP = 2
FIRST_INDEX = 11  # 10.99.0.11 is the first lab host; .1 is this machine
AGENT_PATH = "/agent/v1/call"


def _noop(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class LabHost:
    name: str
    kind: str
    index: int
    dir: Path

    @property
    def ip(self) -> str:
        return net.address(self.index)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{lab_image.AGENT_PORT}"

    @property
    def mac(self) -> str:
        return f"0a:76:72:00:00:{self.index:02x}"

    @property
    def tap(self) -> str:
        return net.tap_name(self.index)

    def path(self, name: str) -> Path:
        return self.dir / name


def hosts_dir(cfg: Config) -> Path:
    return lab_image.lab_dir(cfg) / "hosts"


def _load(cfg: Config, name: str) -> LabHost | None:
    f = hosts_dir(cfg) / name / "host.json"
    if not f.exists():
        return None
    d = json.loads(f.read_text())
    return LabHost(d["name"], d["kind"], int(d["index"]), f.parent)


def all_hosts(cfg: Config) -> list[LabHost]:
    root = hosts_dir(cfg)
    if not root.is_dir():
        return []
    out = [h for d in sorted(root.iterdir()) if (h := _load(cfg, d.name))]
    return out


def _define(cfg: Config, kind: str, name: str) -> LabHost:
    """The host's record, made on first use with the lowest free address."""
    check_name(name)
    if kind not in KINDS:
        raise UsageError(f"unknown lab host kind '{kind}'", f"choose one of {', '.join(KINDS)}")
    have = _load(cfg, name)
    if have:
        if have.kind != kind:
            raise Conflict(f"lab host '{name}' is a {have.kind} host, not {kind}")
        return have
    used = {h.index for h in all_hosts(cfg)}
    index = next(i for i in range(FIRST_INDEX, 250) if i not in used)
    d = hosts_dir(cfg) / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "host.json").write_text(json.dumps({"name": name, "kind": kind, "index": index}) + "\n")
    return LabHost(name, kind, index, d)


def secret(host: LabHost) -> str:
    f = host.path("secret")
    if not f.exists():
        f.touch(mode=0o600)
        f.write_text(secrets.token_urlsafe(32) + "\n")
    return f.read_text().strip()


# ------------------------------------------------------------------ process
def pid(host: LabHost) -> int | None:
    """The QEMU pid when it is alive and really this host's QEMU."""
    try:
        p = int(host.path("qemu.pid").read_text().strip())
        cmd = Path(f"/proc/{p}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return p if f"vpslab-{host.name}".encode() in cmd else None


def build_argv(host: LabHost, img: dict[str, Any], memory_mb: int = DEFAULT_MEMORY_MB,
               smp: int = DEFAULT_SMP, dom0_mb: int = DEFAULT_DOM0_MB) -> list[str]:
    """The QEMU command line of a lab host (pure; unit-tested)."""
    d = Path(img["dir"])
    argv = [
        QEMU, "-name", f"vpslab-{host.name}", "-accel", "tcg",
        "-m", f"{memory_mb}M", "-smp", str(smp),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-daemonize", "-pidfile", str(host.path("qemu.pid")),
        "-qmp", f"unix:{host.path('qmp.sock')},server=on,wait=off",
        "-serial", f"file:{host.path('serial.log')}",
        "-drive", f"file={host.path('disk.qcow2')},if=virtio,format=qcow2,cache=unsafe",
        "-drive", f"file={host.path('config.img')},if=virtio,format=raw,readonly=on",
        "-netdev", f"tap,id=n0,ifname={host.tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={host.mac}",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"file,id=status,path={host.path('status.log')}",
        "-device", f"virtserialport,bus=vser0.0,chardev=status,name={lab_image.STATUS_PORT}",
        "-chardev", f"socket,id=exec,path={host.path('exec.sock')},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=exec,name={lab_image.EXEC_PORT}",
        "-device", "virtio-rng-pci",
    ]
    linux = "root=/dev/vda rw net.ifnames=0 systemd.show_status=1"
    if host.kind == "xen":
        # Xen on com1 (the serial log); dom0's console is Xen's (hvc0), which Xen
        # forwards to com1. Multiboot module arguments may not contain commas.
        argv += ["-cpu", "max,-smap,-smep",
                 "-kernel", str(d / "xen.elf"),
                 "-append", (f"console=com1 com1=115200 dom0_mem={dom0_mb}M,max:{dom0_mb}M "
                             "dom0_max_vcpus=1 sched=credit2 loglvl=all guest_loglvl=all "
                             "noreboot"),
                 "-initrd", f"{d / 'vmlinuz'} {linux} console=hvc0,{d / 'initrd.img'}"]
    else:
        argv += ["-cpu", "max",
                 "-kernel", str(d / "vmlinuz"), "-initrd", str(d / "initrd.img"),
                 "-append", f"{linux} console=ttyS0 panic=-1"]
    return argv


def _config_disk(cfg: Config, host: LabHost, progress: Progress) -> None:
    """lab.env, the secret, the vpshost code and seed images on a small ext4 disk."""
    import vpshost

    with tempfile.TemporaryDirectory(dir=host.dir) as tmp:
        root = Path(tmp) / "cfg"
        root.mkdir()
        (root / "lab.env").write_text(
            f"LAB_NAME={host.name}\nLAB_KIND={host.kind}\nLAB_IP={host.ip}\n"
            f"LAB_PREFIXLEN={net.PREFIXLEN}\nLAB_GW=\nLAB_PORT={lab_image.AGENT_PORT}\n"
            f"LAB_CONTROL={net.HOST_ADDR}\n")
        (root / "secret").write_text(secret(host) + "\n")
        (root / "secret").chmod(0o600)
        src = Path(vpshost.__file__).parent
        shutil.copytree(src, root / "src" / "vpshost",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # The `tiny` vm image, so guests start without downloads (the lab host reaches
        # nothing but this machine).
        from vpshost.host import vmimages

        progress("making sure the tiny vm image is built (seeded into the lab host)")
        vmimages.build(cfg, "tiny", progress)
        tiny = vmimages.image_dir(cfg, "tiny")
        shutil.copytree(tiny, root / "images" / "vm" / "tiny")
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        mb = max(64, int(size * 1.5 / 2**20) + 32)
        raw = Path(tmp) / "config.img"
        with open(raw, "wb") as fh:
            fh.truncate(mb * 2**20)
        runner.run(["mkfs.ext4", "-q", "-F", "-L", lab_image.CONFIG_LABEL, "-d", str(root),
                    str(raw)], timeout=300)
        raw.rename(host.path("config.img"))


def _clean_runtime(host: LabHost) -> None:
    for f in ("qemu.pid", "qmp.sock", "exec.sock", "disk.qcow2", "config.img"):
        with contextlib.suppress(FileNotFoundError):
            host.path(f).unlink()


def up(cfg: Config, kind: str, name: str, *, memory_mb: int = DEFAULT_MEMORY_MB,
       dom0_mb: int = DEFAULT_DOM0_MB, smp: int = DEFAULT_SMP, timeout: float = 600.0,
       progress: Progress = _noop) -> dict[str, Any]:
    """Build the image if needed, boot the host, wait for its agent; return status()."""
    if os.geteuid() != 0:
        raise UsageError("lab hosts need root (bridge, tap devices, mounts)")
    if not shutil.which(QEMU):
        raise RuntimeFailure(f"{QEMU} not found", "apt-get install qemu-system-x86")
    host = _define(cfg, kind, name)
    if pid(host) is not None:
        raise Conflict(f"lab host '{name}' is already up", f"agent at {host.url}")
    img = lab_image.build(cfg, progress)
    _clean_runtime(host)
    for f in ("serial.log", "status.log"):
        host.path(f).write_text("")
    progress("config disk (lab.env, secret, vpshost code, tiny image)")
    _config_disk(cfg, host, progress)
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                str(Path(img["dir"]) / "rootfs.qcow2"), str(host.path("disk.qcow2"))],
               timeout=60)
    net.ensure_tap(host.index)
    argv = build_argv(host, img, memory_mb, smp, dom0_mb)
    t0 = time.time()
    progress(f"booting {kind} lab host '{name}' under QEMU TCG ({memory_mb} MiB)")
    try:
        runner.run(argv, timeout=60)
    except CommandError as exc:
        net.delete_tap(host.index)
        _clean_runtime(host)
        raise RuntimeFailure(f"QEMU failed to boot lab host '{name}': "
                             f"{(exc.stderr or exc.stdout).strip()}") from None
    info = {"started": t0, "kind": kind, "memory_mb": memory_mb, "smp": smp,
            "dom0_mb": dom0_mb if kind == "xen" else None, "argv": argv}
    host.path("run.json").write_text(json.dumps(info, indent=2) + "\n")
    try:
        ready = wait_agent(host, timeout, progress)
    except BaseException:
        down(cfg, name)
        raise
    info["agent_ready_s"] = round(ready - t0, 1)
    host.path("run.json").write_text(json.dumps(info, indent=2) + "\n")
    return status_of(host)


def _tail(path: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").replace("\r", "")
        return "\n".join(text.splitlines()[-lines:])
    return ""


def agent_answers(host: LabHost, timeout: float = 3.0) -> bool:
    """True when something speaks HTTP on the agent's port (any status counts)."""
    import httpx

    try:
        httpx.get(host.url + "/", timeout=timeout,
                  headers={"Authorization": f"Bearer {secret(host)}"})
        return True
    except httpx.HTTPError:
        return False


def wait_agent(host: LabHost, timeout: float, progress: Progress = _noop) -> float:
    """Wait until the agent answers; on failure the serial and status log tails say why."""
    end = time.time() + timeout
    seen = 0
    while time.time() < end:
        if pid(host) is None:
            raise RuntimeFailure(f"lab host '{host.name}' powered off while booting",
                                 "serial log:\n" + _tail(host.path("serial.log")))
        with contextlib.suppress(OSError):
            lines = host.path("status.log").read_text(errors="replace").splitlines()
            for line in lines[seen:]:
                progress(f"{host.name}: {line}")
            seen = len(lines)
        with contextlib.suppress(OSError), socket.create_connection(
                (host.ip, lab_image.AGENT_PORT), timeout=2):
            if agent_answers(host):
                return time.time()
        time.sleep(2)
    raise RuntimeFailure(
        f"the agent of lab host '{host.name}' did not answer within {timeout:.0f}s",
        "status log:\n" + _tail(host.path("status.log"), 10) +
        "\nserial log:\n" + _tail(host.path("serial.log")))


def down(cfg: Config, name: str, timeout: float = 60.0) -> None:
    """Power the host off (ACPI, then SIGTERM, then SIGKILL) and remove its runtime files."""
    host = _load(cfg, name)
    if host is None:
        raise NotFound(f"no lab host '{name}'")
    p = pid(host)
    if p is not None:
        with contextlib.suppress(Exception):
            from vpshost.drivers.qemu.monitor import qmp

            qmp(host.path("qmp.sock"), "system_powerdown", timeout=5)
        end = time.time() + timeout
        while time.time() < end and pid(host) is not None:
            time.sleep(1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if pid(host) is None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
            time.sleep(2)
    net.delete_tap(host.index)
    _clean_runtime(host)
    with contextlib.suppress(FileNotFoundError):
        host.path("run.json").unlink()


def status_of(host: LabHost) -> dict[str, Any]:
    p = pid(host)
    run: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        run = json.loads(host.path("run.json").read_text())
    up_ = p is not None
    return {"name": host.name, "kind": host.kind, "state": "up" if up_ else "down",
            "pid": p, "ip": host.ip, "url": host.url,
            "uptime_s": round(time.time() - run["started"], 1) if up_ and run else None,
            "agent": agent_answers(host) if up_ else False,
            "agent_ready_s": run.get("agent_ready_s") if up_ else None,
            "memory_mb": run.get("memory_mb"), "dom0_mb": run.get("dom0_mb"),
            "serial_log": str(host.path("serial.log")),
            "status_log": str(host.path("status.log")),
            "secret_file": str(host.path("secret"))}


def status(cfg: Config, kind: str | None = None, name: str | None = None
           ) -> list[dict[str, Any]]:
    hosts = [h for h in all_hosts(cfg) if (kind is None or h.kind == kind)
             and (name is None or h.name == name)]
    return [status_of(h) for h in hosts]


def register(host: LabHost) -> str | None:
    """`vps host add NAME --url URL --secret S` when that command exists; the message
    to print, or None when registration is not available yet."""
    vps = str(Path(sys.executable).with_name("vps"))
    res = runner.run([vps, "host", "add", host.name, "--url", host.url,
                      "--secret", secret(host)], timeout=60, check=False)
    if res.ok:
        return f"registered as host '{host.name}'"
    err = (res.stderr or res.stdout).strip()
    if "No such command" in err or "no such option" in err.lower():
        return None
    if "already" in err:
        # re-register, so the control plane has this boot's capabilities
        runner.run([vps, "host", "remove", host.name], timeout=60, check=False)
        res = runner.run([vps, "host", "add", host.name, "--url", host.url,
                          "--secret", secret(host)], timeout=60, check=False)
        if res.ok:
            return f"re-registered as host '{host.name}'"
        err = (res.stderr or res.stdout).strip()
    return f"registering failed: {err.splitlines()[-1] if err else res.returncode}"


def exec_in(cfg: Config, name: str, argv: list[str], timeout: float = 120.0) -> Any:
    """Run a command inside the lab host (root shell) over its exec channel: the tiny
    agent's line protocol on a virtio serial port, independent of the network."""
    from vpshost.drivers.qemu.agent import TinyAgent

    host = _load(cfg, name)
    if host is None or pid(host) is None:
        raise NotFound(f"lab host '{name}' is not up", f"vps lab xen up --name {name}")
    return TinyAgent(host.path("exec.sock")).exec(argv, timeout)


def sync_code(cfg: Config, name: str) -> None:
    """Replace the lab host's vpshost code with this working tree's and restart its
    agent (for development: no reboot, no image rebuild)."""
    import base64
    import io
    import tarfile

    import vpshost

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(Path(vpshost.__file__).parent, arcname="vpshost",
                filter=lambda t: None if "__pycache__" in t.name else t)
    data = base64.b64encode(buf.getvalue()).decode()
    lines = "\n".join(data[i:i + 76] for i in range(0, len(data), 76))
    script = ("set -e\nrm -rf /opt/vpslab/src.new && mkdir -p /opt/vpslab/src.new\n"
              f"base64 -d <<'EOF' | tar xz -C /opt/vpslab/src.new\n{lines}\nEOF\n"
              "rm -rf /opt/vpslab/src && mv /opt/vpslab/src.new /opt/vpslab/src\n"
              "systemctl restart vpslab-agent\n")
    from vpshost.drivers.qemu.agent import TinyAgent

    host = _load(cfg, name)
    if host is None or pid(host) is None:
        raise NotFound(f"lab host '{name}' is not up")
    rc, _out, err = TinyAgent(host.path("exec.sock"))._call("exec", script, 120)
    if rc != 0:
        raise RuntimeFailure(f"code sync to lab host '{name}' failed: {err.strip()}")
