"""Snapshots: taken, listed, restored and deleted through the guest's driver."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vpshost import states
from vpshost.drivers.base import Power
from vpshost.errors import Conflict, NotFound
from vpshost.models import check_name
from vpshost.service.access import LOCAL_ADMIN, Caller
from vpshost.service.base import ServiceBase
from vpshost.states import State
from vpshost.store.schema import (
    Instance,
    Snapshot,
)


class SnapshotsMixin(ServiceBase):
    """The store keeps the list; the driver keeps the data."""

    def snapshot(self, name: str, snap: str, caller: Caller = LOCAL_ADMIN) -> None:
        check_name(snap)
        with self.db.session() as s:
            row = self._row(s, name, caller)
            if s.scalar(select(Snapshot.id).where(Snapshot.instance_id == row.id,
                                                  Snapshot.name == snap)):
                raise Conflict(f"'{name}' already has a snapshot '{snap}'",
                               "pick another name or delete it first")
        states.check("snapshot", row.state, name)
        memory = self.driver_for(row.host, row.type).snapshot(self.guest(row), snap)
        with self.db.session() as s:
            s.add(Snapshot(instance_id=row.id, name=snap,
                           with_memory=row.state != State.STOPPED if memory is None
                           else bool(memory)))
            self._event(s, row, "snapshot", f"snapshot {snap} taken")

    def _snapshot_row(self, s: Session, row: Instance, snap: str) -> Snapshot:
        sn = s.scalar(select(Snapshot).where(Snapshot.instance_id == row.id,
                                             Snapshot.name == snap))
        if sn is None:
            raise NotFound(f"'{row.name}' has no snapshot '{snap}'",
                           f"see `vps snapshot list {row.name}`")
        return sn

    def snapshots(self, name: str, caller: Caller = LOCAL_ADMIN) -> builtins.list[dict[str, Any]]:
        with self.db.session() as s:
            row = self._row(s, name, caller)
            return [{"name": sn.name, "with_memory": sn.with_memory,
                     "created_at": sn.created_at.isoformat() + "Z"}
                    for sn in s.scalars(select(Snapshot).where(Snapshot.instance_id == row.id)
                                        .order_by(Snapshot.id))]

    def restore(self, name: str, snap: str, caller: Caller = LOCAL_ADMIN) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._row(s, name, caller)
            sn = self._snapshot_row(s, row, snap)
        states.check("restore", row.state, name)
        self.driver_for(row.host, row.type).restore(self.guest(row), snap)
        power = self.driver_for(row.host, row.type).power(self.guest(row))
        state = State.RUNNING if power is Power.RUNNING else (
            State.PAUSED if power is Power.PAUSED else State.STOPPED)
        self._set_state(row.id, state)
        self.record(name, "restored", f"snapshot {snap} ("
                    + ("disk and memory)" if sn.with_memory else "disk only)"))
        return self.show(name, caller)

    def delete_snapshot(self, name: str, snap: str, caller: Caller = LOCAL_ADMIN) -> None:
        with self.db.session() as s:
            row = self._row(s, name, caller)
            self._snapshot_row(s, row, snap)
        self.driver_for(row.host, row.type).delete_snapshot(self.guest(row), snap)
        with self.db.session() as s:
            s.execute(delete(Snapshot).where(Snapshot.instance_id == row.id,
                                             Snapshot.name == snap))
            self._event(s, row, "snapshot-deleted", snap)
