"""Root in an (unprivileged, default) container is not root on the host.

A file root makes inside belongs to the id-map base on the host; the container sees
only its own processes; it cannot load kernel modules, change kernel settings, make
device nodes or mount the host's disk. ``--privileged`` is recorded on the instance.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Env

pytestmark = pytest.mark.lxc


@pytest.fixture(scope="module")
def box(vps_env: Env) -> Iterator[str]:
    """One unprivileged busybox container shared by this module's read-mostly tests."""
    name = vps_env.unique("iso")
    try:
        vps_env.create(name, memory_mb=64, disk_mb=64)
        yield name
    finally:
        vps_env.remove(name)


def test_file_made_by_root_inside_is_owned_by_the_mapped_id_on_the_host(
        vps_env: Env, box: str) -> None:
    assert vps_env.ok(box, "id -u; id -g").split() == ["0", "0"]
    vps_env.ok(box, "echo secret > /root/x")

    seen = Path(f"/proc/{vps_env.init_pid(box)}/root/root/x").stat()

    base = vps_env.config.container.idmap_base
    assert base != 0
    assert (seen.st_uid, seen.st_gid) == (base, base)
    # and the container's init itself runs as that id, not as host root
    status = Path(f"/proc/{vps_env.init_pid(box)}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uid_line.split()[1:]) == {str(base)}


def test_host_processes_are_invisible_inside(vps_env: Env, box: str) -> None:
    marker = subprocess.Popen(["sleep", "1234567"])
    try:
        out = vps_env.ok(box, "ps -o pid,args")
        assert "1234567" not in out
        lines = out.strip().splitlines()[1:]
        inside = {int(line.split()[0]) for line in lines}
        # only the container's own few processes: init, its console shell, this ps
        assert 1 in inside and len(lines) < 10, out
        assert vps_env.ok(box, "cat /proc/1/cmdline | tr '\\0' ' '").startswith("init")
        if marker.pid not in inside:  # a small pid may exist in both namespaces
            assert vps_env.sh(box, f"kill -0 {marker.pid}").returncode != 0
        assert marker.poll() is None  # the marker lives on
    finally:
        marker.kill()
        marker.wait()


def test_cannot_load_kernel_modules(vps_env: Env, box: str) -> None:
    # Any file will do: the kernel checks CAP_SYS_MODULE (in the initial user
    # namespace) before it reads the module, so the answer is EPERM, not a format error.
    vps_env.ok(box, "head -c 4096 /bin/busybox > /tmp/fake.ko")
    r = vps_env.sh(box, "insmod /tmp/fake.ko")
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr, r.stderr
    r = vps_env.sh(box, "modprobe dummy")
    assert r.returncode != 0


def test_cannot_change_kernel_settings(vps_env: Env, box: str) -> None:
    rel = next(r for r in ("kernel/sysrq", "vm/swappiness", "kernel/panic")
               if Path("/proc/sys", r).exists())
    path = Path("/proc/sys", rel)
    before = path.read_text()
    new = "0" if before.strip() != "0" else "1"
    try:
        r = vps_env.sh(box, f"echo {new} > {path}")
        assert r.returncode != 0
        assert path.read_text() == before
    finally:
        if path.read_text() != before:
            path.write_text(before)
    r = vps_env.sh(box, "echo 1 > /proc/sys/vm/drop_caches")
    assert r.returncode != 0


def host_root_source() -> str:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, target = line.split()[:2]
        if target == "/":
            root = source
    return root


def test_cannot_reach_the_hosts_disk(vps_env: Env, box: str) -> None:
    dev = os.stat("/").st_dev
    major, minor = os.major(dev), os.minor(dev)
    host_devices = vps_env.ok(box, "ls /dev").split()
    # the host's disks are not there ...
    assert not any(d.startswith(("vd", "sd", "nvme", "xvd", "hd")) for d in host_devices)
    # ... making the node is refused, and so is mounting (with or without the node)
    r = vps_env.sh(box, f"mknod /tmp/hostdisk b {major} {minor}")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    r = vps_env.sh(box, "mkdir -p /mnt/host && mount -t ext4 /tmp/hostdisk /mnt/host")
    assert r.returncode != 0
    source = host_root_source()
    if source.startswith("/dev/"):
        r = vps_env.sh(box, f"mount -t ext4 {source} /mnt/host")
        assert r.returncode != 0
        assert f"{source} " not in vps_env.ok(box, "cat /proc/mounts")
    assert vps_env.ok(box, "ls /mnt/host") == ""


def test_privileged_container_is_recorded_and_really_privileged(
        vps_env: Env, make_container: object) -> None:
    name = make_container(privileged=True, memory_mb=64)  # type: ignore[operator]
    r = vps_env.cli("show", name, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["privileged"] is True
    vps_env.ok(name, "echo x > /root/x")
    seen = Path(f"/proc/{vps_env.init_pid(name)}/root/root/x").stat()
    assert seen.st_uid == 0  # the explicit opt-out: root inside is root outside


def test_unprivileged_is_the_default_and_recorded(vps_env: Env, box: str) -> None:
    r = vps_env.cli("show", box, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["privileged"] is False


def test_unprivileged_image_copy_is_shifted_exactly_by_the_map_base(vps_env: Env) -> None:
    """Every owner in the id-shifted image copy is the plain image's owner plus the map
    base (a directory or hard link shifted twice lands outside the map: root inside
    then cannot write there)."""
    from vpshost.host import images

    base = vps_env.config.container.idmap_base
    for image in images.IMAGES:
        if not images.is_built(vps_env.config, image, base):
            continue
        plain = images.rootfs(vps_env.config, image)
        shifted = images.rootfs(vps_env.config, image, base)
        wrong = []
        for dirpath, dirnames, filenames in os.walk(plain):
            for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                a = os.lstat(entry)
                b = os.lstat(str(shifted) + entry[len(str(plain)):])
                if (b.st_uid, b.st_gid) != (a.st_uid + base, a.st_gid + base):
                    wrong.append(entry)
        assert not wrong, f"{image}: {len(wrong)} wrongly shifted, e.g. {wrong[:3]}"


def test_root_inside_can_write_everywhere_in_its_own_tree(vps_env: Env, box: str) -> None:
    vps_env.ok(box, "mkdir /mnt/new /root/new /etc/new && touch /etc/new/f /var/log/f")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_shift_tree_moves_every_inode_once(tmp_path: Path) -> None:
    from vpshost.host.images import _shift_tree

    src = tmp_path / "src"
    (src / "a/b/c").mkdir(parents=True)
    (src / "a/f").write_text("x")
    os.link(src / "a/f", src / "a/b/hard")  # one inode, two names
    (src / "to-dir").symlink_to("a/b")  # listed among directories, never walked
    os.lchown(src / "a/b", 5, 6)
    os.lchown(src / "to-dir", 7, 8)

    _shift_tree(src, tmp_path / "dst", 1000)

    for dirpath, dirnames, filenames in os.walk(src):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            a = os.lstat(entry)
            b = os.lstat(str(tmp_path / "dst") + entry[len(str(src)):])
            assert (b.st_uid, b.st_gid) == (a.st_uid + 1000, a.st_gid + 1000), entry
