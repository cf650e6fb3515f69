"""Instance use cases: create, start, stop, delete, exec, ports, snapshots, reconcile.

Every state change is a compare-and-set in the database (``UPDATE ... WHERE state IN
(...)``), so two operations on one instance never run at once, whichever process
receives them. Transient states record the pid doing the work; reconcile repairs
instances whose worker died.
"""

from __future__ import annotations

import builtins
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

import psutil
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vpshost import states
from vpshost.config import Config, load
from vpshost.drivers.base import Driver, ExecResult, Power, Progress, load_driver, no_progress
from vpshost.errors import Conflict, NotFound, UsageError, VpsError
from vpshost.host.addresses import mac_for
from vpshost.models import Guest, Plan, check_name, check_type
from vpshost.service import views
from vpshost.service.access import LOCAL_ADMIN, Caller, digest, new_secret
from vpshost.states import State
from vpshost.store.db import Database
from vpshost.store.schema import (
    Event,
    Host,
    Instance,
    Operation,
    PortForward,
    Snapshot,
    Token,
    utcnow,
)

_PAST = {"start": "started", "stop": "stopped", "restart": "restarted", "pause": "paused",
         "resume": "resumed"}


@dataclass
class CreateRequest:
    name: str
    type: str = "container"
    image: str = "busybox"
    plan: Plan = field(default_factory=Plan)
    privileged: bool = False
    start: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    host: str | None = None  # None: placement picks one


