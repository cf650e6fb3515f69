"""Host networking: segment bridges, NAT and port forwards, bandwidth limits.

Stateless and idempotent: everything is derived from the ``NetworkConfig`` and the
arguments, so any call can be repeated after a crash or a reboot. The address plan
(which bridge and gateway a guest gets) lives in ``vpshost.host.addresses``.

nftables: one ``table inet <nft_table>`` holds all rules, replaced as a whole in one
atomic ``nft -f -`` transaction by ``sync_nat``. ``inet`` so the IPv6 slice (ULA, not
routable) is masqueraded like IPv4. Port forwards are IPv4 and match any local address
of the host (``fib daddr type local``), both for packets arriving from outside or from
guests (prerouting) and for connections the host makes itself (output); 127.0.0.0/8
is excluded there, because rerouting a loopback-sourced packet onto a bridge would
need route_localnet, which would also expose the host's loopback services to guests.

pyroute2 takes about 0.1 s to import, so it is imported only on the slow paths: a
guest start calls ``ensure_bridge`` on an existing bridge, which reads /sys and /proc
only.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vpshost import runner
from vpshost.config import NetworkConfig
from vpshost.errors import Conflict, RuntimeFailure, UsageError
from vpshost.host.addresses import MAX_INSTANCE_ID, AddressPlan, Segment

if TYPE_CHECKING:
    from pyroute2 import IPRoute

VETH_PREFIX = "vpsveth"  # host side of a container's veth: vpsveth<id>
TAP_PREFIX = "vpstap"  # a VM's tap: vpstap<id>
BRIDGE_MAC_PREFIX = "0a:76:71"  # guests use 0a:76:70 (addresses.mac_for)
_IFF_UP = 0x1
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")
_SYS_NET = "/sys/class/net"
_SETUP_LOCK = threading.Lock()
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
_IP6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"


@dataclass(frozen=True)
class Forward:
    """One port forward: host_port on every local host address -> guest_ip:guest_port."""

    proto: Literal["tcp", "udp"]
    host_port: int
    guest_ip: str
    guest_port: int

    def __post_init__(self) -> None:
        if self.proto not in ("tcp", "udp"):
            raise UsageError(f"unknown protocol '{self.proto}' for a port forward",
                             "use tcp or udp")
        for what, port in (("host", self.host_port), ("guest", self.guest_port)):
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise UsageError(f"{what} port {port} is not a port number",
                                 "use 1..65535")


# -- names derived from ids ---------------------------------------------------------

def _check_id(instance_id: int) -> int:
    if not isinstance(instance_id, int) or not 0 <= instance_id <= MAX_INSTANCE_ID:
        raise UsageError(f"instance id {instance_id} has no interface name",
                         f"ids must be between 0 and {MAX_INSTANCE_ID}")
    return instance_id


def host_veth_name(instance_id: int) -> str:
    """Host-side veth of container ``instance_id``, e.g. 'vpsveth12' (<= 15 chars)."""
    return f"{VETH_PREFIX}{_check_id(instance_id)}"


def tap_name(instance_id: int) -> str:
    """Tap device of VM ``instance_id``, e.g. 'vpstap12' (<= 15 chars)."""
    return f"{TAP_PREFIX}{_check_id(instance_id)}"


def bridge_mac(bridge: str) -> str:
    """A fixed MAC for a bridge: set explicitly, the kernel never changes it to the
    lowest port's MAC as guests come and go (which would stale the guests' ARP caches)."""
    digest = hashlib.sha256(bridge.encode()).digest()[:3]
    return BRIDGE_MAC_PREFIX + "".join(f":{b:02x}" for b in digest)


# -- bridges -------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {value} to {path}: {exc.strerror}",
                             "run as root on a host that allows IP forwarding") from None


def _has_route(bridge: str, network: str) -> bool:
    """True when the main table holds the bridge's connected route, i.e. the gateway
    address is set (IPv4 addresses are not listed anywhere cheaper in /proc)."""
    net = ipaddress.IPv4Network(network)
    dest = f"{int.from_bytes(net.network_address.packed, sys.byteorder):08X}"
    mask = f"{int.from_bytes(net.netmask.packed, sys.byteorder):08X}"
    try:
        with open("/proc/net/route") as f:
            for line in f:
                parts = line.split()
                if parts[:2] == [bridge, dest] and len(parts) > 7 and parts[7] == mask:
                    return True
    except OSError:
        pass
    return False


def _has_addr6(bridge: str, address: str) -> bool:
    want = ipaddress.IPv6Address(address).exploded.replace(":", "")
    for line in _read("/proc/net/if_inet6").splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] == want and parts[5] == bridge:
            return True
    return False


def _bridge_ready(cfg: NetworkConfig, seg: Segment) -> bool:
    flags = _read(f"{_SYS_NET}/{seg.bridge}/flags")
    if not flags or not int(flags, 16) & _IFF_UP:
        return False
    if _read(_IP_FORWARD) != "1" or not _has_route(seg.bridge, seg.network):
        return False
    if cfg.subnet6:
        return _read(_IP6_FORWARD) == "1" and _has_addr6(seg.bridge, seg.gateway6)
    return True


def _netlink_failure(what: str, exc: Exception) -> RuntimeFailure:
    return RuntimeFailure(f"{what} failed: {exc}", "vpshost must run as root")


def _ipr() -> IPRoute:
    from pyroute2 import IPRoute

    return IPRoute()


def _ignore_exists(call: Any, *args: Any, **kwargs: Any) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def ensure_bridge(cfg: NetworkConfig, segment: Segment | int) -> str:
    """Make segment's bridge exist, hold its gateway address(es) and be up; enable
    forwarding. Returns the bridge name. Cheap (no netlink) when all is in place,
    since every guest start calls it.
    """
    plan = AddressPlan(cfg)
    seg = plan.segment(segment) if isinstance(segment, int) else segment
    if _bridge_ready(cfg, seg):
        return seg.bridge
    # One thread at a time on the slow path: concurrent first starts (the API's worker
    # pool) would otherwise import pyroute2 at once and can trip Python's import lock
    # deadlock detection; the second thread then finds the bridge ready.
    with _SETUP_LOCK:
        if _bridge_ready(cfg, seg):
            return seg.bridge
        return _create_bridge(cfg, seg)


def _create_bridge(cfg: NetworkConfig, seg: Segment) -> str:
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

    try:
        with _ipr() as ipr:
            if not ipr.link_lookup(ifname=seg.bridge):
                _ignore_exists(ipr.link, "add", ifname=seg.bridge, kind="bridge",
                               address=bridge_mac(seg.bridge))
            index = ipr.link_lookup(ifname=seg.bridge)[0]
            _ignore_exists(ipr.addr, "add", index=index, address=seg.gateway,
                           prefixlen=seg.prefixlen)
            if seg.gateway6:
                # No DAD: the address is ours alone, and a port-less bridge has no
                # carrier, so DAD would leave it "tentative" (unusable) until then.
                _ignore_exists(ipr.addr, "add", index=index, address=seg.gateway6,
                               prefixlen=seg.prefixlen6, flags=IFA_F_NODAD)
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise _netlink_failure(f"setting up bridge {seg.bridge}", exc) from None
    if _read(_IP_FORWARD) != "1":
        _write(_IP_FORWARD, "1")
    if cfg.subnet6 and _read(_IP6_FORWARD) != "1":
        # Note: with forwarding on, Linux stops taking router advertisements on
        # interfaces whose accept_ra is 1, so an uplink configured by SLAAC needs
        # accept_ra=2 (the host's own setup, not ours to change).
        _write(_IP6_FORWARD, "1")
    return seg.bridge


def bridges(cfg: NetworkConfig) -> list[str]:
    """Names of the existing bridges that belong to this config's prefix, sorted."""
    pattern = re.compile(rf"^{re.escape(cfg.bridge_prefix)}\d+$")
    try:
        names = os.listdir(_SYS_NET)
    except OSError:
        return []
    found = [n for n in names if pattern.match(n) and os.path.isdir(f"{_SYS_NET}/{n}/bridge")]
    return sorted(found, key=lambda n: int(n[len(cfg.bridge_prefix):]))


