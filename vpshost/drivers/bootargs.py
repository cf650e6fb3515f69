"""The kernel command line a kernel-booted guest (QEMU or Xen PV/PVH) gets from vpshost.

The images' init scripts read the ``vps.*`` words: that is how a guest learns its
address without DHCP or a metadata service.
"""

from __future__ import annotations

from vpshost.models import Guest


def kernel_args(guest: Guest, image_append: str) -> str:
    """The image's own arguments plus the vps.* network settings the guest's init reads."""
    args = [image_append, f"vps.hostname={guest.name}"]
    if guest.net:
        n = guest.net
        args.append(f"vps.ip={n.ip}/{n.prefixlen}")
        if n.gateway:
            args.append(f"vps.gw={n.gateway}")
        if n.ip6:
            args.append(f"vps.ip6={n.ip6}/{n.prefixlen6}")
        if n.gateway6:
            args.append(f"vps.gw6={n.gateway6}")
    extra = str(guest.options.get("append", "")).strip()
    if extra:
        args.append(extra)
    return " ".join(a for a in args if a)


# The other half: the shell loop the images' init scripts use to read those words into
# IP, GW, IP6, GW6 and HN (one copy, spliced into every script that needs it).
PARSE_VPS_ARGS = r"""for w in $(cat /proc/cmdline); do
  case "$w" in
    vps.ip=*) IP=${w#vps.ip=} ;;
    vps.gw=*) GW=${w#vps.gw=} ;;
    vps.ip6=*) IP6=${w#vps.ip6=} ;;
    vps.gw6=*) GW6=${w#vps.gw6=} ;;
    vps.hostname=*) HN=${w#vps.hostname=} ;;
  esac
done
"""
