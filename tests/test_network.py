"""Host networking against the real kernel: bridges, routing between segments, NAT.

Guests are stood in for by network namespaces wired to the segment bridges by veth
pairs, exactly as LXC wires a container. Needs root; the rendering tests do not.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from vpshost import runner
from vpshost.config import NetworkConfig
from vpshost.errors import CommandError, Conflict, UsageError
from vpshost.host import network
from vpshost.host.addresses import AddressPlan, mac_for
from vpshost.host.network import Forward

CFG = NetworkConfig(subnet="10.251.0.0/16", subnet6="fd51::/64", bridge_prefix="vpsq",
                    nft_table="vpstest")
PORT = 18080  # host port forwarded to the server in namespace B
NAMESPACES = ("vpsq-ns-a", "vpsq-ns-b", "vpsq-ns-c")
IDS = (16777001, 16777002, 16777003)  # far above any real guest id; gives vpsveth16777001...

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bridges, nftables)")

# Runs inside a namespace: one ICMP (v4) or ICMPv6 echo, exit 0 when answered.
PING = r"""
import socket, struct, sys
dst = sys.argv[1]
v6 = ":" in dst
fam, proto, kind = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128) if v6
                    else (socket.AF_INET, socket.IPPROTO_ICMP, 8))
s = socket.socket(fam, socket.SOCK_RAW, proto)
s.settimeout(3)
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
body = struct.pack("!HH", 0x77, 1) + b"vpshost"
head = struct.pack("!BBH", kind, 0, 0)
pkt = head if v6 else struct.pack("!BBH", kind, 0, csum(head + body))
s.sendto(pkt + body, (dst, 0))
while True:
    data, _ = s.recvfrom(2048)
    icmp = data if v6 else data[(data[0] & 15) * 4:]
    if icmp[0] == (129 if v6 else 0) and icmp[4:6] == b"\0\x77":
        sys.exit(0)
"""

# Runs inside a namespace: connect, print what the server says.
CONNECT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    print(c.recv(100).decode().strip())
"""


def in_ns(ns: str, *argv: str, check: bool = True) -> runner.Result:
    return runner.run(["ip", "netns", "exec", ns, *argv], timeout=15, check=check)


def ping(ns: str, dst: str) -> bool:
    return in_ns(ns, sys.executable, "-c", PING, dst, check=False).ok


def fetch_from_host(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as conn:
        return conn.recv(100).decode().strip()


def nft_table() -> str:
    return runner.run(["nft", "list", "table", "inet", CFG.nft_table], check=False).stdout


def cleanup() -> None:
    for ns in NAMESPACES:
        runner.run(["ip", "netns", "del", ns], check=False)
    for i in IDS:
        network.delete_link(network.host_veth_name(i))
    network.teardown(CFG)


@pytest.fixture
def guests() -> Iterator[dict[str, dict[str, str]]]:
    """Three 'guests': namespace A on segment 0, B and C on segment 1."""
    cleanup()
    plan = AddressPlan(CFG)
    try:
        out = {}
        seg1 = ipaddress.IPv4Network(plan.segment(1).network)
        ips = [plan.allocate(set()), str(seg1.network_address + 2),
               str(seg1.network_address + 3)]
        for ns, ident, ip in zip(NAMESPACES, IDS, ips, strict=True):
            spec = plan.netspec(ip, mac_for(ident))
            assert network.ensure_bridge(CFG, plan.segment_of(ip)) == spec.bridge
            host_if = network.host_veth_name(ident)
            runner.run(["ip", "netns", "add", ns])
            runner.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name",
                        "eth0", "netns", ns])
            runner.run(["ip", "link", "set", host_if, "master", spec.bridge, "up"])
            in_ns(ns, "ip", "link", "set", "eth0", "address", spec.mac, "up")
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "addr", "add", f"{spec.ip}/{spec.prefixlen}", "dev", "eth0")
            in_ns(ns, "ip", "-6", "addr", "add", f"{spec.ip6}/{spec.prefixlen6}", "dev",
                  "eth0", "nodad")
            in_ns(ns, "ip", "route", "add", "default", "via", spec.gateway)
            in_ns(ns, "ip", "-6", "route", "add", "default", "via", spec.gateway6)
            out[ns] = {"ip": spec.ip, "ip6": spec.ip6, "gw": spec.gateway,
                       "gw6": spec.gateway6, "host_if": host_if, "bridge": spec.bridge}
        yield out
    finally:
        cleanup()