def delete_link(ifname: str) -> bool:
    """Delete an interface if it exists (a tap, a leftover veth). True if it did."""
    from pyroute2.netlink.exceptions import NetlinkError

    if not os.path.exists(f"{_SYS_NET}/{ifname}"):
        return False
    try:
        with _ipr() as ipr:
            ipr.link("del", ifname=ifname)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise _netlink_failure(f"deleting interface {ifname}", exc) from None
    return True


def tap_for(guest_dir: Path) -> str:
    """The tap of the VM living in ``guest_dir``: unique to this installation, since
    ids restart at 1 in every store and two stores on one host (a test run beside a
    real one, two namespace hosts) must not fight over a name."""
    return "vpt" + hashlib.sha256(str(guest_dir).encode()).hexdigest()[:12]


def ensure_tap(instance_id: int | str, bridge: str) -> str:
    """Create a tap (named by ``instance_id``, or given its name) if missing, attach it
    to ``bridge``, bring it up; QEMU then opens it with
    ``-netdev tap,ifname=<name>,script=no,downscript=no``."""
    from pyroute2.netlink.exceptions import NetlinkError

    name = instance_id if isinstance(instance_id, str) else tap_name(instance_id)
    try:
        with _ipr() as ipr:
            if not ipr.link_lookup(ifname=name):
                _ignore_exists(ipr.link, "add", ifname=name, kind="tuntap", mode="tap")
            master = ipr.link_lookup(ifname=bridge)
            if not master:
                raise RuntimeFailure(f"bridge {bridge} does not exist",
                                     "call ensure_bridge for the guest's segment first")
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], master=master[0],
                     state="up")
    except NetlinkError as exc:
        raise _netlink_failure(f"setting up tap {name}", exc) from None
    return name


