"""Several hosts: registration, drain and migration (the logic lives in vpshost.cluster)."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import update

from vpshost.drivers.base import Power, Progress, Sample, no_progress, no_sample
from vpshost.errors import UsageError
from vpshost.service import views
from vpshost.service.access import LOCAL_ADMIN, Caller
from vpshost.service.base import ServiceBase
from vpshost.states import State
from vpshost.store.schema import (
    Instance,
)


class HostsMixin(ServiceBase):
    """Thin wrappers: the cluster modules do the work through this service."""

    def migrate(self, name: str, to: str | None = None, live: bool = False,
                frozen: bool = False, postcopy: bool = False, downtime_ms: int = 300,
                caller: Caller = LOCAL_ADMIN,
                progress: Progress = no_progress,
                sample: Sample = no_sample) -> dict[str, Any]:
        """Move a guest to another host (placement picks one when ``to`` is None).
        ``progress`` gets each step as a line, ``sample`` a live move's progress as
        data (phase, bytes, rate) about every half second while it sends."""
        from vpshost.cluster import hosts as cluster_hosts
        from vpshost.cluster import migration

        if downtime_ms < 1:
            raise UsageError("the downtime limit must be at least 1 ms")
        with self._transition(name, caller, "migrate") as row:
            target = cluster_hosts.choose(self, row.type, views.plan_of(row), to,
                                          exclude=row.host)
            if target == row.host:
                raise UsageError(f"'{name}' is already on host {target}")
            guest = self.guest(row)
            src = self.driver_for(row.host, row.type)
            dst = self.driver_for(target, row.type)
            def switched() -> None:
                self._route(row.ip, target)

            # row.state is already the transient "migrating": ask the host instead
            if live and src.power(guest) is Power.RUNNING:
                stats = migration.live(self, guest, row.host, target, src, dst, downtime_ms,
                                       postcopy, progress, switched, sample)
            else:
                stats = migration.cold(self, guest, row.host, target, src, dst, frozen,
                                       progress, switched)
            with self.db.session() as s:
                s.execute(update(Instance).where(Instance.id == row.id).values(host=target))
                self._event(s, row, "migrated", f"{row.host} -> {target}: " + ", ".join(
                    f"{k}={v}" for k, v in stats.items() if k != "files"))
        out = self.view(name, caller)
        out["migration"] = stats
        return out

    def _route(self, ip: str | None, host: str) -> None:
        if self.config.cluster.route_guests:
            from vpshost.cluster import hosts

            hosts.route_guest(self, ip, host)

    def host_add(self, name: str, url: str, secret: str) -> dict[str, Any]:
        from vpshost.cluster import hosts

        return hosts.add(self, name, url, secret)

    def host_list(self) -> builtins.list[dict[str, Any]]:
        from vpshost.cluster import hosts

        return hosts.list_hosts(self)

    def host_show(self, name: str) -> dict[str, Any]:
        from vpshost.cluster import hosts

        return hosts.show(self, name)

    def host_remove(self, name: str) -> None:
        from vpshost.cluster import hosts

        hosts.remove(self, name)

    def host_drain(self, name: str, progress: Progress = no_progress
                   ) -> builtins.list[dict[str, Any]]:
        """Stop placing guests on ``name`` and move every guest it has elsewhere:
        running VMs live, everything else cold."""
        from vpshost.cluster import hosts

        hosts.set_state(self, name, "draining")
        self.record(None, "host-draining", name)
        moved = []
        for inst in hosts.show(self, name)["instances"]:
            row = self.view(inst)
            live = row["type"] == "vm" and row["state"] == State.RUNNING
            progress(f"moving {inst} ({'live' if live else 'cold'})")
            moved.append(self.migrate(inst, live=live, progress=progress))
        return moved

    def host_activate(self, name: str) -> None:
        from vpshost.cluster import hosts

        hosts.set_state(self, name, "active")
        self.record(None, "host-active", name)
