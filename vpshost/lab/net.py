"""The lab bridge on this machine: the control plane's side of the nested hosts' NICs.

One bridge (``vpslab0``, 10.99.0.1/24) and one tap per lab host. Idempotent.
"""

from __future__ import annotations

import contextlib
import os

from vpshost import runner
from vpshost.errors import CommandError

BRIDGE = "vpslab0"
NETWORK = "10.99.0"
HOST_ADDR = f"{NETWORK}.1"
PREFIXLEN = 24
TAP_PREFIX = "vpslabt"


def _exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")


def ensure_bridge() -> str:
    if not _exists(BRIDGE):
        with contextlib.suppress(CommandError):
            runner.run(["ip", "link", "add", BRIDGE, "type", "bridge"], timeout=10)
    addrs = runner.run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE], timeout=10).stdout
    if f"{HOST_ADDR}/" not in addrs:
        runner.run(["ip", "addr", "add", f"{HOST_ADDR}/{PREFIXLEN}", "dev", BRIDGE],
                   timeout=10)
    runner.run(["ip", "link", "set", BRIDGE, "up"], timeout=10)
    return BRIDGE


def tap_name(index: int) -> str:
    return f"{TAP_PREFIX}{index}"


def ensure_tap(index: int) -> str:
    ensure_bridge()
    tap = tap_name(index)
    if not _exists(tap):
        runner.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], timeout=10)
    runner.run(["ip", "link", "set", tap, "master", BRIDGE, "up"], timeout=10)
    return tap


def delete_tap(index: int) -> None:
    tap = tap_name(index)
    if _exists(tap):
        runner.run(["ip", "link", "del", tap], timeout=10, check=False)


def address(index: int) -> str:
    return f"{NETWORK}.{index}"
