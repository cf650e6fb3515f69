"""Live migration of a real VM (QEMU under TCG here) between two namespace hosts.

Each host is a network namespace with its own `vps agent` (tests/cluster_env.py). This
module uses its own uplink bridge, addresses, guest subnet and NAT table, so it can
run while test_cluster.py runs. A tiny VM counts on its disk and streams that count
over TCP to a client in the root namespace; it moves h0 -> h1 with Service.migrate
(live=True): the connection must survive, the counter continue, the address stay.
While it moves, the source's progress arrives as samples (phase, bytes) through the
source agent. Then the target agent is killed halfway through a move: the guest must
stay running on the source and nothing of it may remain on the target.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import cluster_env
from tests.cluster_env import NsHost, control_plane_env, destroy_hosts, make_hosts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.qemu,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("qemu-system-x86_64"),
                       reason="needs root and qemu-system-x86_64: namespace hosts run "
                              "real agents and VMs"),
]

TAG = "m"
ISOLATION = {"UPLINK": "vpsclm0", "UPLINK_NET": "10.98.0", "GUEST_SUBNET": "10.246.0.0/16",
             "NAT_TABLE": "vpsclm"}
PORT = 7000
PHASES = ["disk-mirror", "ram-precopy", "postcopy", "completing", "done"]
COUNTER = ("i=0; while true; do i=$((i+1)); echo $i >> /data/counter.log; "
           "echo $i > /data/counter; sleep 0.1; done")
SERVER = "#!/bin/sh\nwhile true; do echo \"tick $(cat /data/counter)\"; sleep 0.1; done\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="vpsmig-", dir="/var/tmp"))
    root.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ISOLATION.items():
            mp.setattr(cluster_env, k, v)
        # the shared PostgreSQL test database is emptied by every cluster run: keep
        # this module's control plane in its own SQLite store instead
        mp.setattr(cluster_env, "fresh_postgres", lambda *_a: False)
        mp.delenv("VPS_DB_URL", raising=False)
        hosts: list[NsHost] = []
        try:
            hosts = make_hosts(root, 2, TAG)
            env = control_plane_env(root / "control")
            for k, v in env.items():
                mp.setenv(k, v)
            from vpshost.service import Service

            svc = Service()
            for h in hosts:
                svc.host_add(h.name, h.url, h.secret)
            yield {"svc": svc, "hosts": hosts, "root": root}
            for inst in svc.list():
                with suppress(Exception):  # keep tearing down
                    svc.delete(inst["name"], force=True)
        finally:
            destroy_hosts(hosts, TAG)
            keep = Path("/var/tmp/vpsmig-last-logs")  # agent logs of the last run
            shutil.rmtree(keep, ignore_errors=True)
            keep.mkdir()
            for h in hosts:
                with suppress(OSError):
                    shutil.copy(h.state_dir / "agent.log", keep / f"{h.name}.log")
            for line in cluster_env.sh("ip", "route", "show").stdout.splitlines():
                if line.startswith("10.246."):
                    cluster_env.sh("ip", "route", "del", line.split()[0], check=False)
            cluster_env.sh("ip", "link", "del", ISOLATION["UPLINK"], check=False)
            shutil.rmtree(root, ignore_errors=True)


def _vm(svc: Any, name: str, host: str) -> dict[str, Any]:
    from vpshost.models import Plan
    from vpshost.service import CreateRequest

    inst: dict[str, Any] = svc.create(CreateRequest(
        name=name, type="vm", image="tiny", plan=Plan(memory_mb=256, disk_mb=1024),
        host=host, start=True))
    assert inst["host"] == host and inst["state"] == "running"
    bg = f"setsid sh -c '{COUNTER}' >/dev/null 2>&1 </dev/null &"
    assert svc.exec(name, ["sh", "-c", bg]).returncode == 0
    return inst


def _counter_log(svc: Any, name: str) -> list[int]:
    out = svc.exec(name, ["cat", "/data/counter.log"]).stdout.split()
    return [int(x) for x in out]


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _leftovers(host: NsHost, name: str) -> list[str]:
    """What the host still has of the guest: its dir, or a QEMU naming it."""
    d = host.state_dir / "guests" / name
    found = [str(d)] if d.exists() else []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "qemu-system" in cmd and str(d) in cmd:
            found.append(f"pid {p.pid}")
    return found


def _check_progress(samples: list[dict[str, Any]], mig: dict[str, Any]) -> None:
    """Several samples came while it sent, each new, the bytes sent only growing and
    the phases in their order, ending with done."""
    phases = [s["phase"] for s in samples]
    sent = [s["transferred_bytes"] for s in samples]
    print(f"\nprogress: {len(samples)} samples over {samples[-1]['elapsed_s']} s: "
          + ", ".join(f"{s['phase']} {s['percent']}% {s['transferred_bytes'] >> 20} MiB"
                      for s in samples))
    assert len(samples) >= 3, samples
    seqs = [s["seq"] for s in samples]
    assert seqs == sorted(set(seqs)), seqs
    assert sent == sorted(sent) and sent[-1] > sent[0], sent
    assert phases == sorted(phases, key=PHASES.index), phases
    assert phases[0] in ("disk-mirror", "ram-precopy") and phases[-1] == "done", phases
    assert "postcopy" not in phases  # not asked for
    for s in samples:
        assert 0.0 <= s["percent"] <= 100.0 and s["done_bytes"] <= s["total_bytes"], s
    # the last sample knows the whole RAM transfer the move reports
    assert samples[-1]["ram_bytes"] == mig["ram_bytes"] > 0
    assert samples[-1]["passes"] == mig["dirty_passes"]


class Client:
    """A TCP client in the root namespace: records every line and when it came."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.create_connection((ip, PORT), timeout=10)
        self.sock.settimeout(60)
        self.lines: list[tuple[float, str]] = []
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        try:
            while chunk := self.sock.recv(4096):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.lines.append((time.monotonic(), line.decode()))
        except OSError:
            pass
        self.closed = True

    def ticks(self) -> list[int]:
        return [int(line.split()[1]) for _t, line in self.lines if line.startswith("tick ")
                and line.split()[1:2] and line.split()[1].isdigit()]

    def max_gap(self, start: float, end: float) -> float:
        times = [t for t, _ in self.lines if start - 1 <= t <= end + 5]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=-1.0)

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


