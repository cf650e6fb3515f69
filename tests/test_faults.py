"""Bad input, wrong states, runtime failures, rollback and crash recovery, through the
real `vps` command (a subprocess) against real LXC.

Usage errors exit 2 with the problem and a hint; runtime failures exit 1 with a
message (never a traceback). A create that fails halfway leaves no row, no directory
and no held address. After `kill -9` of a `vps` in the middle of an operation, the next
invocation repairs the store from what LXC really runs and says so on stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from vpshost.store.schema import Instance

if TYPE_CHECKING:
    from conftest import Env

pytestmark = pytest.mark.lxc


def assert_usage_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert "error: " in r.stderr.lower(), r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


def assert_nothing_left(env: Env, name: str) -> None:
    assert name not in env.names()
    assert not (env.guests_dir / name).exists()


def next_address(env: Env) -> str:
    """The address the next create would get."""
    with env.service.db.session() as s:
        used = set(s.scalars(select(Instance.ip).where(Instance.ip.is_not(None))))
    return env.service.addresses.allocate(used)


def busy_pid(env: Env, name: str) -> int | None:
    with env.service.db.session() as s:
        return s.scalar(select(Instance.busy_pid).where(Instance.name == name))


@pytest.fixture(scope="module")
def running(vps_env: Env) -> Iterator[str]:
    name = vps_env.unique("run")
    try:
        vps_env.create(name, memory_mb=64)
        yield name
    finally:
        vps_env.remove(name)


# -- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["Bad_Name", "x", "9lives", "a--b", "ends-", "a" * 40,
                                 "has space", "dot.ted"])
def test_invalid_names_are_refused(vps_env: Env, bad: str) -> None:
    r = vps_env.cli("create", bad, "--memory", "64M", "--disk", "64M")
    assert_usage_error(r, "invalid name", "hint:")
    assert bad not in vps_env.names()


@pytest.mark.parametrize(("option", "value", "needle"), [
    ("--memory", "12X", "is not a size"),
    ("--memory", "-1G", "--memory"),
    ("--disk", "1.5Q", "is not a size"),
    ("--disk", "0", "must be more than 0"),
    ("--memory", "512K", "smaller than 1 MiB"),
    ("--memory", "8M", "memory must be at least 16M"),
    ("--swap", "lots", "is not a size"),
])
def test_malformed_sizes_are_refused(vps_env: Env, option: str, value: str,
                                     needle: str) -> None:
    name = vps_env.unique("size")
    r = vps_env.cli("create", name, "--disk", "64M", option, value)
    assert_usage_error(r, needle)
    assert_nothing_left(vps_env, name)


def test_duplicate_name_is_refused(vps_env: Env, running: str) -> None:
    before = vps_env.service.show(running)
    r = vps_env.cli("create", running, "--memory", "64M", "--disk", "64M")
    assert_usage_error(r, "already exists", "hint:")
    after = vps_env.service.show(running)
    assert (after["ip"], after["state"], after["created_at"]) == (
        before["ip"], before["state"], before["created_at"])


def test_unknown_image_is_refused(vps_env: Env) -> None:
    name = vps_env.unique("img")
    r = vps_env.cli("create", name, "--image", "windows-95")
    assert_usage_error(r, "unknown container image 'windows-95'", "busybox")
    assert_nothing_left(vps_env, name)


def test_unknown_type_is_refused(vps_env: Env) -> None:
    r = vps_env.cli("create", vps_env.unique("typ"), "--type", "mainframe")
    assert_usage_error(r, "unknown type", "container")


@pytest.mark.parametrize(("args", "needle"), [
    (["--cpus", "64"], "64 CPUs"),
    (["--memory", "1000G"], "of memory"),
    (["--disk", "100000G"], "disk"),
    (["--cpus", "1", "--cpu-cap", "150"], "cpu cap"),
])
def test_plans_beyond_the_host_are_refused(vps_env: Env, args: list[str],
                                           needle: str) -> None:
    name = vps_env.unique("big")
    r = vps_env.cli("create", name, *args)
    assert_usage_error(r, needle, "hint:")
    assert_nothing_left(vps_env, name)


def test_unknown_instance(vps_env: Env) -> None:
    for verb in (["start"], ["stop"], ["show"], ["delete"], ["exec"]):
        r = vps_env.cli(*verb, "no-such-vps", *(["--", "true"] if verb == ["exec"] else []))
        assert_usage_error(r, "no instance named 'no-such-vps'")


# -- wrong states -----------------------------------------------------------------------

def test_operations_in_the_wrong_state(vps_env: Env, running: str) -> None:
    r = vps_env.cli("start", running)
    assert_usage_error(r, "cannot start", "it is running", "hint:")
    r = vps_env.cli("delete", running)
    assert_usage_error(r, "cannot delete", "it is running", "vps stop")
    assert vps_env.lxc_state(running) == "RUNNING"  # refused means untouched
    r = vps_env.cli("resize", running, "--disk", "32M")
    assert_usage_error(r)


def test_stopped_instance_refuses_exec_and_stop(vps_env: Env) -> None:
    name = vps_env.unique("stp")
    try:
        vps_env.create(name, start=False, memory_mb=64)
        assert_usage_error(vps_env.cli("exec", name, "--", "true"), "it is stopped",
                           "vps start")
        assert_usage_error(vps_env.cli("stop", name), "cannot stop")
    finally:
        vps_env.remove(name)


def test_delete_force_stops_and_deletes(vps_env: Env) -> None:
    name = vps_env.unique("del")
    vps_env.create(name, memory_mb=64)
    r = vps_env.cli("delete", "--force", name)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(vps_env, name)


# -- runtime failures ---------------------------------------------------------------------

def test_runtime_failure_exits_1_with_a_message(vps_env: Env) -> None:
    """The disk image vanished behind vpshost's back: start fails at run time."""
    name = vps_env.unique("rt")
    try:
        vps_env.create(name, start=False, memory_mb=64)
        (vps_env.guests_dir / name / "disk.img").unlink()
        r = vps_env.cli("start", name)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "error: " in r.stderr and "Traceback" not in r.stderr
        assert "failed to start" in r.stderr
        # the store records what the host really has, and why
        row = vps_env.service.show(name)
        assert row["state"] == "stopped"
        assert row["last_error"] and "start failed" in row["last_error"]
    finally:
        vps_env.remove(name)


