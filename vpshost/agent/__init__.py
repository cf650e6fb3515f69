"""Host agents: each host runs `vps agent`, which performs driver operations for the
control plane. Drivers keep no state, and a ``Guest`` carries everything a driver
needs, so the protocol is one generic call: (type, method, guest, args)."""