# -- nftables ------------------------------------------------------------------------

def _check_table(name: str) -> str:
    if not _TABLE.match(name):
        raise UsageError(f"setting [network] nft_table = {name!r} is not a usable name",
                         "use a letter then up to 30 letters, digits or '_'")
    return name


def render_nat(cfg: NetworkConfig, forwards: list[Forward]) -> str:
    """The full nft script that ``sync_nat`` applies (replace the table atomically)."""
    plan = AddressPlan(cfg)
    table = _check_table(cfg.nft_table)
    subnet = str(plan.subnet)
    seen: dict[tuple[str, int], Forward] = {}
    dnat: list[str] = []
    for fwd in sorted(forwards, key=lambda f: (f.proto, f.host_port)):
        key = (fwd.proto, fwd.host_port)
        if key in seen:
            raise Conflict(f"host port {fwd.proto}/{fwd.host_port} is forwarded twice",
                           f"to {seen[key].guest_ip}:{seen[key].guest_port} and "
                           f"{fwd.guest_ip}:{fwd.guest_port}")
        seen[key] = fwd
        guest = plan.check_guest_address(fwd.guest_ip)
        dnat.append(f"{fwd.proto} dport {fwd.host_port} dnat ip to {guest}:{fwd.guest_port}")
    lines = [f"add table inet {table}", f"delete table inet {table}",
             f"table inet {table} {{",
             "\tchain prerouting {",
             "\t\ttype nat hook prerouting priority dstnat; policy accept;"]
    lines += [f"\t\tfib daddr type local {rule}" for rule in dnat]
    lines += ["\t}", "\tchain output {",
              "\t\ttype nat hook output priority -100; policy accept;"]
    lines += [f"\t\tip daddr != 127.0.0.0/8 fib daddr type local {rule}" for rule in dnat]
    lines += ["\t}", "\tchain postrouting {",
              "\t\ttype nat hook postrouting priority srcnat; policy accept;",
              # Hairpin: a guest reaching a forwarded port must see replies come back
              # through the host, also when the target sits on its own bridge.
              f"\t\tct status dnat ip saddr {subnet} ip daddr {subnet} masquerade"]
    if cfg.nat:
        lines.append(f"\t\tip saddr {subnet} ip daddr != {subnet} masquerade")
        if plan.subnet6 is not None:
            lines.append(f"\t\tip6 saddr {plan.subnet6} ip6 daddr != {plan.subnet6} "
                         "masquerade")
    lines += ["\t}", "\tchain forward {",
              # Policy accept: guests reach other segments and the outside world. The
              # explicit accepts document intent; another table may still drop.
              "\t\ttype filter hook forward priority filter; policy accept;",
              f"\t\tip saddr {subnet} accept", f"\t\tip daddr {subnet} accept"]
    if plan.subnet6 is not None:
        lines += [f"\t\tip6 saddr {plan.subnet6} accept",
                  f"\t\tip6 daddr {plan.subnet6} accept"]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def sync_nat(cfg: NetworkConfig, forwards: list[Forward]) -> None:
    """Make the nftables table hold exactly the NAT and these forwards, atomically."""
    runner.run(["nft", "-f", "-"], input=render_nat(cfg, forwards), timeout=30)


