"""Container images: root filesystem trees built locally and cached.

Each image is built once into ``<cache>/images/container/<name>/rootfs`` (owned by
host root) and, for unprivileged containers, copied once more with every owner shifted
by the id-map base, so a per-container disk is one ``mkfs.ext4 -d`` away. Builds go
into a temporary directory renamed into place at the end: an interrupted build leaves
nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vpshost.config import Config
from vpshost.errors import NotFound
from vpshost.runner import run

Progress = Callable[[str], None]
DEBIAN_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class ContainerImage:
    name: str
    description: str
    halt_signal: str  # what the image's init takes as "power off"
    build: Callable[[Path, Progress], None]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _build_busybox(root: Path, progress: Progress) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise NotFound("busybox is not installed", "run `make demo` or apt-get install "
                       "busybox-static")
    for d in ("bin", "sbin", "etc/init.d", "proc", "sys", "dev", "tmp", "root", "run",
              "var/log", "home", "mnt", "usr/bin", "usr/sbin", "lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin/busybox")
    applets = run([busybox, "--list-full"]).stdout.split()
    progress(f"linking {len(applets)} busybox applets")
    for applet in applets:
        link = root / applet
        if not link.exists() and applet != "bin/busybox":
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
           "nobody:x:65534:65534:nobody:/:/bin/false\n")
    _write(root / "etc/group", "root:x:0:\nnogroup:x:65534:\n")
    _write(root / "etc/shadow", "root:*:19000:0:99999:7:::\n", 0o600)
    _write(root / "etc/fstab", "")
    _write(root / "etc/hosts", "127.0.0.1 localhost\n")
    _write(root / "etc/resolv.conf", "nameserver 1.1.1.1\n")
    _write(root / "etc/init.d/rcS", "#!/bin/sh\n", 0o755)
    # tty1 is where `vps console` (lxc-console) lands; SIGUSR2 is busybox init's poweroff.
    _write(root / "etc/inittab", "::sysinit:/etc/init.d/rcS\n"
           "tty1::respawn:-/bin/sh\n"
           "::shutdown:/bin/umount -a -r\n")


def _build_debian(root: Path, progress: Progress) -> None:
    progress("debootstrap bookworm (a few minutes; cached afterwards)")
    packages = "sysvinit-core,procps,iproute2,iputils-ping,netbase,less,ca-certificates"
    run(["debootstrap", "--variant=minbase", f"--include={packages}",
         "bookworm", str(root), DEBIAN_MIRROR], timeout=1800)
    progress("configuring init for a container")
    inittab = (
        "id:2:initdefault:\n"
        "si::sysinit:/etc/init.d/rcS\n"
        "l2:2:wait:/etc/init.d/rc 2\n"
        "l0:0:wait:/etc/init.d/rc 0\n"
        "l6:6:wait:/etc/init.d/rc 6\n"
        # LXC's default halt signal SIGPWR arrives here: power off cleanly.
        "pf::powerwait:/sbin/shutdown -h now\n"
        "1:2345:respawn:/sbin/getty --noclear 38400 tty1\n"
    )
    _write(root / "etc/inittab", inittab)
    # no /etc/hostname: the init scripts then keep the name LXC gives the container
    (root / "etc/hostname").unlink(missing_ok=True)
    # root logs in on the console without a password; the console is reached only
    # through vpshost, which has already checked who is asking.
    run(["chroot", str(root), "passwd", "-d", "root"])
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


IMAGES: dict[str, ContainerImage] = {
    "busybox": ContainerImage("busybox", "busybox-static userland; builds in seconds",
                              "SIGUSR2", _build_busybox),
    "debian-12": ContainerImage("debian-12", "Debian 12 (bookworm) minbase with sysvinit, "
                                "procps and iproute2; debootstrap, minutes, cached",
                                "SIGPWR", _build_debian),
}


def get(name: str) -> ContainerImage:
    try:
        return IMAGES[name]
    except KeyError:
        raise NotFound(f"unknown container image '{name}'",
                       f"available: {', '.join(IMAGES)} (see `vps images`)") from None


def image_dir(cfg: Config, name: str) -> Path:
    return cfg.images_dir / "container" / name


def rootfs(cfg: Config, name: str, shift: int = 0) -> Path:
    base = image_dir(cfg, name)
    return base / ("rootfs" if shift == 0 else f"rootfs-shift{shift}")


def is_built(cfg: Config, name: str, shift: int = 0) -> bool:
    return rootfs(cfg, name, shift).is_dir()


def _shift_tree(src: Path, dst: Path, shift: int) -> None:
    """Copy ``src`` to ``dst`` with every uid and gid moved up by ``shift``."""
    run(["cp", "-a", str(src), str(dst)], timeout=1800)
    hardlinked: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(dst):
        # Shift each inode exactly once: a directory as the dirpath of its own step (it is
        # in its parent's dirnames too), a symlink to a directory from dirnames (never
        # walked), a file with several hard links at its first name only.
        links = [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in links + filenames)]:
            st = os.lstat(entry)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in hardlinked:
                    continue
                hardlinked.add((st.st_dev, st.st_ino))
            os.lchown(entry, st.st_uid + shift, st.st_gid + shift)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o6000:
                os.chmod(entry, stat.S_IMODE(st.st_mode))  # chown clears setuid; restore it


def build(cfg: Config, name: str, progress: Progress, shift: int = 0,
          force: bool = False) -> Path:
    """Build (or reuse) image ``name``; with ``shift``, the id-shifted copy too."""
    spec = get(name)
    plain = rootfs(cfg, name)
    if force and plain.exists():
        shutil.rmtree(image_dir(cfg, name))
    if not plain.is_dir():
        tmp = plain.with_name("rootfs.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        progress(f"building image {name}")
        try:
            spec.build(tmp, progress)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(plain)
    if shift:
        shifted = rootfs(cfg, name, shift)
        if not shifted.is_dir():
            progress(f"preparing the unprivileged copy of {name} (ids +{shift})")
            tmp = shifted.with_name(shifted.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _shift_tree(plain, tmp, shift)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            tmp.rename(shifted)
        return shifted
    return plain


def tree_size_mb(path: Path) -> int:
    """Size of a built tree, measured once and remembered beside it (trees never change
    after a build; a rebuild removes the whole image directory)."""
    memo = path.with_name(path.name + ".size_mb")
    if memo.exists():
        return int(memo.read_text())
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    size = total // (1024 * 1024) + 1
    memo.write_text(str(size))
    return size