class Service:
    def __init__(self, config: Config | None = None, host: str = "local") -> None:
        self.config = config or load()
        self.host = host
        self.db = Database(self.config.database_url)
        self._drivers: dict[str, Driver] = {}
        self._remote: dict[tuple[str, str], Driver] = {}
        self._plan: Any = None

    # -- plumbing ----------------------------------------------------------------
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
            return AgentClient(h.name, h.url, h.secret)

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

    # -- create ------------------------------------------------------------------
    def _check_capacity(self, plan: Plan, kind: str = "container",
                        exclude: str | None = None, local: bool = True) -> None:
        cores = os.cpu_count() or 1
        mem = psutil.virtual_memory().total // (1024 * 1024)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        free_disk = shutil.disk_usage(self.config.state_dir).free // (1024 * 1024)
        if plan.vcpus > cores:
            raise UsageError(f"the plan asks for {plan.vcpus} CPUs; this host has {cores}",
                             f"use --cpus {cores} or fewer")
        if plan.memory_mb > mem:
            raise UsageError(f"the plan asks for {plan.memory_mb}M of memory; this host has "
                             f"{mem}M", "use a smaller --memory")
        if plan.disk_mb > free_disk:
            raise UsageError(f"the plan asks for a {plan.disk_mb}M disk; "
                             f"{self.config.state_dir} has {free_disk}M free",
                             "use a smaller --disk or free some space")
        if plan.cpu_cap_pct > plan.vcpus * 100:
            raise UsageError(f"cpu cap {plan.cpu_cap_pct}% is more than {plan.vcpus} "
                             f"CPU(s) can use", f"use at most {plan.vcpus * 100}")
        if local:  # a guest bound for another host is admitted by placement there
            from vpshost.service import capacity  # overcommit ratios across all guests

            capacity.check(self, kind, plan, exclude)

    def _bound_here(self, host: str | None) -> bool:
        """Whether a new guest certainly goes to this host: asked for by name, or no
        other host is registered (placement admits it otherwise)."""
        if host is not None:
            return host == self.host
        with self.db.session() as s:
            return not s.scalar(select(func.count()).select_from(Host))

    def _known_image(self, kind: str, image: str) -> None:
        names = [i["name"] for i in self.images() if i["type"] == kind]
        if image not in names:
            raise NotFound(f"unknown {kind} image '{image}'",
                           f"available: {', '.join(names) or 'none'} (see `vps images`)")

    def check_create(self, req: CreateRequest) -> Plan:
        """The cheap checks of a create, with no side effects; the API runs them before
        it accepts a create as an operation, so a bad request fails at once."""
        check_name(req.name)
        check_type(req.type)
        plan = req.plan.validate()
        self._known_image(req.type, req.image)
        self._check_capacity(plan, req.type, local=self._bound_here(req.host))
        with self.db.session() as s:
            if s.scalar(select(Instance.id).where(Instance.name == req.name)):
                raise Conflict(f"an instance named '{req.name}' already exists",
                               "choose another name or delete the old one")
        return plan

    def create(self, req: CreateRequest, caller: Caller = LOCAL_ADMIN,
               progress: Progress = no_progress) -> dict[str, Any]:
        plan = self.check_create(req)
        from vpshost.cluster import hosts as cluster_hosts

        host = cluster_hosts.choose(self, req.type, plan, req.host)
        if host == self.host and not self._bound_here(req.host):
            from vpshost.service import capacity  # placement chose this host: admit here

            capacity.check(self, req.type, plan)
        row = self._insert(req, plan, caller, host)
        guest = self.guest(row)
        try:
            self.driver_for(row.host, req.type).create(guest, progress)
        except BaseException as exc:
            # Roll back: nothing on disk, no address held, no row.
            with suppress(Exception):
                self.driver_for(row.host, req.type).delete(guest)
            with self.db.session() as s:
                s.execute(delete(Instance).where(Instance.id == row.id))
                self._event(s, None, "create-failed", f"create failed and was rolled "
                            f"back: {exc}", name=req.name)
            raise
        self._set_state(row.id, State.STOPPED)
        self.record(req.name, "created", f"{req.type} from {req.image}, ip {row.ip}")
        if req.start:
            self.start(req.name, caller)
        return self.show(req.name, caller)

    def _insert(self, req: CreateRequest, plan: Plan, caller: Caller, host: str) -> Instance:
        for _attempt in range(5):
            try:
                with self.db.session() as s:
                    if s.scalar(select(Instance.id).where(Instance.name == req.name)):
                        raise Conflict(f"an instance named '{req.name}' already exists",
                                       "choose another name or delete the old one")
                    used = set(s.scalars(select(Instance.ip).where(Instance.ip.is_not(None))))
                    ip = self.addresses.allocate(used)
                    ip6 = None
                    if self.config.network.subnet6:
                        used6 = set(s.scalars(select(Instance.ip6)
                                              .where(Instance.ip6.is_not(None))))
                        ip6 = self.addresses.allocate6(used6)
                    row = Instance(name=req.name, type=req.type, tenant=caller.tenant,
                                   host=host, state=str(State.CREATING),
                                   image=req.image, privileged=req.privileged, ip=ip, ip6=ip6,
                                   options=req.options, busy_pid=os.getpid(),
                                   **{f: getattr(plan, f) for f in views.PLAN_FIELDS})
                    s.add(row)
                    s.flush()
                    row.mac = mac_for(row.id)
                    return row
            except IntegrityError:
                continue  # another process took the name or address first: look again
        raise Conflict(f"could not reserve a name and address for '{req.name}'",
                       "another create is racing for them; try again")

    # -- power -------------------------------------------------------------------
    def _ensure_network(self, guest: Guest) -> None:
        if guest.net is None:
            return
        from vpshost.host import network

        segment = self.addresses.segment_of(guest.net.ip)
        if not os.path.exists(f"/sys/class/net/{segment.bridge}"):
            network.ensure_bridge(self.config.network, segment)
            self.sync_nat()

    def start(self, name: str, caller: Caller = LOCAL_ADMIN) -> dict[str, Any]:
        with self._transition(name, caller, "start") as row:
            guest = self.guest(row)
            if row.host == self.host:  # an agent prepares its own host's network
                self._ensure_network(guest)
            self.driver_for(row.host, row.type).start(guest)
            self._route(row.ip, row.host)
        return self.view(name, caller)

    def stop(self, name: str, caller: Caller = LOCAL_ADMIN,
             timeout: float | None = None) -> dict[str, Any]:
        with self._transition(name, caller, "stop") as row:
            t = self.config.container.stop_timeout if timeout is None else timeout
            self.driver_for(row.host, row.type).stop(self.guest(row), t)
        return self.view(name, caller)

    def restart(self, name: str, caller: Caller = LOCAL_ADMIN) -> dict[str, Any]:
        self.stop(name, caller)
        return self.start(name, caller)

    def pause(self, name: str, caller: Caller = LOCAL_ADMIN) -> dict[str, Any]:
        with self._transition(name, caller, "pause") as row:
            self.driver_for(row.host, row.type).pause(self.guest(row))
        return self.view(name, caller)

    def resume(self, name: str, caller: Caller = LOCAL_ADMIN) -> dict[str, Any]:
        with self._transition(name, caller, "resume") as row:
            self.driver_for(row.host, row.type).resume(self.guest(row))
        return self.view(name, caller)

    def delete(self, name: str, caller: Caller = LOCAL_ADMIN, force: bool = False) -> None:
        if force and self._state(name) in (State.RUNNING, State.PAUSED):
            self.stop(name, caller, timeout=0)
        with self._transition(name, caller, "delete") as row:
            had_ports = self._has_ports(row.id)
            self.driver_for(row.host, row.type).delete(self.guest(row))
            self._route(row.ip, self.host)
            with self.db.session() as s:
                s.execute(delete(Instance).where(Instance.id == row.id))
                self._event(s, None, "deleted", f"{row.type} deleted", name=name)
        if had_ports:
            self.sync_nat()

    def _has_ports(self, instance_id: int) -> bool:
        with self.db.session() as s:
            return bool(s.scalar(select(func.count()).select_from(PortForward)
                                 .where(PortForward.instance_id == instance_id)))

    # -- hosts and migration -----------------------------------------------------
    def migrate(self, name: str, to: str | None = None, live: bool = False,
                frozen: bool = False, postcopy: bool = False, downtime_ms: int = 300,
                caller: Caller = LOCAL_ADMIN,
                progress: Progress = no_progress) -> dict[str, Any]:
        """Move a guest to another host (placement picks one when ``to`` is None)."""
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
                stats = migration.live(self, guest, target, src, dst, downtime_ms, postcopy,
                                       progress, switched)
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

    # -- reading -----------------------------------------------------------------
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

    def exec(self, name: str, argv: builtins.list[str], caller: Caller = LOCAL_ADMIN,
             timeout: float = 60.0) -> ExecResult:
        if not argv:
            raise UsageError("no command given", "write it after --, e.g. "
                             "`vps exec NAME -- uname -a`")
        with self.db.session() as s:
            row = self._row(s, name, caller)
        states.check("exec", row.state, name)
        return self.driver_for(row.host, row.type).exec(self.guest(row), argv, timeout)

    def console_argv(self, name: str, caller: Caller = LOCAL_ADMIN) -> builtins.list[str]:
        with self.db.session() as s:
            row = self._row(s, name, caller)
        states.check("console", row.state, name)
        return self.driver_for(row.host, row.type).console_argv(self.guest(row))

    # -- resize and snapshots ----------------------------------------------------
    def resize(self, name: str, caller: Caller = LOCAL_ADMIN,
               **changes: int) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._row(s, name, caller)
        states.check("resize", row.state, name)
        unknown = set(changes) - set(views.PLAN_FIELDS)
        if unknown:
            raise UsageError(f"cannot resize {', '.join(sorted(unknown))}")
        new = replace(views.plan_of(row), **{k: v for k, v in changes.items()
                                              if v is not None}).validate()
        self._check_capacity(new, row.type, exclude=name, local=row.host == self.host)
        if new.disk_mb < row.disk_mb:
            raise UsageError("disks only grow", f"the disk is {row.disk_mb}M now")
        if row.state == State.RUNNING or new.disk_mb != row.disk_mb:
            # running: limits apply live; stopped: only the disk needs work now, the
            # rest is applied at the next start
            self.driver_for(row.host, row.type).set_limits(self.guest(row), new)
        with self.db.session() as s:
            s.execute(update(Instance).where(Instance.id == row.id)
                      .values(**{f: getattr(new, f) for f in views.PLAN_FIELDS}))
            self._event(s, row, "resized", ", ".join(f"{k}={v}" for k, v in changes.items()
                                                    if v is not None))
        return self.show(name, caller)

    def snapshot(self, name: str, snap: str, caller: Caller = LOCAL_ADMIN) -> None:
        check_name(snap)
        with self.db.session() as s:
            row = self._row(s, name, caller)
            if s.scalar(select(Snapshot.id).where(Snapshot.instance_id == row.id,
                                                  Snapshot.name == snap)):
                raise Conflict(f"'{name}' already has a snapshot '{snap}'",
                               "pick another name or delete it first")
        states.check("snapshot", row.state, name)
        self.driver_for(row.host, row.type).snapshot(self.guest(row), snap)
        with self.db.session() as s:
            s.add(Snapshot(instance_id=row.id, name=snap,
                           with_memory=row.state != State.STOPPED))
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
        self.record(name, "restored", f"snapshot {snap} (memory: {sn.with_memory})")
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

    # -- ports -------------------------------------------------------------------
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

    # -- images and host ---------------------------------------------------------
    def images(self) -> builtins.list[dict[str, Any]]:
        from vpshost.host import images

        out = [{"name": i.name, "type": "container", "description": i.description,
                "built": images.is_built(self.config, i.name)} for i in images.IMAGES.values()]
        with suppress(ImportError):
            from vpshost.host import vmimages

            for i in vmimages.list_vm_images(self.config):
                for kind in ("vm", "xen"):  # Xen domains boot the vm images (PV/PVH/HVM)
                    out.append({"name": i["name"], "type": kind,
                                "description": i.get("description", i.get("kind", "")),
                                "built": i["built"]})
        return out

    def image_build(self, name: str, kind: str = "container", force: bool = False,
                    progress: Progress = no_progress) -> None:
        if kind in ("vm", "xen"):
            from vpshost.host import vmimages

            vmimages.build(self.config, name, progress)
            return
        from vpshost.host import images

        images.build(self.config, name, progress, shift=self.config.container.idmap_base,
                     force=force)
        self.record(None, "image-built", f"container image {name}")

    def host_info(self) -> dict[str, Any]:
        from vpshost.host import probe

        return probe.info(self.config)

    # -- tokens and operations ---------------------------------------------------
    def token_create(self, tenant: str, admin: bool = False) -> str:
        check_name(tenant)
        secret = new_secret()
        with self.db.session() as s:
            s.add(Token(tenant=tenant, admin=admin, digest=digest(secret)))
        return secret

    def authenticate(self, secret: str) -> Caller | None:
        with self.db.session() as s:
            tok = s.scalar(select(Token).where(Token.digest == digest(secret)))
            return Caller(tok.tenant, tok.admin) if tok else None

    def op_begin(self, kind: str, instance: str | None, caller: Caller) -> str:
        op_id = str(uuid.uuid4())
        with self.db.session() as s:
            s.add(Operation(id=op_id, kind=kind, instance=instance, tenant=caller.tenant))
        return op_id

    def op_finish(self, op_id: str, error: str | None = None,
                  result: dict[str, Any] | None = None) -> None:
        with self.db.session() as s:
            s.execute(update(Operation).where(Operation.id == op_id).values(
                status="failure" if error else "success", error=error, result=result,
                finished_at=utcnow()))

    def op_get(self, op_id: str, caller: Caller) -> dict[str, Any]:
        with self.db.session() as s:
            op = s.get(Operation, op_id)
            if op is None or not caller.may_see(op.tenant):
                raise NotFound(f"no operation '{op_id}'")
            return {"id": op.id, "kind": op.kind, "instance": op.instance,
                    "status": op.status, "error": op.error, "result": op.result,
                    "created_at": op.created_at.isoformat() + "Z",
                    "finished_at": op.finished_at.isoformat() + "Z" if op.finished_at
                    else None}

    # -- crash recovery ----------------------------------------------------------
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
