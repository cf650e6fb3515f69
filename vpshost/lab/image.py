"""The lab hosts' root filesystem: one Debian image, booted as a Xen dom0 or a KVM host.

Built once per machine under ``<cache_dir>/lab/image`` in cached stages (each ends with
a marker file in the build tree, so an interrupted build resumes where it stopped):

1. ``debootstrap`` bookworm (minbase);
2. ``apt-get install`` of the hypervisor, toolstack, QEMU and Python packages;
3. a Python venv at /opt/vpshost/venv with vpshost's *dependencies* from PyPI (the
   vpshost code itself arrives on each host's config disk at boot, so a code change
   needs no image rebuild);
4. the boot-time configuration (units and scripts below; always rewritten);
5. ``mkfs.ext4 -d`` into a raw file, converted to a read-only qcow2 base that every
   lab host overlays.

Next to the base: ``vmlinuz`` and ``initrd.img`` from the chroot's /boot (the dom0 and
KVM-host kernel) and ``xen.elf``, Debian's ``xen-4.17-amd64.gz`` gunzipped so QEMU's
multiboot loader can boot it with ``-kernel``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from vpshost import runner
from vpshost.config import Config
from vpshost.errors import RuntimeFailure

Progress = Callable[[str], None]
IMAGE_VERSION = 4  # bump when the configuration stage changes
ROOTFS_MB = 4096
MIRROR = "http://deb.debian.org/debian"
PACKAGES = [
    # Xen dom0: hypervisor, toolstack, QEMU as the qdisk/console backend
    "xen-hypervisor-4.17-amd64", "xen-utils-4.17", "qemu-system-xen",
    # KVM host: QEMU with KVM
    "qemu-system-x86", "qemu-utils",
    # boot and base system
    "linux-image-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus", "kmod",
    "iproute2", "bridge-utils", "nftables", "iputils-ping", "procps", "e2fsprogs",
    "busybox-static", "socat", "ca-certificates", "less",
    "python3", "python3-venv", "python3-pip",
]
AGENT_PORT = 8440
CONFIG_LABEL = "vpslabcfg"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
STATUS_PORT = "vpslab.status"
EXEC_PORT = "vpslab.exec"

# Runs once at boot (vpslab.service): mounts the config disk, sets the address, loads
# KVM or waits for the Xen daemons, seeds vpshost's image cache. Every line it prints
# goes to the virtio serial port the host records as status.log (the console is
# useless for this: a getty may own it).
BOOT_SCRIPT = r"""#!/bin/sh
# vpshost lab host: boot-time setup.
CFG=/run/vpslab/cfg
STATUS=/dev/virtio-ports/vpslab.status
log() {
  echo "vpslab: $*"
  [ -e "$STATUS" ] && echo "$(cut -d' ' -f1 /proc/uptime) $*" > "$STATUS"
}
for i in $(seq 1 50); do [ -e "$STATUS" ] && break; sleep 0.1; done
log "boot script started"
mkdir -p "$CFG"
if ! mountpoint -q "$CFG"; then
  mount -o ro LABEL=vpslabcfg "$CFG" 2>/dev/null || mount -o ro /dev/vdb "$CFG" \
    || log "ERROR: no config disk"
fi
. "$CFG/lab.env"
hostname "$LAB_NAME"; echo "$LAB_NAME" > /etc/hostname
ip link set lo up
DEV=eth0
ip link set "$DEV" up
ip addr replace "$LAB_IP/$LAB_PREFIXLEN" dev "$DEV"
[ -n "$LAB_GW" ] && ip route replace default via "$LAB_GW"
log "network $DEV $LAB_IP/$LAB_PREFIXLEN"
sysctl -qw net.ipv4.ip_forward=1
if grep -q control_d /proc/xen/capabilities 2>/dev/null; then
  for i in $(seq 1 120); do
    xl info >/dev/null 2>&1 && break
    sleep 1
  done
  if xl info >/dev/null 2>&1; then
    INFO=$(xl info | grep -E '^(xen_version|total_memory|free_memory)' | tr -s ' ')
    log "xen dom0 ready: $(echo "$INFO" | tr '\n' ' ')"
  else
    log "ERROR: xl info fails: $(xl info 2>&1 | tail -n1)"
  fi
