"""Port forwards: rows in the store, rendered into the host's nftables table."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from vpshost.errors import Conflict, NotFound, UsageError
from vpshost.service.access import LOCAL_ADMIN, Caller
from vpshost.service.base import ServiceBase
from vpshost.store.schema import (
    Instance,
    PortForward,
)


class PortsMixin(ServiceBase):
    """Every change re-renders the whole table from the store."""

    def _has_ports(self, instance_id: int) -> bool:
        with self.db.session() as s:
            return bool(s.scalar(select(func.count()).select_from(PortForward)
                                 .where(PortForward.instance_id == instance_id)))

    def port_add(self, name: str, host_port: int, guest_port: int, proto: str = "tcp",
                 caller: Caller = LOCAL_ADMIN) -> builtins.list[dict[str, Any]]:
        if proto not in ("tcp", "udp"):
            raise UsageError(f"unknown protocol '{proto}'", "use tcp or udp")
        for label, port in (("host port", host_port), ("guest port", guest_port)):
            if not 1 <= port <= 65535:
                raise UsageError(f"{label} {port} is out of range", "use 1-65535")
        try:
            with self.db.session() as s:
                row = self._row(s, name, caller)
                s.add(PortForward(instance_id=row.id, proto=proto, host_port=host_port,
                                  guest_port=guest_port))
                s.flush()
                self._event(s, row, "port-added", f"{proto} {host_port} -> {guest_port}")
        except IntegrityError:
            raise Conflict(f"host port {proto}/{host_port} is already forwarded",
                           "see `vps port list` and pick a free port") from None
        self.sync_nat()
        return self.ports(name, caller)

    def port_remove(self, name: str, host_port: int, proto: str = "tcp",
                    caller: Caller = LOCAL_ADMIN) -> None:
        with self.db.session() as s:
            row = self._row(s, name, caller)
            gone = s.execute(delete(PortForward).where(
                PortForward.instance_id == row.id, PortForward.host_port == host_port,
                PortForward.proto == proto)).rowcount  # type: ignore[attr-defined]
            if not gone:
                raise NotFound(f"'{name}' has no forward of {proto} port {host_port}",
                               f"see `vps port list {name}`")
            self._event(s, row, "port-removed", f"{proto} {host_port}")
        self.sync_nat()

    def ports(self, name: str | None = None,
              caller: Caller = LOCAL_ADMIN) -> builtins.list[dict[str, Any]]:
        with self.db.session() as s:
            q = select(PortForward, Instance).join(Instance).order_by(PortForward.host_port)
            if name:
                self._row(s, name, caller)
                q = q.where(Instance.name == name)
            return [{"instance": i.name, "proto": p.proto, "host_port": p.host_port,
                     "guest_ip": i.ip, "guest_port": p.guest_port}
                    for p, i in s.execute(q) if caller.may_see(i.tenant)]

    def sync_nat(self) -> None:
        from vpshost.host import network

        forwards = [network.Forward(p["proto"], p["host_port"], p["guest_ip"], p["guest_port"])
                    for p in self.ports() if p["guest_ip"]]
        network.sync_nat(self.config.network, forwards)
