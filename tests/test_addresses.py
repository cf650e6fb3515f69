"""Unit tests of the address plan: pure logic, no root needed."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpshost.config import NetworkConfig
from vpshost.errors import Conflict, UsageError
from vpshost.host.addresses import AddressPlan, PoolExhausted, mac_for


def plan(**kw: object) -> AddressPlan:
    return AddressPlan(NetworkConfig(**kw))  # type: ignore[arg-type]


def test_default_segments_and_gateways() -> None:
    p = plan()
    assert p.segment_count == 64
    assert p.per_segment == 1021
    s0, s1 = p.segment(0), p.segment(1)
    assert (s0.bridge, s0.network, s0.gateway, s0.prefixlen) == (
        "vpsbr0", "10.88.0.0/22", "10.88.0.1", 22)
    assert (s1.bridge, s1.network, s1.gateway) == ("vpsbr1", "10.88.4.0/22", "10.88.4.1")
    assert p.allocate(set()) == "10.88.0.2"
    assert p.segment_of("10.88.7.254").index == 1
    assert p.segment_of_bridge("vpsbr63").network == "10.88.252.0/22"


@settings(max_examples=30, deadline=None)
@given(subnet_len=st.integers(16, 28), extra=st.integers(0, 4), count=st.integers(1, 300),
       seed=st.randoms(use_true_random=False))
def test_allocations_unique_valid_and_consistent(subnet_len: int, extra: int, count: int,
                                                 seed: object) -> None:
    seg_len = min(30, subnet_len + extra)
    p = plan(subnet=f"10.77.0.0/{subnet_len}", segment_prefixlen=seg_len, bridge_prefix="vt")
    subnet = ipaddress.IPv4Network(f"10.77.0.0/{subnet_len}")
    used: set[str] = set()
    for _ in range(min(count, p.capacity)):
        ip = p.allocate(used)
        assert ip not in used
        used.add(ip)
        addr = ipaddress.IPv4Address(ip)
        assert addr in subnet
        seg = p.segment_of(ip)
        net = ipaddress.IPv4Network(seg.network)
        assert addr in net
        assert addr not in (net.network_address, net.broadcast_address,
                            ipaddress.IPv4Address(seg.gateway))
        assert seg.gateway == str(net.network_address + 1)
        assert seg.bridge == f"vt{seg.index}"
        assert p.segment_of_bridge(seg.bridge) == seg
        spec = p.netspec(ip, mac_for(1))
        assert (spec.bridge, spec.gateway, spec.prefixlen) == (seg.bridge, seg.gateway,
                                                               seg_len)
    # Freeing one address makes it the next allocation (lowest free first).
    victim = sorted(used, key=ipaddress.IPv4Address)[len(used) // 2]  # type: ignore[arg-type]
    used.discard(victim)
    assert p.allocate(used) == victim


def test_exhaustion_message() -> None:
    p = plan(subnet="10.77.0.0/28", segment_prefixlen=30, bridge_prefix="vt")
    used: set[str] = set()
    for _ in range(p.capacity):
        used.add(p.allocate(used))
    assert len(used) == 4  # four /30 segments, one guest each
    with pytest.raises(PoolExhausted) as info:
        p.allocate(used | {"192.0.2.9", "garbage", "fd00::1"})
    assert str(info.value) == ("address pool 10.77.0.0/28 is exhausted (4 addresses in "
                               "use); widen [network] subnet in the config")
    assert isinstance(info.value, Conflict)


def test_allocate_is_fast_with_2000_used() -> None:
    p = plan()
    used: set[str] = set()
    for _ in range(2000):
        used.add(p.allocate(used))
    assert len({p.segment_of(ip).bridge for ip in used}) == 2
    start = time.perf_counter()
    p.allocate(used)
    assert time.perf_counter() - start < 0.010


@pytest.mark.parametrize(("kw", "setting"), [
    ({"subnet": "fd00::/64"}, "subnet"),
    ({"subnet": "10.88.0.1/16"}, "subnet"),
    ({"subnet": "nonsense"}, "subnet"),
    ({"subnet": "10.88.0.0/31", "segment_prefixlen": 31}, "subnet"),
    ({"segment_prefixlen": 15}, "segment_prefixlen"),
    ({"segment_prefixlen": 31}, "segment_prefixlen"),
    ({"bridge_prefix": "br1"}, "bridge_prefix"),
    ({"bridge_prefix": ""}, "bridge_prefix"),
    ({"bridge_prefix": "averyverylongname"}, "bridge_prefix"),
    ({"subnet6": "10.0.0.0/8"}, "subnet6"),
    ({"subnet6": "fd88::/91"}, "subnet6"),  # 6 segment bits do not fit above /96
])
def test_bad_configs_refused(kw: dict[str, object], setting: str) -> None:
    with pytest.raises(UsageError) as info:
        plan(**kw)
    assert f"[network] {setting}" in str(info.value)


def test_reserved_and_foreign_addresses_refused() -> None:
    p = plan()
    for ip in ("10.88.0.0", "10.88.0.1", "10.88.3.255", "10.88.4.1", "10.89.0.5", "x"):
        assert not p.is_guest_address(ip)
        with pytest.raises(UsageError):
            p.netspec(ip, mac_for(1))
    assert p.check_guest_address("10.88.3.254") == "10.88.3.254"


@given(st.integers(0, 2**24 - 1), st.integers(0, 2**24 - 1))
def test_macs_stable_unique_local_unicast(a: int, b: int) -> None:
    ma = mac_for(a)
    assert ma == mac_for(a) == AddressPlan.mac_for(a)
    first = int(ma.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert len(ma) == 17
    assert (ma == mac_for(b)) == (a == b)


def test_mac_out_of_range() -> None:
    for bad in (-1, 2**24):
        with pytest.raises(UsageError):
            mac_for(bad)


@settings(max_examples=50)
@given(st.integers(0, 63 * 1024 + 1023))
def test_ipv6_pairs_with_ipv4(offset: int) -> None:
    p = plan(subnet6="fd88::/64")
    ip = str(ipaddress.IPv4Address("10.88.0.0") + offset)
    if not p.is_guest_address(ip):
        return
    seg = p.segment_of(ip)
    spec = p.netspec(ip, mac_for(3))
    addr6 = ipaddress.IPv6Address(spec.ip6)
    assert addr6 in ipaddress.IPv6Network(seg.network6)
    assert int(addr6) & 0xFFFFFFFF == int(ipaddress.IPv4Address(ip))  # low 32 bits = IPv4
    assert spec.gateway6 == seg.gateway6 != spec.ip6
    assert spec.prefixlen6 == 96
    assert ipaddress.IPv6Network(seg.network6).subnet_of(ipaddress.IPv6Network("fd88::/64"))


def test_ipv6_examples_and_errors() -> None:
    p = plan(subnet6="fd88::/64")
    assert p.segment(0).gateway6 == "fd88::a58:1"
    assert p.segment(1).network6 == "fd88::1:0:0/96"
    assert p.segment(1).gateway6 == "fd88::1:a58:401"
    assert p.ip6_for("10.88.4.5") == "fd88::1:a58:405"
    assert p.allocate6(set()) == "fd88::a58:2"
    assert p.allocate6({"fd88::a58:2"}) == "fd88::a58:3"
    assert p.allocate6(set(), ip="10.88.4.5") == "fd88::1:a58:405"
    with pytest.raises(Conflict):
        p.allocate6({"fd88::1:a58:405"}, ip="10.88.4.5")
    with pytest.raises(UsageError):  # an IPv6 address of another segment's slice
        p.netspec("10.88.4.5", mac_for(1), ip6="fd88::a58:5")
    with pytest.raises(UsageError):
        p.netspec("10.88.4.5", mac_for(1), ip6="fd88::1:a58:401")  # the gateway
    v4only = plan()
    assert v4only.netspec("10.88.0.2", mac_for(1)).ip6 == ""
    with pytest.raises(UsageError):
        v4only.allocate6(set())
    with pytest.raises(UsageError):
        v4only.netspec("10.88.0.2", mac_for(1), ip6="fd88::a58:2")
