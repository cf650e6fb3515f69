"""Nested lab hosts: a Xen dom0 and a KVM host, each a QEMU TCG guest on this machine.

Both boot one shared Debian root filesystem (``image``) with vpshost's agent started at
boot; ``hosts`` boots, inspects and powers them off; ``net`` makes the lab bridge the
control plane reaches them on. See docs/xen.md.
"""