# -- rollback of a create that fails halfway ------------------------------------------------

def test_create_with_a_disk_too_small_for_the_image_is_rolled_back(vps_env: Env) -> None:
    name = vps_env.unique("small")
    address = next_address(vps_env)
    r = vps_env.cli("create", name, "--image", "debian-12", "--disk", "100M")
    assert_usage_error(r, "needs a disk of at least", "--disk")
    assert_nothing_left(vps_env, name)
    assert next_address(vps_env) == address


def test_create_failing_halfway_rolls_back_row_dir_and_address(
        vps_env: Env, make_container: Callable[..., str]) -> None:
    """The row and the address are reserved and the guest directory made; then making
    the disk fails (its path is taken by a directory)."""
    name = vps_env.unique("half")
    address = next_address(vps_env)
    (vps_env.guests_dir / name / "disk.img").mkdir(parents=True)
    try:
        r = vps_env.cli("create", name, "--memory", "64M", "--disk", "64M")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "error: " in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "disk.img" in r.stderr
        assert_nothing_left(vps_env, name)
        events = vps_env.service.events(None)
        assert any(e["instance"] == name and e["kind"] == "create-failed" for e in events)
        # the address was not leaked: the next guest gets it
        other = make_container(memory_mb=64)
        assert vps_env.service.show(other)["ip"] == address
    finally:
        vps_env.remove(name)


# -- kill -9 in the middle of an operation, then reconcile ----------------------------------

