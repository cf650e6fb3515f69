"""Crash recovery: make the store match what the hosts really run."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from contextlib import suppress

import psutil
from sqlalchemy import delete, select, update

from vpshost import states
from vpshost.drivers.base import Power, no_progress
from vpshost.errors import VpsError
from vpshost.host import boot
from vpshost.service.base import ServiceBase
from vpshost.states import State
from vpshost.store.schema import (
    Instance,
    Operation,
    utcnow,
)


class ReconcileMixin(ServiceBase):
    """Run at server start-up, at every local CLI start, and by `vps reconcile`."""

    def reconcile(self, all_instances: bool = False,
                  report: Callable[[str], None] = no_progress) -> builtins.list[str]:
        """Make the store match the host after a crash; returns what was fixed.

        Instances in a transient state whose worker process is gone are settled from
        what the driver really finds; with ``all_instances``, every instance is checked
        (server start-up), and guests on this host the store does not know are reported.
        Guests on other hosts are asked about through their agents. The pids are this
        machine's: run one control plane per store (several on one machine are fine).
        """
        fixed: builtins.list[str] = []
        after_boot = boot.changed(self.config.state_dir)
        all_instances = all_instances or after_boot  # every local guest stopped then
        with self.db.session() as s:
            rows = list(s.scalars(select(Instance)))
            s.execute(update(Operation).where(Operation.status == "running").values(
                status="failure", error="the server stopped before it finished",
                finished_at=utcnow()))
        for row in rows:
            stale = row.state in states.TRANSIENT and not _alive(row.busy_pid)
            if not (stale or all_instances):
                continue
            if row.state in states.TRANSIENT and _alive(row.busy_pid):
                continue  # another live process is working on it
            try:
                msg = self._reconcile_one(row)
            except VpsError as exc:  # e.g. its host's agent is down: try again later
                msg = f"{row.name}: could not check it on host {row.host}: {exc.message}"
            if msg:
                fixed.append(msg)
                report(msg)
        if all_instances:
            for kind in {r.type for r in rows} | {"container"}:
                with suppress(VpsError):
                    known = {r.name for r in rows if r.type == kind and r.host == self.host}
                    for name in sorted(self.driver(kind).present() - known):
                        msg = f"{name}: a {kind} on the host that the store does not know; " \
                              "left alone (remove it by hand if it is not yours)"
                        fixed.append(msg)
                        report(msg)
        if after_boot:
            boot.mark(self.config.state_dir)
        return fixed

    def _reconcile_one(self, row: Instance) -> str | None:
        guest = self.guest(row)
        drv = self.driver_for(row.host, row.type)
        if row.state in (State.CREATING, State.DELETING):
            drv.delete(guest)
            with self.db.session() as s:
                s.execute(delete(Instance).where(Instance.id == row.id))
                verb = "half-made" if row.state == State.CREATING else "half-deleted"
                msg = f"{row.name}: removed the {verb} {row.type} and released {row.ip}"
                self._event(s, None, "reconciled", msg, name=row.name)
            return msg
        power = drv.power(guest)
        state = {Power.RUNNING: State.RUNNING, Power.PAUSED: State.PAUSED,
                 Power.STOPPED: State.STOPPED, Power.ABSENT: State.ERROR}[power]
        if state == row.state:
            if row.busy_pid is not None:
                self._set_state(row.id, state)
            return None
        error = "its disk and definition are missing on the host" \
            if power is Power.ABSENT else None
        self._set_state(row.id, state, error)
        msg = f"{row.name}: was {row.state} in the store, {power} on the host; now {state}"
        self.record(row.name, "reconciled", msg)
        return msg


def _alive(pid: int | None) -> bool:
    return bool(pid) and psutil.pid_exists(pid or 0) and pid != os.getpid()
