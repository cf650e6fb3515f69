"""Base images for `vm` guests: built once per machine, cached, shared read-only.

Each image lives in ``cfg.images_dir / "vm" / <name>`` and is complete only when its
``meta.json`` exists (written last, so an interrupted build is never mistaken for a
finished one). ``meta.json`` says how the image boots:

- ``kind: "kernel"``: direct kernel boot; ``vmlinuz`` and ``initrd.img`` sit next to
  ``disk.qcow2`` and ``append`` holds the image's own kernel arguments.
- ``kind: "disk"``: the disk has its own bootloader; SeaBIOS boots it.

``agent`` names the exec channel: ``"tiny"`` (the line protocol of the tiny image's
busybox agent, see docs/vm.md), ``"qga"`` (qemu-guest-agent) or ``"none"``.

Network settings reach kernel-boot guests on the kernel command line
(``vps.ip=10.88.0.5/22 vps.gw=10.88.0.1 vps.hostname=web1``), read by the tiny init and
by the debian-12 image's ``vpshost-net`` service.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import lzma
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vpshost import runner
from vpshost.config import Config
from vpshost.drivers.bootargs import PARSE_VPS_ARGS
from vpshost.errors import CommandError, NotFound, RuntimeFailure, UsageError

Progress = Callable[[str], None]

BUILTIN = {
    "tiny": "Debian kernel + busybox initramfs, boots to a shell in seconds",
    "debian-12": "debootstrap Debian 12 with openssh-server and qemu-guest-agent",
}
TINY_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon", "virtio_rng",
                "virtio_console", "ext4", "crc32c_generic", "button", "evdev"]
TINY_VERSION = 3  # bump when the init or agent changes: the boot files are rebuilt
TINY_DISK_MB = 1024  # the empty ext4 data disk of `tiny`; overlays may be larger
DEBIAN_DISK_MB = 2048
AGENT_PORT_TINY = "vpshost.agent"
AGENT_PORT_QGA = "org.qemu.guest_agent.0"


def _noop(_msg: str) -> None:
    pass


def vm_images_dir(cfg: Config) -> Path:
    return cfg.images_dir / "vm"


def image_dir(cfg: Config, name: str) -> Path:
    return vm_images_dir(cfg) / name


def meta(cfg: Config, name: str) -> dict[str, Any] | None:
    """The image's boot description, or None when it is not built."""
    file = image_dir(cfg, name) / "meta.json"
    if not file.exists():
        return None
    data: dict[str, Any] = json.loads(file.read_text())
    data["dir"] = str(file.parent)
    return data


def base_path(cfg: Config, name: str) -> Path | None:
    """The read-only qcow2 base of a built image, or None."""
    m = meta(cfg, name)
    return Path(m["dir"]) / m["disk"] if m else None


def list_vm_images(cfg: Config) -> list[dict[str, Any]]:
    """Built-in images (built or not) and imported ones."""
    names = dict.fromkeys(BUILTIN)
    root = vm_images_dir(cfg)
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "meta.json").exists() and not d.name.startswith("_"):
                names.setdefault(d.name)
    out = []
    for name in names:
        m = meta(cfg, name)
        size = 0
        if m:
            size = sum(f.stat().st_size for f in Path(m["dir"]).iterdir() if f.is_file())
        out.append({"name": name, "kind": m["kind"] if m else "kernel",
                    "built": m is not None, "size": size,
                    "path": str(Path(m["dir"]) / m["disk"]) if m else "",
                    "source": m.get("source", "") if m else BUILTIN.get(name, "")})
    return out


def build(cfg: Config, name: str, progress: Progress = _noop) -> Path:
    """Build a built-in image unless cached; return its base disk."""
    if name not in BUILTIN:
        have = base_path(cfg, name)
        if have:
            return have
        raise NotFound(f"unknown vm image '{name}'",
                       f"built-in images: {', '.join(BUILTIN)}; or `vps image import FILE`")
    with _locked(cfg, name):
        have = base_path(cfg, name)
        m = meta(cfg, name)
        if have and m and name == "tiny" and m.get("version") != TINY_VERSION:
            _refresh_tiny(cfg, Path(m["dir"]), m, progress)
        if have:
            return have
        if name == "tiny":
            _build_tiny(cfg, progress)
        else:
            _build_debian(cfg, progress)
    found = base_path(cfg, name)
    assert found is not None
    return found