def spawn_vps(env: Env, *args: str) -> subprocess.Popen[str]:
    """A `vps` in its own process group, so kill -9 takes its children (lxc-*, mkfs)."""
    return subprocess.Popen([env.vps, *args], stdout=subprocess.PIPE, env=env.environ(),
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill9(proc: subprocess.Popen[str]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_kill9_during_stop_is_reconciled_to_what_lxc_runs(
        vps_env: Env, make_container: Callable[..., str]) -> None:
    name = make_container(memory_mb=64)
    # Make this container's shutdown slow: busybox init runs ::shutdown: actions on
    # the halt signal, and re-reads /etc/inittab on SIGHUP.
    vps_env.ok(name, "printf '::sysinit:/etc/init.d/rcS\\ntty1::respawn:-/bin/sh\\n"
                     "::shutdown:/bin/sleep 7777\\n' > /etc/inittab && kill -HUP 1")
    init = vps_env.init_pid(name)
    ns = os.readlink(f"/proc/{init}/ns/pid")

    def shutting_down() -> bool:
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and os.readlink(p / "ns/pid") == ns and \
                        (p / "cmdline").read_bytes().startswith(b"/bin/sleep\0007777"):
                    return True
            except OSError:
                continue
        return False

    proc = spawn_vps(vps_env, "stop", name, "--timeout", "120")
    try:
        vps_env.wait_for(lambda: vps_env.row(name)["state"] == "stopping", "state 'stopping'")
        assert busy_pid(vps_env, name) == proc.pid
        vps_env.wait_for(shutting_down, "the container's init to run its shutdown action")
    finally:
        kill9(proc)
    # the crash left the store claiming a stop that nobody is doing
    assert vps_env.row(name)["state"] == "stopping"
    assert busy_pid(vps_env, name) == proc.pid
    assert vps_env.lxc_state(name) == "RUNNING"

    r = vps_env.cli("list", "--json")

    assert r.returncode == 0, r.stderr
    assert f"reconciled: {name}: was stopping in the store, running on the host; " \
           "now running" in r.stderr
    assert vps_env.row(name)["state"] == "running"
    assert busy_pid(vps_env, name) is None
    # once repaired, it is an ordinary running instance again
    assert vps_env.cli("stop", name, "--timeout", "1").returncode == 0
    assert vps_env.row(name)["state"] == "stopped" and vps_env.lxc_state(name) == "STOPPED"
    # and a second invocation has nothing left to fix
    assert "reconciled" not in vps_env.cli("list").stderr


def test_kill9_during_create_is_cleaned_up(vps_env: Env) -> None:
    """Kill `vps create` while it writes the disk; the next command removes the
    half-made container and releases its address."""
    address = next_address(vps_env)
    for _attempt in range(5):
        name = vps_env.unique("crash")
        vps_env._mine.append(name)
        proc = spawn_vps(vps_env, "create", name, "--image", "debian-12", "--disk", "400M",
                         "--memory", "64M")

        def half_made(name: str = name, proc: subprocess.Popen[str] = proc) -> bool:
            row = vps_env.row(name)
            made = row is not None and row["state"] == "creating" and \
                (vps_env.guests_dir / name / "disk.img").exists()
            return made or proc.poll() is not None

        try:
            vps_env.wait_for(half_made, "a creating row with a disk being written", interval=0.01)
            caught = proc.poll() is None and vps_env.row(name)["state"] == "creating"
        finally:
            kill9(proc)
        if caught:
            break
        vps_env.remove(name)  # it finished before we could kill it: try again
    else:
        pytest.fail("never caught `vps create` in the middle")
    assert vps_env.row(name)["state"] == "creating"
    assert (vps_env.guests_dir / name).exists()

    r = vps_env.cli("list", "--json")

    assert r.returncode == 0, r.stderr
    assert f"reconciled: {name}: removed the half-made container and released " \
           f"{address}" in r.stderr
    assert_nothing_left(vps_env, name)
    assert next_address(vps_env) == address


def test_a_container_killed_outside_vpshost_is_reported_by_exec(vps_env: Env) -> None:
    """A guest that died behind vpshost's back: exec says so plainly (not lxc-attach's
    'Failed to get init pid') and the store is fixed on the spot."""
    from vpshost.host import boot

    boot.mark(vps_env.state_dir)  # no reboot: the CLI's start-up check stays cheap
    name = vps_env.create(memory_mb=64)
    vps_env.lxc("stop", name, "-k")
    r = vps_env.cli("exec", name, "--", "true")
    assert r.returncode == 2, (r.returncode, r.stderr)  # a conflict with its state
    assert f"'{name}' is not running" in r.stderr and f"vps start {name}" in r.stderr
    assert "init pid" not in r.stderr
    row = vps_env.row(name)
    assert row is not None and row["state"] == "stopped"
    assert vps_env.cli("start", name).returncode == 0
    assert vps_env.ok(name, "echo back").strip() == "back"


def test_after_a_reboot_every_guest_is_checked(vps_env: Env) -> None:
    """A new boot id makes the next start of vpshost compare every row with the host,
    not just the ones a crashed operation left in a transient state."""
    from vpshost.host import boot
    from vpshost.service import Service

    name = vps_env.create(memory_mb=64)
    vps_env.lxc("stop", name, "-k")  # what a reboot does to it
    (vps_env.state_dir / boot.MARKER).write_text("an-earlier-boot\n")
    fixed = Service(vps_env.config).reconcile()
    assert any(m.startswith(f"{name}: was running in the store") for m in fixed), fixed
    assert (vps_env.state_dir / boot.MARKER).read_text().strip() == boot.current()
    assert vps_env.row(name)["state"] == "stopped"  # type: ignore[index]
    assert not boot.changed(vps_env.state_dir)
