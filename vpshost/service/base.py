"""What every use case stands on: the store, the drivers, and state transitions.

Every state change is a compare-and-set in the database (``UPDATE ... WHERE state IN
(...)``), so two operations on one instance never run at once, whichever process
receives them. Transient states record the pid doing the work; reconcile repairs
instances whose worker died.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vpshost import states
from vpshost.config import Config, load
from vpshost.drivers.base import Driver, Power, load_driver
from vpshost.errors import Conflict, NotFound, VpsError
from vpshost.host.addresses import mac_for
from vpshost.models import Guest
from vpshost.service import views
from vpshost.service.access import LOCAL_ADMIN, Caller
from vpshost.states import State
from vpshost.store.db import Database
from vpshost.store.schema import (
    Event,
    Host,
    Instance,
    Snapshot,
)

_PAST = {"start": "started", "stop": "stopped", "restart": "restarted", "pause": "paused",
         "resume": "resumed"}


class ServiceBase:
    """The store, the drivers (local or through agents), and the transition helper."""

    def __init__(self, config: Config | None = None, host: str = "local") -> None:
        self.config = config or load()
        self.host = host
        self.db = Database(self.config.database_url)
        self._drivers: dict[str, Driver] = {}
        self._remote: dict[tuple[str, str], Driver] = {}
        self._plan: Any = None

    def driver(self, kind: str) -> Driver:
        if kind not in self._drivers:
            self._drivers[kind] = load_driver(kind, self.config)
        return self._drivers[kind]

    def driver_for(self, host: str, kind: str) -> Driver:
        """The driver for guests of ``kind`` on ``host``: in-process for this host,
        through the host's agent otherwise."""
        if host == self.host:
            return self.driver(kind)
        key = (host, kind)
        if key not in self._remote:
            from vpshost.agent.client import RemoteDriver

            self._remote[key] = RemoteDriver(self.config, kind, self.agent(host))
        return self._remote[key]

    def agent(self, host: str) -> Any:
        from vpshost.agent.client import AgentClient

        with self.db.session() as s:
            h = s.scalar(select(Host).where(Host.name == host))
            if h is None:
                raise NotFound(f"no host named '{host}'", "see `vps host list`")
            return AgentClient(h.name, h.url, h.secret, pki_dir=self.config.pki_dir)

    @property
    def addresses(self) -> Any:
        if self._plan is None:
            from vpshost.host.addresses import AddressPlan

            self._plan = AddressPlan(self.config.network)
        return self._plan

    def _row(self, s: Session, name: str, caller: Caller) -> Instance:
        row = s.scalar(select(Instance).where(Instance.name == name))
        if row is None or not caller.may_see(row.tenant):
            raise NotFound(f"no instance named '{name}'", "see `vps list`")
        return row

    def guest(self, row: Instance) -> Guest:
        net = None
        if row.ip:
            net = self.addresses.netspec(row.ip, row.mac or mac_for(row.id),
                                         row.ip6 or "")
        return Guest(id=row.id, name=row.name, type=row.type, image=row.image,
                     plan=views.plan_of(row), net=net, dir=self.config.guests_dir / row.name,
                     privileged=row.privileged, options=dict(row.options or {}))

    def _event(self, s: Session, row: Instance | None, kind: str, message: str,
               name: str | None = None) -> None:
        s.add(Event(instance=row.name if row else name, tenant=row.tenant if row else None,
                    kind=kind, message=message))

    def record(self, name: str | None, kind: str, message: str) -> None:
        with self.db.session() as s:
            self._event(s, None, kind, message, name=name)

    @contextmanager
    def _transition(self, name: str, caller: Caller, op: str) -> Iterator[Instance]:
        """Move ``name`` into the operation's transient state, atomically, and out of it
        again: to the final state on success, to what the host really has on failure."""
        with self.db.session() as s:
            row = self._row(s, name, caller)
            allowed, transient, final = states.OPERATIONS[op]
            states.check(op, row.state, name)
            before = State(row.state)  # the UPDATE below also changes the loaded row
            moved = s.execute(
                update(Instance)
                .where(Instance.id == row.id, Instance.state.in_([str(a) for a in allowed]))
                .values(state=str(transient or row.state), busy_pid=os.getpid(),
                        last_error=None)
            ).rowcount  # type: ignore[attr-defined]
            if not moved:  # lost a race with another process
                s.rollback()
                current = self._state(name)
                states.check(op, current, name)
                raise Conflict(f"'{name}' changed state while {op} was starting",
                               "try again")
        try:
            yield row
        except BaseException as exc:
            self._settle(row, f"{op} failed: {exc}")
            raise
        else:
            if op != "delete":  # a deleted row has no state left to set
                self._set_state(row.id, final or before,
                                event=(_PAST.get(op, op), ""))

    def _state(self, name: str) -> str:
        with self.db.session() as s:
            return s.scalar(select(Instance.state).where(Instance.name == name)) or "absent"

    def _set_state(self, instance_id: int, state: State, error: str | None = None,
                   event: tuple[str, str] | None = None) -> None:
        with self.db.session() as s:
            s.execute(update(Instance).where(Instance.id == instance_id)
                      .values(state=str(state), busy_pid=None, last_error=error))
            if event:
                name = s.scalar(select(Instance.name).where(Instance.id == instance_id))
                self._event(s, None, event[0], event[1], name=name)

    def _settle(self, row: Instance, error: str) -> None:
        """After a failure: record what the host really has."""
        try:
            power = self.driver_for(row.host, row.type).power(self.guest(row))
        except VpsError:
            power = Power.ABSENT
        state = {Power.RUNNING: State.RUNNING, Power.PAUSED: State.PAUSED,
                 Power.STOPPED: State.STOPPED}.get(power, State.ERROR)
        self._set_state(row.id, state, error[:2000])
        self.record(row.name, "error", error[:2000])

    def view(self, name: str, caller: Caller = LOCAL_ADMIN) -> dict[str, Any]:
        """One instance's row as list shows it (cheaper than show: no events)."""
        with self.db.session() as s:
            return views.instance(self._row(s, name, caller))

    def list(self, caller: Caller = LOCAL_ADMIN) -> builtins.list[dict[str, Any]]:
        with self.db.session() as s:
            q = select(Instance).order_by(Instance.name)
            if not caller.admin:
                q = q.where(Instance.tenant == caller.tenant)
            return [views.instance(r) for r in s.scalars(q)]

    def show(self, name: str, caller: Caller = LOCAL_ADMIN,
             stats: bool = False) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._row(s, name, caller)
            out = views.instance(row)
            out["ports"] = [{"proto": p.proto, "host_port": p.host_port,
                             "guest_port": p.guest_port} for p in row.ports]
            out["snapshots"] = [sn.name for sn in s.scalars(
                select(Snapshot).where(Snapshot.instance_id == row.id))]
            out["events"] = [views.event(e) for e in s.scalars(
                select(Event).where(Event.instance == name).order_by(Event.id.desc())
                .limit(20))]
        if stats and row.state == State.RUNNING:
            out["stats"] = self.driver_for(row.host, row.type).stats(self.guest(row))
        return out

    def events(self, name: str | None = None, caller: Caller = LOCAL_ADMIN,
               limit: int = 100) -> builtins.list[dict[str, Any]]:
        with self.db.session() as s:
            q = select(Event).order_by(Event.id.desc()).limit(limit)
            if name:
                self._row(s, name, caller)
                q = q.where(Event.instance == name)
            elif not caller.admin:
                q = q.where(Event.tenant == caller.tenant)
            return [views.event(e) for e in s.scalars(q)]
