"""Shared fixtures for the tests that run real LXC containers.

``vps_env`` (session) gives every container test one isolated vpshost: its own state
directory (database, guests) and its own network slot: bridge prefix ``vpst<letter>``,
a /20 of 10.242.0.0/16 and nftables table ``vpsct<n>`` (the API tests use ``vpsa`` and
10.243.0.0/16, the network tests ``vpsq``/``vpstest``, so none of them collide). Several
engineers run the suite at once on one machine, so a session claims one of 16 slots
with a lock file and only ever creates or tears down that slot's bridges and table.
The ``VPS_*`` variables are set in ``os.environ`` (a MonkeyPatch context) only while
the session's config is loaded, and handed to every ``vps`` subprocess explicitly
(``vps_env.cli``, ``vps_env.environ()``), so the CLI sees the same vpshost as the
in-process ``Service`` while other engineers' tests later in the same session never
inherit this environment. The image cache stays the shared /var/cache/vpshost, so no
test rebuilds busybox or debian-12.

Tests that need no root (unit tests) do not request ``vps_env`` and always run; the
others are skipped with the reason when the host cannot run containers.

Test modules use the helpers through the fixture (``vps_env.wait_for``, ``.vps``),
not ``from conftest import``, which breaks once tests/ is a package.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

SLOTS = 16  # /20s of 10.242.0.0/16
# Variables that would send the CLI elsewhere (a server, another database)
UNSET = ("VPS_SERVER", "VPS_TOKEN", "VPS_DB_URL", "VPS_SUBNET6")
LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
CACHE_DIR = "/var/cache/vpshost"
# Store rows that stand for no guest (e.g. addresses held to fill a segment) carry this
# host, so admission control and reconcile, which look at host "local", ignore them.
PLACEHOLDER_HOST = "placeholder"
VPS = str(Path(sys.executable).with_name("vps"))


def host_problem() -> str | None:
    """Why this host cannot run the container tests, or None when it can."""
    if os.geteuid() != 0:
        return "needs root: containers, bridges and nftables"
    for tool in ("lxc-start", "lxc-attach", "mkfs.ext4", "nft"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install lxc e2fsprogs nftables)"
    if not shutil.which("newuidmap"):
        return "newuidmap is missing (apt-get install uidmap)"
    if not Path(VPS).exists():
        return f"the vps command is not installed at {VPS} (pip install -e .)"
    return None


@dataclass
class Env:
    """One isolated vpshost for the session, plus helpers to drive it."""

    state_dir: Path
    config: Any
    service: Any
    variables: dict[str, str]
    _mine: list[str] = field(default_factory=list)
    # Test modules reach helpers through the fixture rather than `from conftest import`,
    # which breaks as soon as tests/ becomes a package (tests/__init__.py).
    vps: str = VPS
    placeholder_host: str = PLACEHOLDER_HOST

    @staticmethod
    def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0,
                 interval: float = 0.05) -> Any:
        return wait_for(check, what, timeout, interval)

    def environ(self) -> dict[str, str]:
        """The process environment for a ``vps`` subprocess of this vpshost."""
        env = {k: v for k, v in os.environ.items() if k not in UNSET}
        env.update(self.variables)
        return env

    @property
    def guests_dir(self) -> Path:
        return self.config.guests_dir

    # -- naming and creating -----------------------------------------------------------
    @staticmethod
    def unique(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def create(self, name: str | None = None, *, image: str = "busybox", start: bool = True,
               privileged: bool = False, **plan: int) -> str:
        """Create (and by default start) a container; ``plan`` takes Plan fields
        (memory_mb=64, disk_mb=64, max_procs=32, vcpus=1, cpu_cap_pct=50...)."""
        from vpshost.models import Plan
        from vpshost.service import CreateRequest

        name = name or self.unique()
        defaults = {"memory_mb": 128, "disk_mb": 64}
        req = CreateRequest(name=name, type="container", image=image,
                            plan=Plan(**{**defaults, **plan}), privileged=privileged,
                            start=start)
        self._mine.append(name)
        self.service.create(req)
        return name

    def remove(self, name: str) -> None:
        """Delete a guest if it exists, whatever its state; never raises."""
        from vpshost.service.core import Service

        # Kill it outright first: a clean shutdown of busybox init takes seconds and
        # cleanup need not be graceful.
        with suppress(Exception):
            subprocess.run(["lxc-stop", "-k", "-n", name, "-P", str(self.guests_dir)],
                           capture_output=True, timeout=30)
        with suppress(Exception):
            # A fresh Service: reconcile first, in case a test left a transient state.
            svc = Service(self.config)
            svc.reconcile()
            if any(r["name"] == name for r in svc.list()):
                svc.delete(name, force=True)
        with suppress(Exception):
            subprocess.run(["lxc-stop", "-k", "-n", name, "-P", str(self.guests_dir)],
                           capture_output=True, timeout=30)
        shutil.rmtree(self.guests_dir / name, ignore_errors=True)

    # -- running things ----------------------------------------------------------------
    def sh(self, name: str, script: str, timeout: float = 60.0) -> Any:
        """Run a shell script inside ``name``; returns ExecResult(returncode, stdout, stderr)."""
        return self.service.exec(name, ["sh", "-c", script], timeout=timeout)

    def ok(self, name: str, script: str, timeout: float = 60.0) -> str:
        r = self.sh(name, script, timeout)
        assert r.returncode == 0, f"{script!r} failed in {name}: {r.returncode} {r.stderr}"
        return r.stdout

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """The real ``vps`` command, as a user runs it, in this environment."""
        return subprocess.run([VPS, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=self.environ())

    def lxc(self, tool: str, name: str, *args: str) -> str:
        r = subprocess.run([f"lxc-{tool}", "-n", name, "-P", str(self.guests_dir), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"lxc-{tool} {name} {args}: {r.stderr}"
        return r.stdout.strip()

    def init_pid(self, name: str) -> int:
        return int(self.lxc("info", name, "-p", "-H"))

    def lxc_state(self, name: str) -> str:
        return self.lxc("info", name, "-s", "-H")

    def row(self, name: str) -> dict[str, Any] | None:
        """The instance as the store has it, read without reconciling anything."""
        rows = [r for r in self.service.list() if r["name"] == name]
        return rows[0] if rows else None

    def names(self) -> set[str]:
        return {r["name"] for r in self.service.list()}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0,
             interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true (a condition, not a duration)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def _claim_slot() -> tuple[int, IO[str]]:
    """One of SLOTS network slots, held (flock) until the session ends."""
    for slot in range(SLOTS):
        f = open(LOCK_DIR / f"vpshost-tests-slot{slot}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot, f
        except BlockingIOError:
            f.close()
    pytest.skip(f"all {SLOTS} container test slots are in use by other test sessions")


def _teardown(env: Env) -> None:
    from vpshost.host import network
    from vpshost.service.core import Service

    svc = Service(env.config)
    with suppress(Exception):
        svc.reconcile()
    for row in svc.list():
        env.remove(row["name"])
    for name in env._mine:  # created, then lost from the store by a test
        if (env.guests_dir / name).exists():
            env.remove(name)
    with suppress(Exception):
        network.teardown(env.config.network)
    shutil.rmtree(env.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def vps_env() -> Iterator[Env]:
    problem = host_problem()
    if problem:
        pytest.skip(f"container tests skipped: {problem}")
    # /tmp, not pytest's tmp_path: pytest's directories are mode 0700, which the
    # container's mapped root could not pass through to reach its disk image.
    slot, lock = _claim_slot()
    bridge_prefix = f"vpst{string.ascii_lowercase[slot]}"
    state_dir = Path(tempfile.mkdtemp(prefix=f"vpsct{slot}-", dir="/tmp"))
    state_dir.chmod(0o711)
    variables = {
        "VPS_STATE_DIR": str(state_dir),
        "VPS_CACHE_DIR": CACHE_DIR,
        "VPS_BRIDGE_PREFIX": bridge_prefix,
        "VPS_SUBNET": f"10.242.{slot * 16}.0/20",
        "VPS_NAT_TABLE": f"vpsct{slot}",
        "VPS_CONFIG": str(state_dir / "no-config.toml"),  # never /etc's
    }
    from vpshost.config import load
    from vpshost.host import network
    from vpshost.service import Service

    with lock:
        with pytest.MonkeyPatch.context() as mp:
            for var, value in variables.items():
                mp.setenv(var, value)
            for var in UNSET:
                mp.delenv(var, raising=False)
            cfg = load()
        assert cfg.state_dir == state_dir and cfg.network.bridge_prefix == bridge_prefix
        network.teardown(cfg.network)  # what a killed session on this slot left behind
        env = Env(state_dir=state_dir, config=cfg, service=Service(cfg),
                  variables=variables)
        try:
            yield env
        finally:
            _teardown(env)

@pytest.fixture
def make_container(vps_env: Env) -> Iterator[Callable[..., str]]:
    """Factory: ``make_container(memory_mb=64, max_procs=32, ...)`` creates and starts a
    busybox container with a unique name; it is deleted after the test, pass or fail."""
    made: list[str] = []

    def make(name: str | None = None, **kwargs: Any) -> str:
        name = name or vps_env.unique()
        made.append(name)
        return vps_env.create(name, **kwargs)

    yield make
    for name in made:
        vps_env.remove(name)