else
  modprobe kvm_amd 2>/dev/null || modprobe kvm_intel 2>/dev/null
  if [ -c /dev/kvm ]; then log "kvm ready: $(grep -c svm /proc/cpuinfo) cpus with svm"
  else log "ERROR: no /dev/kvm"; fi
fi
mkdir -p /var/cache/vpshost/images /var/lib/vpshost
if [ -d "$CFG/images" ]; then
  for d in "$CFG"/images/*/*; do
    [ -d "$d" ] || continue
    rel=${d#$CFG/images/}
    if [ ! -e "/var/cache/vpshost/images/$rel/meta.json" ]; then
      mkdir -p "/var/cache/vpshost/images/$(dirname "$rel")"
      rm -rf "/var/cache/vpshost/images/$rel"
      cp -a "$d" "/var/cache/vpshost/images/$rel" && log "seeded image $rel"
    fi
  done
fi
rm -rf /opt/vpslab/src && mkdir -p /opt/vpslab && cp -a "$CFG/src" /opt/vpslab/src
log "boot script done"
"""

BOOT_UNIT = """[Unit]
Description=vpshost lab host setup
After=local-fs.target systemd-udev-settle.service xen.service xenstored.service
Wants=systemd-udev-settle.service
Before=vpslab-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vpslab-boot
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

AGENT_SCRIPT = r"""#!/bin/sh
# vpshost lab host: the agent, with the vpshost code from the config disk.
CFG=/run/vpslab/cfg
. "$CFG/lab.env"
STATUS=/dev/virtio-ports/vpslab.status
export PYTHONPATH=/opt/vpslab/src PYTHONDONTWRITEBYTECODE=1
export PATH=/opt/vpshost/bin:/usr/sbin:/usr/bin:/sbin:/bin
UP=$(cut -d' ' -f1 /proc/uptime)
[ -e "$STATUS" ] && echo "$UP agent starting on $LAB_IP:$LAB_PORT" > "$STATUS"
exec /opt/vpshost/venv/bin/python -c 'import sys, pathlib, vpshost.agent.server as a
a.run_agent(sys.argv[1], pathlib.Path(sys.argv[2]))' "0.0.0.0:$LAB_PORT" "$CFG/secret"
"""

AGENT_UNIT = """[Unit]
Description=vpshost agent (lab host)
After=vpslab.service network.target
Requires=vpslab.service

[Service]
ExecStart=/usr/local/sbin/vpslab-agent
Restart=always
RestartSec=1
# The QEMU device models xl starts for guests (qdisk, channels) are children of the
# agent: a restart of the agent must not take them down with it.
KillMode=process
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
"""

EXEC_UNIT = """[Unit]
Description=vpshost lab exec channel (the tiny agent's protocol on a virtio port)

[Service]
ExecStart=/usr/local/sbin/vpslab-exec
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
"""

# `vps` inside the lab host, with the code from the config disk.
VPS_WRAPPER = """#!/bin/sh
export PYTHONPATH=/opt/vpslab/src PYTHONDONTWRITEBYTECODE=1
exec /opt/vpshost/venv/bin/python -m vpshost.cli.main "$@"
"""


def _noop(_msg: str) -> None:
    pass


def lab_dir(cfg: Config) -> Path:
    return cfg.cache_dir / "lab"


def image_dir(cfg: Config) -> Path:
    return lab_dir(cfg) / "image"


def meta(cfg: Config) -> dict[str, Any] | None:
    f = image_dir(cfg) / "meta.json"
    if not f.exists():
        return None
    data: dict[str, Any] = json.loads(f.read_text())
    data["dir"] = str(f.parent)
    return data


def dependencies() -> list[str]:
    """vpshost's runtime requirements (no extras), as pip arguments."""
    reqs = metadata.requires("vpshost") or []
    return sorted(r.split(";")[0].strip() for r in reqs if "extra ==" not in r)


def _deps_key() -> str:
    return hashlib.sha256("\n".join(dependencies()).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(cfg: Config) -> Iterator[None]:
    root = lab_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".image.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys, /dev for package scripts; always unmounted again."""
    mounted: list[Path] = []
    try:
        for src, dst, how in (("proc", "proc", ["-t", "proc"]), ("sysfs", "sys", ["-t", "sysfs"]),
                              ("/dev", "dev", ["--bind"]), ("devpts", "dev/pts", ["-t", "devpts"])):
            target = root / dst
            target.mkdir(parents=True, exist_ok=True)
            runner.run(["mount", *how, src, str(target)], timeout=30)
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            runner.run(["umount", "-l", str(target)], timeout=30, check=False)


def _chroot(root: Path, argv: list[str], timeout: float) -> runner.Result:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8", "HOME": "/root"}
    return runner.run(["chroot", str(root), *argv], timeout=timeout, env=env)


def build(cfg: Config, progress: Progress = _noop, force: bool = False) -> dict[str, Any]:
    """Build the lab image unless it is cached and current; return its meta."""
    with _locked(cfg):
        m = meta(cfg)
        if m and not force and m.get("version") == IMAGE_VERSION and \
                m.get("deps") == _deps_key():
            return m
        _build(cfg, progress)
    m = meta(cfg)
    assert m is not None
    return m


def _stage(root: Path, name: str) -> Path:
    return root / f".vpslab-stage-{name}"


def _build(cfg: Config, progress: Progress) -> None:
    t0 = time.monotonic()
    work = lab_dir(cfg) / "build"
    root = work / "rootfs"
    work.mkdir(parents=True, exist_ok=True)
    if not _stage(root, "debootstrap").exists():
        if root.exists():
            shutil.rmtree(root)
        progress("debootstrap bookworm (minbase; a few minutes)")
        runner.run(["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
                   timeout=3600)
        _stage(root, "debootstrap").write_text("ok\n")
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    with _chroot_mounts(root):
        if not _stage(root, "packages").exists():
            progress(f"apt-get install {len(PACKAGES)} packages in the chroot")
            (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
            (root / "usr/sbin/policy-rc.d").chmod(0o755)
            _chroot(root, ["apt-get", "update"], timeout=900)
            _chroot(root, ["apt-get", "install", "-y", "--no-install-recommends",
                           *PACKAGES], timeout=3600)
            _chroot(root, ["apt-get", "clean"], timeout=300)
            (root / "usr/sbin/policy-rc.d").unlink()
            _stage(root, "packages").write_text("ok\n")
        deps = _deps_key()
        venv_stage = _stage(root, "venv")
        if not venv_stage.exists() or venv_stage.read_text().strip() != deps:
            progress("python venv with vpshost's dependencies (pip, from PyPI)")
            shutil.rmtree(root / "opt/vpshost/venv", ignore_errors=True)
            _chroot(root, ["python3", "-m", "venv", "/opt/vpshost/venv"], timeout=300)
            # this machine's CA bundle: a TLS-inspecting proxy may sit between it and PyPI
            ca = root / "opt/vpshost/host-ca.crt"
            shutil.copyfile(HOST_CA, ca)
            try:
                _chroot(root, ["/opt/vpshost/venv/bin/pip", "install", "-q", "--cert",
                               "/opt/vpshost/host-ca.crt", "--disable-pip-version-check",
                               *dependencies()], timeout=1800)
            finally:
                ca.unlink()
            venv_stage.write_text(deps + "\n")
    progress("configuring the lab host")
    _configure(root)
    out = image_dir(cfg)
    staging = lab_dir(cfg) / ".image-new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        boot = root / "boot"
        vmlinuz = sorted(boot.glob("vmlinuz-*"))[-1]
        initrd = sorted(boot.glob("initrd.img-*"))[-1]
        xen_gz = sorted(boot.glob("xen-4.17*.gz"))[-1]
        shutil.copyfile(vmlinuz, staging / "vmlinuz")
        shutil.copyfile(initrd, staging / "initrd.img")
        with gzip.open(xen_gz) as src, open(staging / "xen.elf", "wb") as dst:
            shutil.copyfileobj(src, dst)
        progress(f"writing the {ROOTFS_MB} MiB ext4 root filesystem")
        raw = staging / "rootfs.raw"
        with open(raw, "wb") as fh:
            fh.truncate(ROOTFS_MB * 1024 * 1024)
        runner.run(["mkfs.ext4", "-q", "-F", "-L", "vpslabroot", "-d", str(root), str(raw)],
                   timeout=1800)
        runner.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(staging / "rootfs.qcow2")], timeout=1800)
        raw.unlink()
        (staging / "rootfs.qcow2").chmod(0o444)
        data = {"version": IMAGE_VERSION, "deps": _deps_key(),
                "kernel": vmlinuz.name.removeprefix("vmlinuz-"), "xen": xen_gz.name,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "build_seconds": round(time.monotonic() - t0, 1)}
        (staging / "meta.json").write_text(json.dumps(data, indent=2) + "\n")
        if out.exists():
            # running hosts keep their overlays' base open: move it aside, not over
            old = lab_dir(cfg) / f".image-old-{int(time.time())}"
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"lab image ready ({time.monotonic() - t0:.0f}s)")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _enable(root: Path, unit: str, target: str = "multi-user.target") -> None:
    wants = root / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"/etc/systemd/system/{unit}")


def _mask(root: Path, unit: str) -> None:
    link = root / "etc/systemd/system" / unit
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("/dev/null")


def _configure(root: Path) -> None:
    """The boot-time configuration; cheap, so always rewritten."""
    _write(root / "etc/fstab", "LABEL=vpslabroot / ext4 defaults,errors=remount-ro 0 1\n")
    _write(root / "etc/hostname", "vpslab\n")
    _write(root / "etc/hosts", "127.0.0.1 localhost\n")
    _write(root / "usr/local/sbin/vpslab-boot", BOOT_SCRIPT, 0o755)
    _write(root / "usr/local/sbin/vpslab-agent", AGENT_SCRIPT, 0o755)
    _write(root / "usr/local/bin/vps", VPS_WRAPPER, 0o755)
    from vpshost.host.vmimages import TINY_AGENT

    _write(root / "usr/local/sbin/vpslab-exec",
           TINY_AGENT.replace('"vpshost.agent"', f'"{EXEC_PORT}"'), 0o755)
    _write(root / "etc/systemd/system/vpslab-exec.service", EXEC_UNIT)
    _enable(root, "vpslab-exec.service", "sysinit.target")
    _write(root / "etc/systemd/system/vpslab.service", BOOT_UNIT)
    _write(root / "etc/systemd/system/vpslab-agent.service", AGENT_UNIT)
    _enable(root, "vpslab.service")
    _enable(root, "vpslab-agent.service")
    # A getty on the console swallows boot output (shared/ENVIRONMENT.md): none at all.
    for unit in ("serial-getty@hvc0.service", "serial-getty@ttyS0.service",
                 "getty@tty1.service", "console-getty.service",
                 # not needed in a lab and slow under TCG
                 "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer",
                 "e2scrub_all.timer", "fstrim.timer",
                 # Debian's xen-tools/xendomains would try to save guests at shutdown
                 "xendomains.service"):
        _mask(root, unit)
    # journald on the console too, so the serial log shows unit failures
    _write(root / "etc/systemd/journald.conf.d/vpslab.conf",
           "[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\nStorage=volatile\n")
    _write(root / "etc/modules-load.d/vpslab.conf", "xen-netback\nxen-blkback\nxen-gntdev\n"
           "xen-evtchn\nxen-gntalloc\ntun\nbridge\n")
    with contextlib.suppress(RuntimeFailure):
        runner.run(["chroot", str(root), "passwd", "-d", "root"], timeout=60)
