"""Choosing the accelerator: KVM only where it really works, TCG otherwise."""

from __future__ import annotations

import logging

from vpshost.errors import UsageError
from vpshost.host.probe import kvm_usable

log = logging.getLogger(__name__)
ACCELS = ("kvm", "tcg")


def choose(wanted: str = "") -> str:
    """``wanted`` is "kvm", "tcg" or "" (auto). Forcing KVM where it does not work is a
    user error; auto falls back to TCG with a warning, because an emulated /dev/kvm
    (no vmx/svm flag) is slower than TCG and crashes stock kernels."""
    wanted = (wanted or "").strip().lower()
    if wanted not in ("", *ACCELS):
        raise UsageError(f"unknown accelerator '{wanted}'", "use kvm, tcg or leave it empty")
    ok, why = kvm_usable()
    if wanted == "kvm" and not ok:
        raise UsageError(f"KVM is not available on this host: {why}",
                         "use --accel tcg (software emulation) or a host with VT-x/AMD-V")
    if wanted:
        return wanted
    if ok:
        return "kvm"
    log.warning("KVM unusable (%s): running the VM under TCG software emulation", why)
    return "tcg"


def cpu_model(accel: str) -> str:
    """`host` passes the real CPU through under KVM; `max` is TCG's richest model."""
    return "host" if accel == "kvm" else "max"