@root_only
def test_bridges_routing_forwards_and_teardown(guests: dict[str, dict[str, str]]) -> None:
    a, b, c = (guests[ns] for ns in NAMESPACES)
    assert (a["bridge"], a["gw"], b["bridge"], b["gw"]) == (
        "vpsq0", "10.251.0.1", "vpsq1", "10.251.4.1")
    assert network.bridges(CFG) == ["vpsq0", "vpsq1"]

    # Idempotent, and cheap once in place (called on every guest start).
    start = time.perf_counter()
    assert network.ensure_bridge(CFG, 0) == "vpsq0"
    assert time.perf_counter() - start < 0.005
    assert open_or_empty("/proc/sys/net/ipv4/ip_forward") == "1"

    # Gateways, and the other segment routed through the host, v4 and v6.
    assert ping(NAMESPACES[0], a["gw"])
    assert ping(NAMESPACES[1], b["gw"])
    assert ping(NAMESPACES[0], b["ip"])
    assert ping(NAMESPACES[1], a["ip"])
    assert ping(NAMESPACES[0], a["gw6"])
    assert ping(NAMESPACES[0], b["ip6"])

    network.sync_nat(CFG, [Forward("tcp", PORT, b["ip"], 8080)])
    server = subprocess.Popen(
        ["ip", "netns", "exec", NAMESPACES[1], "socat", "TCP-LISTEN:8080,reuseaddr,fork",
         "SYSTEM:echo pong-b"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not in_ns(NAMESPACES[1], sys.executable, "-c", CONNECT, b["ip"], "8080",
                        check=False).ok:
            assert time.monotonic() < deadline, "socat did not start listening"
            time.sleep(0.05)
        # From the host to the gateway address of segment 0 (and of segment 1).
        assert fetch_from_host(a["gw"], PORT) == "pong-b"
        assert fetch_from_host(b["gw"], PORT) == "pong-b"
        # From the host to its own primary address, if it has one.
        primary = _primary_address()
        if primary:
            assert fetch_from_host(primary, PORT) == "pong-b"
        # Hairpin through the host: from guest A (other segment) and from guest C
        # (B's own bridge, where br_netfilter, if loaded, bridges the DNATed packet).
        assert in_ns(NAMESPACES[0], sys.executable, "-c", CONNECT, a["gw"],
                     str(PORT)).stdout.strip() == "pong-b"
        assert in_ns(NAMESPACES[2], sys.executable, "-c", CONNECT, c["gw"],
                     str(PORT)).stdout.strip() == "pong-b"
        if open_or_empty("/proc/sys/net/bridge/bridge-nf-call-iptables") != "1":
            # B to its own forwarded port. With br_netfilter calling the IP hooks the
            # DNATed frame is bridged back out its ingress port and dropped (the port
            # would need hairpin mode), so only checked without it.
            assert in_ns(NAMESPACES[1], sys.executable, "-c", CONNECT, b["gw"],
                         str(PORT)).stdout.strip() == "pong-b"
        # Re-applying is atomic and idempotent.
        network.sync_nat(CFG, [Forward("tcp", PORT, b["ip"], 8080)])
        assert fetch_from_host(a["gw"], PORT) == "pong-b"

        network.sync_nat(CFG, [])
        assert f"dport {PORT}" not in nft_table()
        assert "masquerade" in nft_table()
        with pytest.raises(OSError):
            fetch_from_host(a["gw"], PORT)
    finally:
        server.terminate()
        server.wait(5)

    network.teardown(CFG)
    assert network.bridges(CFG) == []
    assert not any(n.startswith("vpsq") and n[4:].isdigit() for n in os.listdir(
        "/sys/class/net"))
    with pytest.raises(CommandError):
        runner.run(["nft", "list", "table", "inet", CFG.nft_table])
    network.teardown(CFG)  # idempotent


def open_or_empty(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _primary_address() -> str:
    """The host's source address toward its default route, if any (not ours)."""
    route = runner.run(["ip", "-4", "route", "get", "192.0.2.250"], check=False).stdout
    words = route.split()
    if "src" in words:
        src = words[words.index("src") + 1]
        if ipaddress.IPv4Address(src) not in ipaddress.IPv4Network(CFG.subnet):
            return src
    return ""


@root_only
def test_bandwidth_limits(guests: dict[str, dict[str, str]]) -> None:
    ifname = guests[NAMESPACES[0]]["host_if"]
    network.set_egress_limit(ifname, 20)
    network.set_ingress_limit(ifname, 10)
    network.set_ingress_limit(ifname, 15)  # replaces, does not stack
    qdiscs = runner.run(["tc", "qdisc", "show", "dev", ifname]).stdout
    assert "tbf" in qdiscs and "20Mbit" in qdiscs and "ingress" in qdiscs
    ifb = network.ifb_name(ifname)
    assert "15Mbit" in runner.run(["tc", "qdisc", "show", "dev", ifb]).stdout
    assert ping(NAMESPACES[0], guests[NAMESPACES[0]]["gw"])  # traffic still flows
    network.clear_limits(ifname)
    qdiscs = runner.run(["tc", "qdisc", "show", "dev", ifname]).stdout
    assert "tbf" not in qdiscs and "ingress" not in qdiscs
    assert not os.path.exists(f"/sys/class/net/{ifb}")
    network.clear_limits(ifname)  # nothing left to clear: no error
    network.set_ingress_limit(ifname, 5)
    ifb = network.ifb_name(ifname)
    assert network.prune_ifbs() == []  # its interface is alive
    network.delete_link(ifname)  # deleted without clear_limits
    assert network.prune_ifbs() == [ifb]


@root_only
def test_tap_on_bridge() -> None:
    try:
        bridge = network.ensure_bridge(CFG, 2)
        name = network.ensure_tap(IDS[0], bridge)
        assert name == network.tap_name(IDS[0])
        assert network.ensure_tap(IDS[0], bridge) == name
        assert os.path.realpath(f"/sys/class/net/{name}/master").endswith("/" + bridge)
        assert network.delete_link(name)
        assert not network.delete_link(name)
    finally:
        network.delete_link(network.tap_name(IDS[0]))
        network.teardown(CFG)


# -- rendering and names: no root needed ----------------------------------------------

def test_render_nat_rules() -> None:
    text = network.render_nat(CFG, [Forward("udp", 5353, "10.251.0.9", 53),
                                     Forward("tcp", 2222, "10.251.4.2", 22)])
    assert text.startswith("add table inet vpstest\ndelete table inet vpstest\n")
    assert text.count("dnat ip to 10.251.4.2:22") == 2  # prerouting and output
    assert "udp dport 5353 dnat ip to 10.251.0.9:53" in text
    assert "ip saddr 10.251.0.0/16 ip daddr != 10.251.0.0/16 masquerade" in text
    assert "ip6 saddr fd51::/64 ip6 daddr != fd51::/64 masquerade" in text
    no_nat = NetworkConfig(subnet="10.251.0.0/16", bridge_prefix="vpsq", nat=False,
                           nft_table="vpstest")
    text = network.render_nat(no_nat, [])
    assert "daddr != 10.251.0.0/16 masquerade" not in text
    assert "ct status dnat" in text  # hairpin stays: forwards still work


def test_render_nat_refuses_bad_input() -> None:
    with pytest.raises(Conflict):
        network.render_nat(CFG, [Forward("tcp", 80, "10.251.0.2", 80),
                                 Forward("tcp", 80, "10.251.0.3", 80)])
    with pytest.raises(UsageError):
        network.render_nat(CFG, [Forward("tcp", 80, "192.0.2.7", 80)])
    with pytest.raises(UsageError):
        network.render_nat(CFG, [Forward("tcp", 80, "10.251.0.1", 80)])  # the gateway
    with pytest.raises(UsageError):
        Forward("icmp", 80, "10.251.0.2", 80)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        Forward("tcp", 0, "10.251.0.2", 80)
    with pytest.raises(UsageError):
        network.render_nat(NetworkConfig(nft_table="bad name; flush ruleset"), [])


def test_interface_names() -> None:
    assert network.host_veth_name(12) == "vpsveth12"
    assert network.tap_name(12) == "vpstap12"
    assert len(network.host_veth_name(2**24 - 1)) <= 15
    assert len(network.tap_name(2**24 - 1)) <= 15
    with pytest.raises(UsageError):
        network.tap_name(2**24)
    assert network.bridge_mac("vpsq0") == network.bridge_mac("vpsq0")
    assert network.bridge_mac("vpsq0") != network.bridge_mac("vpsq1")
