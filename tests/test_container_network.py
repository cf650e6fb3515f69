"""Container networking end to end with real LXC containers.

Container to container and container to host by assigned address (ping), between
segments through the host's routing, port forwards from the host into a container
(and gone again after `port remove`), and addresses that survive stop/start.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Env

pytestmark = pytest.mark.lxc


@pytest.fixture(scope="module")
def pair(vps_env: Env) -> Iterator[tuple[str, str]]:
    """Two running busybox containers on the default segment."""
    a, b = vps_env.unique("na"), vps_env.unique("nb")
    try:
        vps_env.create(a, memory_mb=64)
        vps_env.create(b, memory_mb=64)
        yield a, b
    finally:
        vps_env.remove(a)
        vps_env.remove(b)


def ip_of(env: Env, name: str) -> str:
    ip = env.service.show(name)["ip"]
    assert ip
    return ip


def gateway_of(env: Env, ip: str) -> str:
    return env.service.addresses.segment_of(ip).gateway


def ping(env: Env, name: str, target: str) -> bool:
    return env.sh(name, f"ping -c 1 -W 3 {target}").returncode == 0


def host_address() -> str | None:
    """The host's own address on its uplink, if it has one."""
    r = subprocess.run(["ip", "-j", "route", "get", "1.1.1.1"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        return None
    routes = json.loads(r.stdout or "[]")
    return routes[0].get("prefsrc") if routes else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


# busybox wget's -T (timeout) crashes the Debian 12 build (SIGSEGV): the exec's own
# timeout bounds these requests instead.
def http_get(host: str, port: int) -> str:
    """A minimal HTTP GET; raises OSError when nothing answers."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode(errors="replace")


# -- reachability ---------------------------------------------------------------------

def test_container_reaches_container_and_gateway_by_address(
        vps_env: Env, pair: tuple[str, str]) -> None:
    a, b = pair
    ip_a, ip_b = ip_of(vps_env, a), ip_of(vps_env, b)
    assert ip_a != ip_b
    # the address the store assigned is the one the container really has
    assert f"inet {ip_b}/" in vps_env.ok(b, "ip -4 addr show eth0")
    assert ping(vps_env, a, ip_b)
    assert ping(vps_env, b, ip_a)
    assert ping(vps_env, a, gateway_of(vps_env, ip_a))
    # and the host reaches the container
    # (busybox's ping: the host need not have iputils)
    r = subprocess.run(["busybox", "ping", "-c", "1", "-W", "3", ip_a], capture_output=True)
    assert r.returncode == 0


def test_containers_on_different_segments_reach_each_other_through_the_host(
        vps_env: Env, pair: tuple[str, str]) -> None:
    """Fill segment 0's free addresses with placeholder rows so the next container lands
    on segment 1 (its own bridge), then ping across."""
    from sqlalchemy import delete, insert, select

    from vpshost.store.schema import Instance

    svc = vps_env.service
    plan = svc.addresses
    seg0 = plan.segment(0)
    with svc.db.session() as s:
        used = set(s.scalars(select(Instance.ip).where(Instance.ip.is_not(None))))
    now = datetime.utcnow()
    fill = []
    for i in range(plan.per_segment):
        ip = str(plan.subnet.network_address + 2 + i)
        if ip not in used:
            fill.append({"name": f"seg-fill-{i}", "type": "container", "tenant": "default",
                         "host": vps_env.placeholder_host, "state": "stopped", "image": "busybox",
                         "privileged": False, "vcpus": 1, "memory_mb": 16, "swap_mb": 0,
                         "disk_mb": 16, "options": {}, "ip": ip, "created_at": now,
                         "updated_at": now})
    far = vps_env.unique("far")
    try:
        with svc.db.session() as s:
            s.execute(insert(Instance), fill)
        vps_env.create(far, memory_mb=64)
        ip_far = ip_of(vps_env, far)
        seg = plan.segment_of(ip_far)
        assert seg.index == 1 and seg.bridge != seg0.bridge
        assert f"inet {ip_far}/{seg.prefixlen}" in vps_env.ok(far, "ip -4 addr show eth0")
        a = pair[0]
        ip_a = ip_of(vps_env, a)
        assert plan.segment_of(ip_a).index == 0
        assert ping(vps_env, far, ip_a)
        assert ping(vps_env, a, ip_far)
        assert ping(vps_env, far, seg.gateway)
    finally:
        with svc.db.session() as s:
            s.execute(delete(Instance).where(Instance.name.like("seg-fill-%")))
        vps_env.remove(far)


# -- port forwards --------------------------------------------------------------------

def test_port_forward_reaches_a_server_in_the_container_and_goes_away(
        vps_env: Env, pair: tuple[str, str]) -> None:
    a, b = pair
    marker = f"hello-from-{a}"
    vps_env.ok(a, f"mkdir -p /www && echo {marker} > /www/index.html && "
                  "httpd -p 80 -h /www")
    port = free_port()
    r = vps_env.cli("port", "add", a, f"{port}:80")
    assert r.returncode == 0, r.stderr
    gateway = gateway_of(vps_env, ip_of(vps_env, a))
    targets = [gateway] + [h for h in (host_address(),) if h]
    try:
        for target in targets:
            assert marker in http_get(target, port), target
        # a neighbour container reaches it through the host too (hairpin NAT)
        for target in targets:
            got = vps_env.ok(b, f"wget -q -O - http://{target}:{port}/", timeout=20)
            assert marker in got, target
        listed = json.loads(vps_env.cli("port", "list", a, "--json").stdout)
        assert [(p["host_port"], p["guest_port"], p["guest_ip"]) for p in listed] == [
            (port, 80, ip_of(vps_env, a))]
    finally:
        r = vps_env.cli("port", "remove", a, str(port))
    assert r.returncode == 0, r.stderr
    assert json.loads(vps_env.cli("port", "list", a, "--json").stdout) == []
    for target in targets:
        with pytest.raises(OSError):
            http_get(target, port)
    # the server itself still runs: only the forward is gone
    assert marker in vps_env.ok(b, f"wget -q -O - http://{ip_of(vps_env, a)}/",
                                timeout=20)


def test_port_forward_to_a_taken_host_port_is_refused(
        vps_env: Env, pair: tuple[str, str]) -> None:
    a, b = pair
    port = free_port()
    assert vps_env.cli("port", "add", a, f"{port}:80").returncode == 0
    try:
        r = vps_env.cli("port", "add", b, f"{port}:80")
        assert r.returncode == 2
        assert "already forwarded" in r.stderr and "hint:" in r.stderr
    finally:
        vps_env.cli("port", "remove", a, str(port))


# -- addresses are kept -----------------------------------------------------------------

def test_address_is_kept_across_stop_and_start(
        vps_env: Env, make_container: Callable[..., str], pair: tuple[str, str]) -> None:
    name = make_container(memory_mb=64)
    ip = ip_of(vps_env, name)
    mac = vps_env.ok(name, "cat /sys/class/net/eth0/address").strip()

    assert vps_env.cli("stop", name).returncode == 0
    # another container created meanwhile must not take the stopped one's address
    other = make_container(memory_mb=64)
    assert ip_of(vps_env, other) != ip
    assert vps_env.cli("start", name).returncode == 0

    assert ip_of(vps_env, name) == ip
    assert f"inet {ip}/" in vps_env.ok(name, "ip -4 addr show eth0")
    assert vps_env.ok(name, "cat /sys/class/net/eth0/address").strip() == mac
    assert ping(vps_env, pair[0], ip)
