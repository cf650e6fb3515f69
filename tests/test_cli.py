"""The `vps` command's machine-readable output, run as a user runs it (a subprocess).

`--json` of list, show, images, host info and port list parses and holds the
documented keys with values that match what was created and what the host is.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from vpshost.host import cgroups

if TYPE_CHECKING:
    from conftest import Env

pytestmark = pytest.mark.lxc

INSTANCE_KEYS = {"name", "type", "state", "image", "ip", "cpus", "memory_mb", "swap_mb",
                 "disk_mb", "host"}
HOST_KEYS = {"kernel", "cores", "memory_mb", "cgroup", "lxc_version", "qemu_version", "kvm",
             "xen_dom0", "state_dir_free_mb"}
PORT_KEYS = {"instance", "proto", "host_port", "guest_ip", "guest_port"}
IMAGE_KEYS = {"name", "type", "description", "built"}


def vps_json(env: Env, *args: str) -> Any:
    r = env.cli(*args, "--json")
    assert r.returncode == 0, (args, r.stderr)
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def guest(vps_env: Env) -> Iterator[str]:
    """A running container with a known plan, made through the CLI itself."""
    name = vps_env.unique("cli")
    vps_env._mine.append(name)
    try:
        r = vps_env.cli("create", name, "--cpus", "1", "--memory", "96M", "--swap", "32M",
                        "--disk", "80M", "--pids", "64", "--start", "--json")
        assert r.returncode == 0, r.stderr
        created = json.loads(r.stdout)
        assert created["name"] == name and created["state"] == "running"
        yield name
    finally:
        vps_env.remove(name)


def test_list_json(vps_env: Env, guest: str) -> None:
    rows = vps_json(vps_env, "list")
    assert isinstance(rows, list)
    for row in rows:
        assert row.keys() >= INSTANCE_KEYS, row
    mine = next(r for r in rows if r["name"] == guest)
    assert mine == {**mine, "type": "container", "state": "running", "image": "busybox",
                    "cpus": 1, "memory_mb": 96, "swap_mb": 32, "disk_mb": 80,
                    "host": "local"}
    assert mine["ip"].startswith("10.242.")
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)


def test_show_json(vps_env: Env, guest: str) -> None:
    data = vps_json(vps_env, "show", guest)
    assert data.keys() >= INSTANCE_KEYS
    listed = next(r for r in vps_json(vps_env, "list") if r["name"] == guest)
    assert {k: data[k] for k in INSTANCE_KEYS} == {k: listed[k] for k in INSTANCE_KEYS}
    assert data["max_procs"] == 64 and data["privileged"] is False
    assert isinstance(data["ports"], list) and isinstance(data["events"], list)
    assert any(e["kind"] == "created" for e in data["events"])
    # the same address the container really has
    assert f"inet {data['ip']}/" in vps_env.ok(guest, "ip -4 addr show eth0")


def test_list_table_names_the_guest(vps_env: Env, guest: str) -> None:
    r = vps_env.cli("list")
    assert r.returncode == 0
    assert guest in r.stdout and "running" in r.stdout


def test_images_json(vps_env: Env) -> None:
    rows = vps_json(vps_env, "images")
    for row in rows:
        assert row.keys() >= IMAGE_KEYS, row
    containers = {r["name"]: r for r in rows if r["type"] == "container"}
    assert containers["busybox"]["built"] is True
    assert "debian-12" in containers


def test_host_info_json(vps_env: Env) -> None:
    data = vps_json(vps_env, "host", "info")
    assert data.keys() >= HOST_KEYS, data.keys()
    assert data["kernel"] == platform.release()
    assert data["cores"] == os.cpu_count()
    total = psutil.virtual_memory().total // (1024 * 1024)
    assert abs(data["memory_mb"] - total) <= 1
    assert data["cgroup"] == str(cgroups.layout())
    lxc = subprocess.run(["lxc-start", "--version"], capture_output=True, text=True)
    assert data["lxc_version"] == lxc.stdout.strip()
    caps = Path("/proc/xen/capabilities")
    assert data["xen_dom0"] is (caps.exists() and "control_d" in caps.read_text())
    assert isinstance(data["state_dir_free_mb"], int) and data["state_dir_free_mb"] > 0
    flags = Path("/proc/cpuinfo").read_text().split()
    if "vmx" not in flags and "svm" not in flags:
        assert data["kvm"] == "tcg-only"
    else:
        assert data["kvm"] in ("native", "tcg-only")


def test_port_list_json(vps_env: Env, guest: str) -> None:
    assert vps_json(vps_env, "port", "list", guest) == []
    r = vps_env.cli("port", "add", guest, "28431:8080", "--udp")
    assert r.returncode == 0, r.stderr
    try:
        rows = vps_json(vps_env, "port", "list", guest)
        assert len(rows) == 1 and rows[0].keys() >= PORT_KEYS
        ip = vps_json(vps_env, "show", guest)["ip"]
        assert {k: rows[0][k] for k in PORT_KEYS} == {
            "instance": guest, "proto": "udp", "host_port": 28431, "guest_ip": ip,
            "guest_port": 8080}
        everything = vps_json(vps_env, "port", "list")
        assert rows[0] in everything
        assert vps_json(vps_env, "show", guest)["ports"] == [
            {"proto": "udp", "host_port": 28431, "guest_port": 8080}]
    finally:
        r = vps_env.cli("port", "remove", guest, "28431", "--udp")
    assert r.returncode == 0, r.stderr
    assert vps_json(vps_env, "port", "list", guest) == []


def test_exec_passes_output_and_exit_code_through(vps_env: Env, guest: str) -> None:
    r = vps_env.cli("exec", guest, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")


def test_power_verbs_with_json(vps_env: Env) -> None:
    name = vps_env.unique("pow")
    vps_env._mine.append(name)
    try:
        created = vps_json(vps_env, "create", name, "--memory", "64M", "--disk", "64M")
        assert created["state"] == "stopped"
        assert vps_json(vps_env, "start", name)["state"] == "running"
        assert vps_env.lxc_state(name) == "RUNNING"
        assert vps_json(vps_env, "stop", name, "--timeout", "1")["state"] == "stopped"
        assert vps_env.lxc_state(name) == "STOPPED"
        r = vps_env.cli("delete", name)
        assert r.returncode == 0 and name not in {
            row["name"] for row in vps_json(vps_env, "list")}
    finally:
        vps_env.remove(name)
