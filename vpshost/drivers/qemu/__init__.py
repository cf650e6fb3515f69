"""The `vm` guest type: full virtualization through QEMU (KVM where usable, else TCG).

Split like Ganeti's hv_kvm package should have been from the start: ``cmdline``
builds argv, ``monitor`` speaks QMP, ``agent`` talks to the guest, ``accel`` picks
KVM or TCG, ``limits`` handles cgroups and tc, ``process`` finds the QEMU process.
"""

from vpshost.drivers.qemu.driver import OPTIONS, QemuDriver

__all__ = ["OPTIONS", "QemuDriver"]