@contextlib.contextmanager
def _locked(cfg: Config, name: str) -> Iterator[None]:
    """One build per image per machine, even across processes."""
    root = vm_images_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _staging(cfg: Config, name: str) -> Iterator[Path]:
    """A scratch dir renamed into place on success, removed on failure."""
    root = vm_images_dir(cfg)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=root))
    tmp.chmod(0o755)
    try:
        yield tmp
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_meta(d: Path, data: dict[str, Any]) -> None:
    tmp = d / "meta.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.rename(d / "meta.json")


# ---------------------------------------------------------------- the Debian kernel

def kernel_version() -> str:
    """The ABI name the `linux-image-amd64` metapackage points at, e.g. 6.1.0-56-amd64."""
    res = runner.run(["apt-cache", "depends", "linux-image-amd64"], timeout=60)
    m = re.search(r"Depends:\s*linux-image-(\S+-amd64)\b", res.stdout)
    if not m:
        raise RuntimeFailure("cannot resolve the Debian kernel version from "
                             "`apt-cache depends linux-image-amd64`",
                             "run `apt-get update` first")
    return m.group(1)


def kernel_tree(cfg: Config, progress: Progress = _noop) -> Path:
    """The extracted Debian kernel package (cached): has boot/ and lib/modules/."""
    ver = kernel_version()
    root = vm_images_dir(cfg) / "_kernel"
    dest = root / ver
    if (dest / ".done").exists():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with _locked(cfg, f"kernel-{ver}"):
        if (dest / ".done").exists():
            return dest
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            progress(f"downloading linux-image-{ver}-unsigned")
            runner.run(["apt-get", "download", f"linux-image-{ver}-unsigned"],
                       cwd=tmp, timeout=900)
            deb = next(Path(tmp).glob("*.deb"))
            progress(f"extracting {deb.name}")
            tree = Path(tmp) / "tree"
            runner.run(["dpkg-deb", "-x", str(deb), str(tree)], timeout=300)
            if dest.exists():
                shutil.rmtree(dest)
            tree.rename(dest)
        (dest / ".done").write_text(ver + "\n")
    return dest


def _kernel_files(tree: Path) -> tuple[Path, Path]:
    vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
    moddir = next((tree / "lib" / "modules").iterdir())
    return vmlinuz, moddir


def resolve_modules(moddir: Path, wanted: list[str]) -> list[Path]:
    """Module files for ``wanted`` and their dependencies, in load order.

    The package ships no modules.dep (depmod runs at install time), so dependencies
    come from each module's own modinfo. Built-in names are skipped; an unknown name
    is an error.
    """
    paths = {_modname(p.name): p for p in moddir.rglob("*.ko*")}
    builtin = {_modname(x) for x in (moddir / "modules.builtin").read_text().split()}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = paths[name]
        if path in order:
            return
        for dep in _depends(path):
            if dep in paths:
                visit(dep)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in paths:
            visit(key)
        elif key not in builtin:
            raise RuntimeFailure(f"kernel module {name} not found in {moddir}")
    return order


def _depends(path: Path) -> list[str]:
    """The module's ``depends=`` from its .modinfo strings (no depmod needed)."""
    m = re.search(rb"\0depends=([^\0]*)\0", _module_bytes(path))
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",")]


def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko")[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return runner.run(["zstd", "-dc", str(path)], timeout=60).stdout.encode("latin-1")
    return data


# ---------------------------------------------------------------- cpio (newc)

class Cpio:
    """A minimal writer of the newc cpio format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(namez), 0))
        self._ino += 1
        blob = hdr.encode() + namez
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self._chunks.append(blob)

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def gz(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return gzip.compress(b"".join(self._chunks), compresslevel=6)


# ---------------------------------------------------------------- tiny

TINY_INIT = r"""#!/bin/sh
# vpshost tiny init: modules, network from the kernel command line, data disk,
# ACPI power button, exec agent on a virtio-serial port, shell on the console.
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
if ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up
  [ -n "$IP" ] && ip addr add "$IP" dev eth0
  [ -n "$GW" ] && ip route add default via "$GW"
  [ -n "$IP6" ] && ip -6 addr add "$IP6" dev eth0
  [ -n "$GW6" ] && ip -6 route add default via "$GW6"
