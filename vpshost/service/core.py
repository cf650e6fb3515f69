"""Instance use cases: create, start, stop, resize, delete, exec.

The rest of the service is split by subject (base, ports, snapshots, hosts,
operations, reconcile); ``Service`` puts them together.
"""

from __future__ import annotations

import builtins
import os
import shutil
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

import psutil
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from vpshost import states
from vpshost.drivers.base import ExecResult, Power, Progress, no_progress
from vpshost.errors import Conflict, NotFound, UsageError, VpsError
from vpshost.host.addresses import mac_for
from vpshost.models import Guest, Plan, check_name, check_type
from vpshost.service import sshkeys, views
from vpshost.service.access import LOCAL_ADMIN, Caller
from vpshost.service.hosts import HostsMixin
from vpshost.service.operations import OperationsMixin
from vpshost.service.ports import PortsMixin
from vpshost.service.reconcile import ReconcileMixin
from vpshost.service.snapshots import SnapshotsMixin
from vpshost.states import State
from vpshost.store.schema import (
    Host,
    Instance,
)


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


class Service(HostsMixin, SnapshotsMixin, PortsMixin, OperationsMixin, ReconcileMixin):
    """Create, start, stop, resize and delete guests; read them back."""

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
        if "ssh_keys" in req.options:
            req.options["ssh_keys"] = sshkeys.check(req.options["ssh_keys"])
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
            if (row.options or {}).get("ssh_keys"):
                self._install_ssh_keys(row, guest)
        return self.view(name, caller)

    def _install_ssh_keys(self, row: Instance, guest: Guest) -> None:
        """root's authorized_keys, at every start (a restored snapshot gets them back).
        A guest that cannot take them still runs: the event log says why."""
        keys = row.options["ssh_keys"]
        try:
            res = self.driver_for(row.host, row.type).exec(
                guest, ["sh", "-c", sshkeys.install_script(keys)], 60.0)
            problem = (res.stderr or res.stdout).strip()[-300:] if res.returncode else ""
        except VpsError as exc:
            problem = exc.message
        if problem:
            self.record(row.name, "ssh-keys-failed", f"root's SSH keys not installed: {problem}")

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

    def exec(self, name: str, argv: builtins.list[str], caller: Caller = LOCAL_ADMIN,
             timeout: float = 60.0) -> ExecResult:
        if not argv:
            raise UsageError("no command given", "write it after --, e.g. "
                             "`vps exec NAME -- uname -a`")
        with self.db.session() as s:
            row = self._row(s, name, caller)
        states.check("exec", row.state, name)
        drv = self.driver_for(row.host, row.type)
        res = drv.exec(self.guest(row), argv, timeout)
        if res.returncode != 0 and drv.power(self.guest(row)) is not Power.RUNNING:
            # it stopped behind vpshost's back (killed, host restarted): say so, fix the row
            self._reconcile_one(row)
            now = self.view(name, caller)["state"]
            raise Conflict(f"'{name}' is not running on host {row.host} (it stopped outside "
                           f"vpshost); the store now says {now}", f"vps start {name}")
        return res

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