def _api_move_reports_progress(svc: Any, name: str, to: str) -> None:
    from fastapi.testclient import TestClient

    from vpshost.api.app import create_app

    admin = {"Authorization": f"Bearer {svc.token_create('migadmin', admin=True)}"}
    with TestClient(create_app(svc)) as api:
        r = api.post(f"/api/v1/instances/{name}/migrate", json={"to": to, "live": True},
                     headers=admin)
        assert r.status_code == 202, r.text
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            op = api.get(r.json()["href"], headers=admin).json()
            if op["status"] != "running":
                break
            if op["progress"]:
                seen.append(op["progress"])
            time.sleep(0.02)
    assert op["status"] == "success", op
    assert op["result"]["host"] == to and op["progress"] is None
    assert seen, "no progress while the move ran"
    assert {p["phase"] for p in seen} <= {"disk-mirror", "ram-precopy", "postcopy",
                                           "completing", "done"}, seen
    sent = [p["transferred_bytes"] for p in seen]
    assert sent == sorted(sent) and sent[-1] > 0


def test_live_migration_keeps_connection_counter_and_address(
        cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from vpshost.cluster import migration

    # this small VM's send takes well under a second here (a sub-second mirror and RAM
    # copy): poll its progress every 0.1 s instead of 0.5 s to see several samples
    monkeypatch.setattr(migration, "POLL_S", 0.1)
    svc, hosts = cluster["svc"], cluster["hosts"]
    inst = _vm(svc, "mig-live", "h0")
    ip = inst["ip"]
    script = base64.b64encode(SERVER.encode()).decode()
    start_server = (f"echo {script} | base64 -d > /tmp/srv.sh; chmod +x /tmp/srv.sh; "
                    f"setsid nc -l -p {PORT} -e /tmp/srv.sh >/dev/null 2>&1 </dev/null &")
    assert svc.exec("mig-live", ["sh", "-c", start_server]).returncode == 0
    client = None
    for _ in range(50):  # nc needs a moment to listen
        with suppress(OSError):
            client = Client(ip)
            break
        time.sleep(0.2)
    assert client is not None, "cannot connect to the server in the VM"
    try:
        assert _wait(lambda: len(client.ticks()) >= 10, 30), client.lines[-5:]
        t_start = time.monotonic()
        samples: list[dict[str, Any]] = []
        moved = svc.migrate("mig-live", to="h1", live=True, sample=samples.append)
        t_end = time.monotonic()
        mig = moved["migration"]
        gap = client.max_gap(t_start, t_end)
        print(f"\nlive migration (accel {mig.get('accel')}): downtime {mig['downtime_ms']} ms "
              f"(QEMU's own {mig.get('qemu_downtime_ms')} ms), total {mig['total_ms']} ms, "
              f"largest gap seen by the TCP client {gap * 1000:.0f} ms; {mig}")
        assert moved["host"] == "h1" and moved["state"] == "running" and moved["ip"] == ip
        assert mig["mode"] == "live"
        _check_progress(samples, mig)
        for key in ("downtime_ms", "qemu_downtime_ms", "total_ms"):
            assert isinstance(mig[key], int) and 0 <= mig[key] < 60_000, (key, mig[key])
        assert mig["downtime_ms"] >= mig["qemu_downtime_ms"]
        # the connection survives: ticks keep coming after the move, on the same socket
        before = len(client.ticks())
        assert _wait(lambda: len(client.ticks()) >= before + 10, 30), \
            f"no data after the move (closed={client.closed}): {client.lines[-5:]}"
        assert not client.closed
        ticks = client.ticks()
        assert ticks == sorted(ticks) and ticks[-1] > ticks[0]
        # the counter continues: one log line per count, no reset, nothing lost
        log = _counter_log(svc, "mig-live")
        assert log == list(range(1, len(log) + 1)), "the counter reset or skipped"
        assert log[-1] >= ticks[-1]
        # the guest keeps its address and is reachable on its new host
        eth = svc.exec("mig-live", ["ip", "-4", "addr", "show", "eth0"]).stdout
        assert ip in eth
        route = subprocess.run(["ip", "route", "get", ip], capture_output=True,
                               text=True).stdout
        assert hosts[1].addr in route
        assert _leftovers(hosts[0], "mig-live") == []
        # the target's disk is standalone: no base image of h1 underneath
        info = hosts[1].run("qemu-img", "info", "-U", str(
            hosts[1].state_dir / "guests" / "mig-live" / "disk.qcow2")).stdout
        assert "backing file" not in info
        # and back with the real CLI: its progress comes as plain lines (no terminal)
        r = subprocess.run([cluster_env.VPS, "migrate", "mig-live", "--to", "h0", "--live"],
                           capture_output=True, text=True, timeout=300)
        print(r.stderr)
        assert r.returncode == 0, r.stderr
        assert any(line.startswith("done ") and "100.0%" in line
                   for line in r.stderr.splitlines()), r.stderr
        assert "mig-live: now on h0 (live;" in r.stdout
        assert svc.show("mig-live")["host"] == "h0"
        # once more on a terminal (a pty from script(1)): the Rich progress bar
        cmd = shlex.join([cluster_env.VPS, "migrate", "mig-live", "--to", "h1", "--live"])
        r = subprocess.run(["script", "-qefc", cmd, "/dev/null"], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, COLUMNS="150"))
        assert r.returncode == 0, r.stdout
        screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.stdout)  # colours, cursor moves
        print("\n".join(screen.replace("\r", "\n").splitlines()[-2:]))
        assert "━" in screen and re.search(r"done\s+━+\s+100%\s+sent", screen), screen
        assert "mig-live: now on h1 (live;" in screen
        # and through the REST API: the running operation carries the live progress
        _api_move_reports_progress(svc, "mig-live", "h0")
        n = len(client.ticks())
        assert _wait(lambda: len(client.ticks()) >= n + 5, 30) and not client.closed
    finally:
        client.close()
        svc.delete("mig-live", force=True)