fi
if mount -t ext4 /dev/vda /data 2>/dev/null; then echo "vpshost: data disk on /data"; fi
acpid -c /etc/acpi -l /dev/null
/sbin/vps-agent &
echo "vpshost: userspace up, ip=$IP hostname=$HN"
while true; do setsid cttyhack /bin/sh -l; done
"""

TINY_POWEROFF = """#!/bin/sh
sync
umount /data 2>/dev/null
poweroff -f
"""

# One request per line: "<id> <verb> <timeout> <base64 arg>"; one reply per line:
# "<id> <rc> b<base64 stdout> b<base64 stderr>". Verbs: ping, exec (arg: a shell
# command line), poweroff. The port reads EOF while no host is connected: poll then.
TINY_AGENT = r"""#!/bin/sh
PORT=
while [ -z "$PORT" ]; do
  for n in /sys/class/virtio-ports/*/name; do
    [ "$(cat "$n" 2>/dev/null)" = "vpshost.agent" ] || continue
    PORT=/dev/$(basename "$(dirname "$n")")
  done
  [ -z "$PORT" ] && sleep 0.1
done
exec 3<>"$PORT"
while true; do
  while read -r id verb tmo arg <&3; do
    case "$verb" in
      ping) echo "$id 0 b b" >&3 ;;
      exec)
        echo "$arg" | base64 -d > /tmp/.agent.cmd
        timeout "$tmo" sh /tmp/.agent.cmd </dev/null >/tmp/.agent.out 2>/tmp/.agent.err
        rc=$?
        echo "$id $rc b$(base64 -w0 </tmp/.agent.out) b$(base64 -w0 </tmp/.agent.err)" >&3
        ;;
      poweroff) echo "$id 0 b b" >&3; /etc/acpi/PWRF/00000080 & ;;
      *) echo "$id 127 b b$(echo "unknown verb $verb" | base64 -w0)" >&3 ;;
    esac
  done
  sleep 0.3
done
"""


def _tiny_initramfs(moddir: Path) -> bytes:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeFailure("/bin/busybox not found", "apt-get install busybox-static")
    applets = runner.run([str(busybox), "--list-full"], timeout=30).stdout.split()
    c = Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp",
              "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules", "data", "root"):
        c.dir(d)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        if applet != "bin/busybox":
            c.symlink(applet, "/bin/busybox")
    mods = resolve_modules(moddir, TINY_MODULES)
    for m in mods:
        c.file(f"lib/modules/{_modname(m.name)}.ko", _module_bytes(m))
    c.file("lib/modules/order", "".join(f"{_modname(m.name)}.ko\n" for m in mods).encode())
    c.file("init", TINY_INIT.encode(), 0o755)
    c.file("sbin/vps-agent", TINY_AGENT.encode(), 0o755)
    c.file("etc/acpi/PWRF/00000080", TINY_POWEROFF.encode(), 0o755)
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\n")
    c.file("etc/profile", b"export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nPS1='\\h:\\w# '\n")
    return c.gz()


def tiny_boot_files(cfg: Config, dest: Path, progress: Progress = _noop) -> tuple[Path, Path]:
    """Write the tiny kernel and initramfs into ``dest`` (also used for test disks)."""
    tree = kernel_tree(cfg, progress)
    vmlinuz, moddir = _kernel_files(tree)
    progress("building the busybox initramfs")
    shutil.copyfile(vmlinuz, dest / "vmlinuz")
    (dest / "initrd.img").write_bytes(_tiny_initramfs(moddir))
    return dest / "vmlinuz", dest / "initrd.img"


def _refresh_tiny(cfg: Config, d: Path, old: dict[str, Any], progress: Progress) -> None:
    """New kernel/initramfs for an existing tiny image. The base disk stays: overlays
    of existing VMs point at it."""
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        kernel, initrd = tiny_boot_files(cfg, Path(tmp), progress)
        kernel.rename(d / "vmlinuz")
        initrd.rename(d / "initrd.img")
    old = {k: v for k, v in old.items() if k != "dir"}
    _write_meta(d, {**old, "version": TINY_VERSION})


def _build_tiny(cfg: Config, progress: Progress) -> None:
    with _staging(cfg, "tiny") as d:
        tiny_boot_files(cfg, d, progress)
        progress("making the empty ext4 data disk")
        raw = d / "disk.raw"
        with open(raw, "wb") as fh:
            fh.truncate(TINY_DISK_MB * 1024 * 1024)
        runner.run(["mkfs.ext4", "-q", "-F", "-L", "data", str(raw)], timeout=120)
        runner.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(d / "disk.qcow2")], timeout=300)
        raw.unlink()
        (d / "disk.qcow2").chmod(0o444)
        _write_meta(d, {"name": "tiny", "kind": "kernel", "agent": "tiny",
                        "version": TINY_VERSION,
                        "kernel": "vmlinuz", "initrd": "initrd.img", "disk": "disk.qcow2",
                        "append": "console=ttyS0 panic=-1 quiet",
                        "source": f"linux-image-{kernel_version()} + busybox-static"})
    progress("tiny image ready")


# ---------------------------------------------------------------- debian-12

# dbus: without it systemd-logind is inactive, and neither the ACPI power button nor
# qemu-ga's guest-shutdown (`shutdown -P +0`) can power the guest off.
DEBIAN_PACKAGES = ["linux-image-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus",
                   "openssh-server", "qemu-guest-agent", "iproute2", "ifupdown"]

DEBIAN_NET_SCRIPT = r"""#!/bin/sh
# vpshost: configure eth0 and the hostname from vps.* kernel arguments.
IP=; GW=; HN=; IP6=; GW6=
""" + PARSE_VPS_ARGS + r"""[ -n "$HN" ] && hostname "$HN" && echo "$HN" > /etc/hostname
DEV=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
[ -z "$DEV" ] && exit 0
ip link set "$DEV" up
[ -n "$IP" ] && ip addr replace "$IP" dev "$DEV"
[ -n "$GW" ] && ip route replace default via "$GW"
[ -n "$IP6" ] && ip -6 addr replace "$IP6" dev "$DEV"
[ -n "$GW6" ] && ip -6 route replace default via "$GW6"
exit 0
"""

DEBIAN_NET_UNIT = """[Unit]
Description=vpshost network from the kernel command line
Before=network-online.target ssh.service
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vpshost-net

[Install]
WantedBy=multi-user.target
"""


def _build_debian(cfg: Config, progress: Progress) -> None:
    with _staging(cfg, "debian-12") as d:
        root = d / "rootfs"
        progress("debootstrap bookworm (several minutes)")
        runner.run(["debootstrap", "--variant=minbase",
                    "--include=" + ",".join(DEBIAN_PACKAGES), "bookworm", str(root),
                    "http://deb.debian.org/debian"], timeout=3600)
        progress("configuring the guest")
        (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
        (root / "etc/hostname").write_text("debian\n")
        net = root / "usr/local/sbin/vpshost-net"
        net.write_text(DEBIAN_NET_SCRIPT)
        net.chmod(0o755)
        (root / "etc/systemd/system/vpshost-net.service").write_text(DEBIAN_NET_UNIT)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "vpshost-net.service"
        if not link.exists():
            link.symlink_to("/etc/systemd/system/vpshost-net.service")
        runner.run(["chroot", str(root), "passwd", "-d", "root"], timeout=60)
        runner.run(["chroot", str(root), "apt-get", "clean"], timeout=120)
        progress("extracting the guest's kernel and initrd")
        boot = root / "boot"
        shutil.copyfile(next(boot.glob("vmlinuz-*")), d / "vmlinuz")
        shutil.copyfile(next(boot.glob("initrd.img-*")), d / "initrd.img")
        progress("writing the ext4 root filesystem")
        raw = d / "disk.raw"
        with open(raw, "wb") as fh:
            fh.truncate(DEBIAN_DISK_MB * 1024 * 1024)
        runner.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw)],
                   timeout=900)
        shutil.rmtree(root)
        runner.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(d / "disk.qcow2")], timeout=900)
        raw.unlink()
        (d / "disk.qcow2").chmod(0o444)
        _write_meta(d, {"name": "debian-12", "kind": "kernel", "agent": "qga",
                        "kernel": "vmlinuz", "initrd": "initrd.img", "disk": "disk.qcow2",
                        "append": "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0",
                        "source": "debootstrap bookworm"})
    progress("debian-12 image ready")


# ---------------------------------------------------------------- import

IMPORT_FORMATS = ("vmdk", "qcow2", "raw", "vpc", "vhdx", "vdi")


def import_image(cfg: Config, file: Path, name: str, progress: Progress = _noop) -> Path:
    """Register a VMware VMDK, OVA/OVF, raw or qcow2 disk as a bootable base image.

    The disk keeps its own bootloader and boots from SeaBIOS. A broken, truncated or
    unsupported file is refused with a UsageError naming the reason; nothing is left.
    """
    from vpshost.models import check_name

    check_name(name)
    if name in BUILTIN:
        raise UsageError(f"'{name}' is a built-in image name", "choose another --name")
    file = Path(file)
    if not file.is_file():
        raise NotFound(f"file {file} not found")
    if base_path(cfg, name):
        raise UsageError(f"vm image '{name}' already exists", "choose another --name")
    with _locked(cfg, name), tempfile.TemporaryDirectory(dir=_ensure(cfg)) as tmp:
        disk, source = _unpack(file, Path(tmp), progress)
        fmt = _validate(disk)
        with _staging(cfg, name) as d:
            progress(f"converting {fmt} to qcow2")
            try:
                runner.run(["qemu-img", "convert", "-p", "-f", fmt, "-O", "qcow2",
                            str(disk), str(d / "disk.qcow2")], timeout=3600)
            except CommandError as exc:
                # conversion reads every block: truncation shows up here at the latest
                raise UsageError(f"{file.name}: the {fmt} image is damaged or truncated: "
                                 f"{_last(exc.stderr)}") from None
            (d / "disk.qcow2").chmod(0o444)
            _write_meta(d, {"name": name, "kind": "disk", "agent": "qga",
                            "disk": "disk.qcow2", "source": source, "format": fmt})
    progress(f"imported {file.name} as '{name}'")
    found = base_path(cfg, name)
    assert found is not None
    return found


def _ensure(cfg: Config) -> Path:
    root = vm_images_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _unpack(file: Path, tmp: Path, progress: Progress) -> tuple[Path, str]:
    """The disk inside an OVA (tar of .ovf + disks) or OVF, or the file itself."""
    suffix = file.suffix.lower()
    if suffix == ".ova" or (suffix not in (".vmdk", ".qcow2", ".img", ".raw")
                            and tarfile.is_tarfile(file)):
        progress("unpacking the OVA")
        try:
            with tarfile.open(file) as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                disks = [m for m in members if m.name.lower().endswith(".vmdk")]
                if not any(m.name.lower().endswith(".ovf") for m in members) or not disks:
                    raise UsageError(f"{file.name}: an OVA must hold an .ovf and a .vmdk")
                if len(disks) > 1:
                    raise UsageError(f"{file.name}: holds {len(disks)} disks",
                                     "only single-disk appliances are supported")
                tar.extract(disks[0], tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UsageError(f"{file.name}: not a readable OVA archive: {exc}") from None
        return tmp / disks[0].name, f"ova:{file.name}"
    if suffix == ".ovf":
        text = file.read_text(errors="replace")
        refs = re.findall(r'ovf:href="([^"]+)"', text)
        found = [file.parent / r for r in refs if r.lower().endswith(".vmdk")]
        if len(found) != 1 or not found[0].is_file():
            raise UsageError(f"{file.name}: expected exactly one existing .vmdk next to "
                             f"the OVF, found references {refs}")
        return found[0], f"ovf:{file.name}"
    return file, file.name


def _validate(disk: Path) -> str:
    """The disk's format after `qemu-img info` and `qemu-img check` accept it."""
    try:
        res = runner.run(["qemu-img", "info", "--output", "json", str(disk)], timeout=60)
    except CommandError as exc:
        raise UsageError(f"{disk.name}: not a disk image qemu-img can read: "
                         f"{_last(exc.stderr)}") from None
    info = json.loads(res.stdout)
    fmt = str(info.get("format", ""))
    if fmt not in IMPORT_FORMATS:
        raise UsageError(f"{disk.name}: unsupported image format '{fmt}'",
                         f"supported: {', '.join(IMPORT_FORMATS)}")
    if fmt == "raw" and info.get("virtual-size", 0) < 512 * 2:
        raise UsageError(f"{disk.name}: too small to be a bootable disk")
    if fmt == "raw":
        with open(disk, "rb") as fh:
            fh.seek(510)
            if fh.read(2) != b"\x55\xaa":
                raise UsageError(f"{disk.name}: raw file has no boot sector (0x55AA)",
                                 "not a bootable disk image")
    if fmt in ("qcow2", "vmdk", "vdi", "vhdx"):
        chk = runner.run(["qemu-img", "check", "-f", fmt, str(disk)], check=False,
                         timeout=600)
        # 0 clean, 3 leaked clusters only (harmless); 1/2 mean unreadable or corrupt
        if chk.returncode not in (0, 3) and "not support" not in chk.stderr:
            raise UsageError(f"{disk.name}: the {fmt} image is damaged or truncated: "
                             f"{_last(chk.stderr or chk.stdout)}")
    return fmt


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no detail"


def remove_image(cfg: Config, name: str) -> None:
    """Delete an imported or built image from the cache (guests using it break)."""
    d = image_dir(cfg, name)
    if not d.exists():
        raise NotFound(f"vm image '{name}' not found")
    shutil.rmtree(d)

