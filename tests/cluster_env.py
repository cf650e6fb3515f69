"""Several vpshost hosts on one machine, for the multi-host tests.

Each host is a network namespace joined to the control plane (the root namespace) by a
veth on the bridge ``vpsclu0`` (10.97.0.0/24; the control plane is 10.97.0.1, host i is
10.97.0.(i+2)). Each runs its own ``vps agent`` with its own state directory. Guests
use 10.241.0.0/16 in routed mode: every host has its own guest bridge and gateway
(10.241.0.1, the same MAC everywhere because bridge MACs derive from the bridge name),
and the control plane routes each guest's /32 to the host that runs it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

VPS = str(Path(sys.executable).with_name("vps"))
UPLINK = "vpsclu0"
UPLINK_NET = "10.97.0"
GUEST_SUBNET = "10.241.0.0/16"
GUEST_PREFIX = "vpsh"
NAT_TABLE = "vpsclu"
AGENT_PORT = 8421


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@dataclass
class NsHost:
    name: str
    netns: str
    addr: str
    state_dir: Path
    secret: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{AGENT_PORT}"

    def env(self) -> dict[str, str]:
        return dict(os.environ, VPS_STATE_DIR=str(self.state_dir),
                    VPS_CONFIG=str(self.state_dir / "config.toml"),
                    VPS_SUBNET=GUEST_SUBNET, VPS_BRIDGE_PREFIX=GUEST_PREFIX,
                    VPS_NAT_TABLE=NAT_TABLE)

    def start_agent(self) -> None:
        log = open(self.state_dir / "agent.log", "ab")  # noqa: SIM115 - lives with the process
        agent = (f"exec {VPS} agent --listen {self.addr}:{AGENT_PORT} "
                 f"--secret-file {self.state_dir / 'secret'}")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "sh", "-ec", cgroup_mounts() + agent],
            env=self.env(), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                r = httpx.get(self.url + "/agent/v1/info", timeout=5,
                              headers={"Authorization": f"Bearer {self.secret}"})
                if r.status_code == 200:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"agent {self.name} did not come up: "
                           + (self.state_dir / "agent.log").read_text()[-2000:])

    def kill_agent(self) -> None:
        if self.proc and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(10)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command inside this host's namespace, with its vpshost environment."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], env=self.env(),
                              capture_output=True, text=True, check=check)


def cgroup_mounts() -> str:
    """Shell lines that mount the host's cgroup hierarchies again: `ip netns exec`
    gives the command a fresh /sys, which has none, and LXC needs them (a real host
    has them, of course)."""
    lines = ["mount -t tmpfs -o mode=755 cgroup-root /sys/fs/cgroup"]
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _src, target, fstype, opts, *_ = line.split()
        if fstype in ("cgroup", "cgroup2") and target.startswith("/sys/fs/cgroup/"):
            keep = ",".join(o for o in opts.split(",") if o not in ("rw", "ro")
                            and not o.startswith("relatime"))
            lines.append(f"mkdir -p {target}")
            lines.append(f"mount -t {fstype} -o {keep or 'defaults'} {fstype} {target}")
        elif fstype == "cgroup2" and target == "/sys/fs/cgroup":
            lines = [f"mount -t cgroup2 cgroup2 {target}"]
    return "\n".join(lines) + "\n"


def _cleanup_netns(netns: str) -> None:
    # guests' processes (lxc, qemu) in the namespace go first, then the namespace
    pids = sh("ip", "netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    sh("ip", "netns", "del", netns, check=False)


def make_hosts(root: Path, count: int, tag: str) -> list[NsHost]:
    if not Path(f"/sys/class/net/{UPLINK}").exists():
        sh("ip", "link", "add", UPLINK, "type", "bridge")
        sh("ip", "addr", "add", f"{UPLINK_NET}.1/24", "dev", UPLINK)
        sh("ip", "link", "set", UPLINK, "up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    hosts = []
    for i in range(count):
        name = f"h{i}"
        netns = f"vps{tag}{i}"
        addr = f"{UPLINK_NET}.{i + 2}"
        _cleanup_netns(netns)
        sh("ip", "link", "del", f"vc{tag}{i}", check=False)
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", f"vc{tag}{i}", "type", "veth", "peer", "name", "up0",
           "netns", netns)
        sh("ip", "link", "set", f"vc{tag}{i}", "master", UPLINK, "up")
        ns = ["ip", "netns", "exec", netns]
        sh(*ns, "ip", "link", "set", "lo", "up")
        sh(*ns, "ip", "addr", "add", f"{addr}/24", "dev", "up0")
        sh(*ns, "ip", "link", "set", "up0", "up")
        sh(*ns, "ip", "route", "add", "default", "via", f"{UPLINK_NET}.1")
        state = root / name
        state.mkdir(parents=True, mode=0o755)
        secret = secrets.token_hex(24)
        (state / "secret").write_text(secret)
        # routed mode: no NAT on the hosts, so a connection keeps its addresses when
        # the guest moves (the edge would NAT; here nothing needs to)
        (state / "config.toml").write_text("[network]\nnat = false\n")
        h = NsHost(name, netns, addr, state, secret)
        h.start_agent()
        hosts.append(h)
    return hosts


def destroy_hosts(hosts: list[NsHost], tag: str) -> None:
    for i, h in enumerate(hosts):
        h.kill_agent()
        # stop containers and VMs the agent left behind in this host's state dir
        for cfg in (h.state_dir / "guests").glob("*/config"):
            sh("lxc-stop", "-k", "-n", cfg.parent.name, "-P", str(cfg.parent.parent),
               check=False)
        for pidfile in (h.state_dir / "guests").glob("*/qemu.pid"):
            with suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pidfile.read_text().strip()), 9)
        _cleanup_netns(h.netns)
        sh("ip", "link", "del", f"vc{tag}{i}", check=False)
    for line in sh("ip", "route", "show").stdout.splitlines():
        if line.startswith("10.241."):
            sh("ip", "route", "del", line.split()[0], check=False)


PG_URL = "postgresql+psycopg://vpshost:vpshost@127.0.0.1/vpshost_cluster"


def fresh_postgres(url: str = PG_URL) -> bool:
    """Empty the cluster test database; False when PostgreSQL is not running."""
    try:
        from sqlalchemy import create_engine, text

        from vpshost.store.schema import Base

        engine = create_engine(url, connect_args={"connect_timeout": 3})
        Base.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - not reachable: the tests fall back to SQLite
        return False


def control_plane_env(state_dir: Path) -> dict[str, Any]:
    """Environment for the control plane's Service (root namespace): a cluster keeps
    its state in PostgreSQL (SQLite when PostgreSQL is not running here)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    (state_dir / "config.toml").write_text(
        "[cluster]\nroute_guests = true\nplace_local = false\n")
    env = {"VPS_STATE_DIR": str(state_dir), "VPS_CONFIG": str(state_dir / "config.toml"),
           "VPS_SUBNET": GUEST_SUBNET, "VPS_BRIDGE_PREFIX": GUEST_PREFIX,
           "VPS_NAT_TABLE": NAT_TABLE}
    if fresh_postgres():
        env["VPS_DB_URL"] = PG_URL
    return env