@pytest.mark.parametrize("when", ["after_prepare", "during_send"])
def test_target_agent_killed_halfway_leaves_guest_on_source(
        cluster: dict[str, Any], when: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from vpshost.agent.client import RemoteDriver
    from vpshost.errors import VpsError

    svc, hosts = cluster["svc"], cluster["hosts"]
    name = f"mig-kill-{when.split('_')[0]}"
    _vm(svc, name, "h0")
    original = RemoteDriver.migrate_prepare

    def prepare_then_kill(self: RemoteDriver, guest: Any, listen_host: str) -> Any:
        result = original(self, guest, listen_host)
        if self.agent.host == "h1":
            if when == "after_prepare":
                hosts[1].kill_agent()
            else:  # while the disk mirror and RAM copy are running
                threading.Timer(0.3, hosts[1].kill_agent).start()
        return result

    monkeypatch.setattr(RemoteDriver, "migrate_prepare", prepare_then_kill)
    try:
        with pytest.raises(VpsError) as err:
            svc.migrate(name, to="h1", live=True)
        print(f"\n{when}: {err.value}")
        monkeypatch.undo()
        shown = svc.show(name)
        assert shown["host"] == "h0" and shown["state"] == "running", shown
        before = _counter_log(svc, name)[-1]
        assert _wait(lambda: _counter_log(svc, name)[-1] > before, 10), "guest not running"
        assert svc.exec(name, ["echo", "alive"]).stdout.strip() == "alive"
        # the sentinel removed the incoming QEMU and its files on the target
        assert _wait(lambda: _leftovers(hosts[1], name) == [], 15), \
            _leftovers(hosts[1], name)
    finally:
        hosts[1].kill_agent()
        hosts[1].start_agent()
        svc.delete(name, force=True)
