"""The guest address plan: which address, bridge and gateway each guest gets. Pure logic.

IPv4: the configured ``[network] subnet`` (default 10.88.0.0/16) is cut into segments
of ``segment_prefixlen`` (default /22). Segment k is served by its own Linux bridge
``f"{bridge_prefix}{k}"``; the host holds the segment's first usable address on that
bridge as the guests' gateway (10.88.0.1/22 on vpsbr0, 10.88.4.1/22 on vpsbr1, ...).
A /22 holds 1021 guests and a bridge takes 1023 ports, so no bridge ever fills up;
guests on different segments reach each other routed through the host.

IPv6 (only when ``subnet6`` is set, e.g. fd88::/64): segment k gets its own /96 slice,
``subnet6 + (k << 32)``, and every IPv6 address in it carries the matching IPv4 address
in its low 32 bits. So the guest 10.88.4.5 (segment 1) is fd88::1:a58:405/96 and
segment 1's gateway is fd88::1:a58:401 on vpsbr1; segment 0's gateway is fd88::a58:1.
One glance at an IPv6 address tells the guest's IPv4 address, and each bridge owns a
distinct on-link prefix, so the host routes between segments for IPv6 exactly as for
IPv4. ``subnet6`` needs room for the segment index above those 96 bits (a /64 leaves 32).

MACs: ``mac_for(id)`` is 0a:76:70 followed by the id's 24 bits: locally administered,
unicast, not QEMU's 52:54:00 (whose default MAC would collide), stable per id.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vpshost.config import NetworkConfig
from vpshost.errors import Conflict, UsageError
from vpshost.models import NetSpec

MAC_PREFIX = "0a:76:70"  # 0x0a: locally administered, unicast; 0x76 0x70 = "vp"
MAX_INSTANCE_ID = (1 << 24) - 1
IFNAMSIZ = 15  # longest Linux interface name
_BRIDGE_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
V6_SLICE_PREFIXLEN = 96


class PoolExhausted(Conflict):
    """Every guest address of the pool is taken; the config must grant a wider subnet."""


@dataclass(frozen=True)
class Segment:
    """One slice of the subnet and the bridge that serves it."""

    index: int
    bridge: str
    network: str  # "10.88.4.0/22"
    gateway: str  # "10.88.4.1": held by the host on ``bridge``
    prefixlen: int
    network6: str = ""  # "fd88::1:0:0/96" when IPv6 is on
    gateway6: str = ""
    prefixlen6: int = V6_SLICE_PREFIXLEN


def mac_for(instance_id: int) -> str:
    """A stable MAC for guest ``instance_id`` (0 .. 2**24-1), unique per id."""
    if not 0 <= instance_id <= MAX_INSTANCE_ID:
        raise UsageError(f"instance id {instance_id} has no MAC address",
                         f"ids must be between 0 and {MAX_INSTANCE_ID}")
    low = instance_id.to_bytes(3, "big")
    return MAC_PREFIX + "".join(f":{b:02x}" for b in low)


class AddressPlan:
    """The address plan derived from a ``NetworkConfig``; validates it on construction."""

    def __init__(self, cfg: NetworkConfig) -> None:
        self.cfg = cfg
        self.subnet = _parse_subnet(cfg.subnet)
        seg = cfg.segment_prefixlen
        if not isinstance(seg, int) or not self.subnet.prefixlen <= seg <= 30:
            raise UsageError(
                f"setting [network] segment_prefixlen = {seg} does not fit subnet "
                f"{self.subnet}",
                f"use a value between {self.subnet.prefixlen} (the subnet's own prefix) "
                "and 30; the default 22 gives 1021 guests per bridge")
        self.segment_prefixlen = seg
        self.segment_size = 1 << (32 - seg)
        self.segment_count = 1 << (seg - self.subnet.prefixlen)
        self.per_segment = self.segment_size - 3  # minus network, gateway, broadcast
        self.capacity = self.per_segment * self.segment_count
        self._base = int(self.subnet.network_address)
        self._check_bridge_prefix(cfg.bridge_prefix)
        self.bridge_prefix = cfg.bridge_prefix
        self.subnet6 = _parse_subnet6(cfg.subnet6, seg - self.subnet.prefixlen)

    def _check_bridge_prefix(self, prefix: str) -> None:
        longest = len(prefix) + len(str(self.segment_count - 1))
        if not _BRIDGE_PREFIX.match(prefix) or prefix[-1].isdigit() or longest > IFNAMSIZ:
            raise UsageError(
                f"setting [network] bridge_prefix = {prefix!r} is not usable",
                "use letters (then letters, digits, '-' or '_'), not ending in a digit, "
                f"short enough that prefix + segment number ({self.segment_count - 1}) "
                f"fits in {IFNAMSIZ} characters")

    # -- segments -------------------------------------------------------------------

    def segment(self, index: int) -> Segment:
        """Segment ``index`` (0-based) with its bridge, network and gateway."""
        if not 0 <= index < self.segment_count:
            raise UsageError(f"segment {index} is outside subnet {self.subnet}",
                             f"segments are 0..{self.segment_count - 1}")
        net_int = self._base + index * self.segment_size
        network = ipaddress.IPv4Network((net_int, self.segment_prefixlen))
        gateway = str(ipaddress.IPv4Address(net_int + 1))
        net6 = gw6 = ""
        if self.subnet6 is not None:
            slice_int = int(self.subnet6.network_address) + (index << 32)
            net6 = str(ipaddress.IPv6Network((slice_int, V6_SLICE_PREFIXLEN)))
            gw6 = str(ipaddress.IPv6Address(slice_int + net_int + 1))
        return Segment(index=index, bridge=f"{self.bridge_prefix}{index}",
                       network=str(network), gateway=gateway,
                       prefixlen=self.segment_prefixlen, network6=net6, gateway6=gw6)

    def segments(self) -> Iterator[Segment]:
        """Every segment, in order."""
        for index in range(self.segment_count):
            yield self.segment(index)

    def segment_of(self, ip: str) -> Segment:
        """The segment an IPv4 address of the subnet belongs to."""
        return self.segment(self._offset(ip) // self.segment_size)

    def segment_of_bridge(self, bridge: str) -> Segment:
        """The segment a bridge name of this plan serves."""
        tail = bridge[len(self.bridge_prefix):]
        if not bridge.startswith(self.bridge_prefix) or not tail.isdigit():
            raise UsageError(f"bridge {bridge!r} is not one of this host's segment bridges",
                             f"they are named {self.bridge_prefix}0, {self.bridge_prefix}1, ...")
        return self.segment(int(tail))

    # -- guest addresses -------------------------------------------------------------

    def _offset(self, ip: str) -> int:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"'{ip}' is not an IPv4 address") from None
        if addr not in self.subnet:
            raise UsageError(f"address {ip} is outside the guest subnet {self.subnet}",
                             "pick an address inside [network] subnet")
        return int(addr) - self._base

    def is_guest_address(self, ip: str) -> bool:
        """True for an address a guest may hold (not network, gateway or broadcast)."""
        try:
            offset = self._offset(ip)
        except UsageError:
            return False
        return 2 <= offset % self.segment_size <= self.segment_size - 2

    def check_guest_address(self, ip: str) -> str:
        """Validate an address a user asked for; returns it in canonical form."""
        segment = self.segment_of(ip)
        if not self.is_guest_address(ip):
            raise UsageError(
                f"address {ip} is reserved in segment {segment.network}",
                "the network, gateway and broadcast addresses of a segment are not "
                "guest addresses")
        return str(ipaddress.IPv4Address(ip))

    def _used_offsets(self, used: Iterable[str]) -> set[int]:
        offsets = set()
        for ip in used:
            try:
                value = int(ipaddress.IPv4Address(ip)) - self._base
            except ValueError:
                continue  # not IPv4 (an IPv6 address, or garbage): cannot collide
            if 0 <= value < self.subnet.num_addresses:
                offsets.add(value)
        return offsets

    def _guest_offsets(self) -> Iterator[int]:
        for start in range(0, self.subnet.num_addresses, self.segment_size):
            yield from range(start + 2, start + self.segment_size - 1)

    def allocate(self, used: set[str]) -> str:
        """The lowest free guest address across all segments.

        ``used``: the addresses already held by guests; others in it are ignored.
        Raises ``PoolExhausted`` naming the subnet when none is left.
        """
        taken = self._used_offsets(used)
        for offset in self._guest_offsets():
            if offset not in taken:
                return str(ipaddress.IPv4Address(self._base + offset))
        in_use = sum(1 for o in taken if 2 <= o % self.segment_size <= self.segment_size - 2)
        raise PoolExhausted(f"address pool {self.subnet} is exhausted ({in_use} addresses "
                            "in use); widen [network] subnet in the config")

    # -- IPv6 -------------------------------------------------------------------------

    def _require_v6(self) -> ipaddress.IPv6Network:
        if self.subnet6 is None:
            raise UsageError("IPv6 is off: [network] subnet6 is not set",
                             "set [network] subnet6, for example fd88::/64")
        return self.subnet6

    def ip6_for(self, ip: str) -> str:
        """The IPv6 address that pairs with guest IPv4 ``ip`` (see the module docstring)."""
        subnet6 = self._require_v6()
        segment = self.segment_of(ip)
        slice_int = int(subnet6.network_address) + (segment.index << 32)
        return str(ipaddress.IPv6Address(slice_int + int(ipaddress.IPv4Address(ip))))

    def allocate6(self, used: set[str], ip: str = "") -> str:
        """A free IPv6 guest address: the one paired with IPv4 ``ip`` when given,
        else the lowest one whose pair is a guest address. Prefer passing ``ip`` so
        both addresses sit on the same bridge.
        """
        taken = set()
        for addr in used:
            try:
                taken.add(ipaddress.IPv6Address(addr))
            except ValueError:
                continue
        if ip:
            candidate = self.ip6_for(self.check_guest_address(ip))
            if ipaddress.IPv6Address(candidate) in taken:
                raise Conflict(f"IPv6 address {candidate} (paired with {ip}) is already in use")
            return candidate
        subnet6 = self._require_v6()
        for offset in self._guest_offsets():
            candidate = self.ip6_for(str(ipaddress.IPv4Address(self._base + offset)))
            if ipaddress.IPv6Address(candidate) not in taken:
                return candidate
        raise PoolExhausted(f"address pool {subnet6} is exhausted ({len(taken)} "
                            "addresses in use); widen [network] subnet in the config")

    def netspec(self, ip: str, mac: str, ip6: str = "") -> NetSpec:
        """Everything a driver needs to wire guest ``ip``. With IPv6 on, ``ip6`` defaults
        to the address paired with ``ip`` and must lie in the same segment's slice.
        """
        ip = self.check_guest_address(ip)
        segment = self.segment_of(ip)
        if self.subnet6 is None:
            if ip6:
                raise UsageError(f"IPv6 address {ip6} given but [network] subnet6 is not set")
            return NetSpec(ip=ip, prefixlen=segment.prefixlen, gateway=segment.gateway,
                           bridge=segment.bridge, mac=mac)
        ip6 = ip6 or self.ip6_for(ip)
        try:
            addr6 = ipaddress.IPv6Address(ip6)
        except ValueError:
            raise UsageError(f"'{ip6}' is not an IPv6 address") from None
        if addr6 not in ipaddress.IPv6Network(segment.network6) or str(addr6) in (
                segment.gateway6, str(ipaddress.IPv6Network(segment.network6).network_address)):
            raise UsageError(
                f"IPv6 address {ip6} cannot go with {ip}",
                f"guests on {segment.bridge} take IPv6 addresses in {segment.network6} "
                "other than its first one and the gateway")
        return NetSpec(ip=ip, prefixlen=segment.prefixlen, gateway=segment.gateway,
                       bridge=segment.bridge, mac=mac, ip6=str(addr6),
                       prefixlen6=segment.prefixlen6, gateway6=segment.gateway6)

    mac_for = staticmethod(mac_for)


def _parse_subnet(value: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(value)
    except ValueError as exc:
        raise UsageError(f"setting [network] subnet = {value!r} is not a network: {exc}",
                         "write it like 10.88.0.0/16 (host bits zero)") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise UsageError(f"setting [network] subnet = {value!r} must be IPv4",
                         "put IPv6 networks in [network] subnet6")
    if net.prefixlen > 30:
        raise UsageError(f"setting [network] subnet = {value!r} is too small",
                         "use a prefix of /30 or shorter, e.g. 10.88.0.0/16")
    return net


def _parse_subnet6(value: str, segment_bits: int) -> ipaddress.IPv6Network | None:
    if not value:
        return None
    try:
        net = ipaddress.ip_network(value)
    except ValueError as exc:
        raise UsageError(f"setting [network] subnet6 = {value!r} is not a network: {exc}",
                         "write it like fd88::/64 (host bits zero)") from None
    if not isinstance(net, ipaddress.IPv6Network):
        raise UsageError(f"setting [network] subnet6 = {value!r} must be IPv6",
                         "put IPv4 networks in [network] subnet")
    if net.prefixlen + segment_bits > V6_SLICE_PREFIXLEN:
        raise UsageError(
            f"setting [network] subnet6 = {value!r} is too small for the segments",
            f"each segment takes a /{V6_SLICE_PREFIXLEN}; use a prefix of at most "
            f"/{V6_SLICE_PREFIXLEN - segment_bits}, e.g. fd88::/64")
    return net