def teardown(cfg: NetworkConfig) -> None:
    """Remove the nft table, every bridge named bridge_prefix + digits, stale IFBs."""
    table = _check_table(cfg.nft_table)
    runner.run(["nft", "-f", "-"], timeout=30,
               input=f"add table inet {table}\ndelete table inet {table}\n")
    for name in bridges(cfg):
        delete_link(name)
    prune_ifbs()


# -- bandwidth -----------------------------------------------------------------------

def _tbf(ifname: str, mbit: int) -> None:
    if mbit <= 0:
        raise UsageError(f"bandwidth limit {mbit} Mbit/s must be positive",
                         "use clear_limits to remove a limit")
    burst = max(mbit * 125_000 // 50, 16_000)  # 20 ms at full rate, at least ~10 frames
    runner.run(["tc", "qdisc", "replace", "dev", ifname, "root", "tbf",
                "rate", f"{mbit}mbit", "burst", str(burst), "latency", "50ms"], timeout=10)


def set_egress_limit(ifname: str, mbit: int) -> None:
    """Shape what ``ifname`` sends to ``mbit`` Mbit/s with a token bucket. On the host
    side of a veth or tap, egress is the guest's download."""
    _tbf(ifname, mbit)


def ifb_name(ifname: str) -> str:
    """The IFB device that shapes ``ifname``'s ingress, named by ifindex (<= 15 chars)."""
    index = _read(f"{_SYS_NET}/{ifname}/ifindex")
    if not index:
        raise RuntimeFailure(f"interface {ifname} does not exist")
    return f"vpsifb{index}"


def set_ingress_limit(ifname: str, mbit: int) -> None:
    """Limit what arrives on ``ifname`` (on the host side of a veth or tap: the guest's
    upload) to ``mbit`` Mbit/s. The kernel here lacks the police action, so ingress is
    redirected (mirred) to a per-interface IFB device and shaped there with tbf."""
    from pyroute2.netlink.exceptions import NetlinkError

    ifb = ifb_name(ifname)
    try:
        with _ipr() as ipr:
            if not ipr.link_lookup(ifname=ifb):
                _ignore_exists(ipr.link, "add", ifname=ifb, kind="ifb")
            ipr.link("set", index=ipr.link_lookup(ifname=ifb)[0], state="up")
    except NetlinkError as exc:
        raise _netlink_failure(f"creating {ifb}", exc) from None
    _tbf(ifb, mbit)
    runner.run(["tc", "qdisc", "del", "dev", ifname, "ingress"], timeout=10, check=False)
    runner.run(["tc", "qdisc", "add", "dev", ifname, "handle", "ffff:", "ingress"],
               timeout=10)
    runner.run(["tc", "filter", "add", "dev", ifname, "parent", "ffff:", "protocol", "all",
                "u32", "match", "u32", "0", "0",
                "action", "mirred", "egress", "redirect", "dev", ifb], timeout=10)


def clear_limits(ifname: str) -> None:
    """Remove both limits and the IFB device (no error when none is set)."""
    runner.run(["tc", "qdisc", "del", "dev", ifname, "root"], timeout=10, check=False)
    runner.run(["tc", "qdisc", "del", "dev", ifname, "ingress"], timeout=10, check=False)
    index = _read(f"{_SYS_NET}/{ifname}/ifindex")
    if index:
        delete_link(f"vpsifb{index}")


clear_egress_limit = clear_limits


def prune_ifbs() -> list[str]:
    """Delete IFB devices whose interface is gone (a tap or veth deleted without
    clear_limits first); returns their names. For start-up reconciliation."""
    try:
        names = os.listdir(_SYS_NET)
    except OSError:
        return []
    alive = {_read(f"{_SYS_NET}/{n}/ifindex") for n in names}
    stale = [n for n in names
             if (m := re.fullmatch(r"vpsifb(\d+)", n)) and m.group(1) not in alive]
    for name in stale:
        delete_link(name)
    return stale
