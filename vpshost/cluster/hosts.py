"""Hosts of a cluster: registration, load, placement and drain.

Part of the service layer (it writes state through the service's database session).
With no hosts registered, everything runs on the control plane's own host ("local").
Once hosts are registered, placement chooses among them and, unless
``[cluster] place_local = false``, the control plane's own host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from vpshost.cluster.placement import HostLoad, place
from vpshost.errors import Conflict, NotFound, UsageError
from vpshost.models import Plan, check_name
from vpshost.store.schema import Host, Instance, utcnow

if TYPE_CHECKING:
    from vpshost.service.base import ServiceBase as Service


def _committed(svc: Service, kind: str | None = None) -> dict[str, dict[str, int]]:
    q = select(Instance.host, func.sum(Instance.vcpus), func.sum(Instance.memory_mb),
               func.sum(Instance.disk_mb), func.count()).group_by(Instance.host)
    if kind:
        q = q.where(Instance.type == kind)
    with svc.db.session() as s:
        return {h: {"vcpus": int(c or 0), "memory_mb": int(m or 0), "disk_mb": int(d or 0),
                    "guests": int(n)} for h, c, m, d, n in s.execute(q)}


def loads(svc: Service, kind: str) -> list[HostLoad]:
    used = _committed(svc, kind)
    out = []
    with svc.db.session() as s:
        for h in s.scalars(select(Host).order_by(Host.name)):
            info = h.info or {}
            types = info.get("types", {})
            u = used.get(h.name, {})
            out.append(HostLoad(
                name=h.name, cpus=int(info.get("cores", 0)),
                memory_mb=int(info.get("memory_mb", 0)),
                disk_mb=int(info.get("state_dir_free_mb", 0)),
                used_vcpus=u.get("vcpus", 0), used_memory_mb=u.get("memory_mb", 0),
                used_disk_mb=u.get("disk_mb", 0),
                usable=h.state == "active" and types.get(kind, {}).get("usable", True)))
    return out


def local_can_run(kind: str) -> bool:
    import shutil

    from vpshost.host.probe import is_xen_dom0

    if kind == "xen":
        return is_xen_dom0()
    return shutil.which({"container": "lxc-start", "vm": "qemu-system-x86_64"}[kind]) \
        is not None


def local_load(svc: Service, kind: str) -> HostLoad:
    import os
    import shutil

    import psutil

    u = _committed(svc, kind).get(svc.host, {})
    svc.config.state_dir.mkdir(parents=True, exist_ok=True)
    return HostLoad(name=svc.host, cpus=os.cpu_count() or 1,
                    memory_mb=psutil.virtual_memory().total // (1024 * 1024),
                    disk_mb=shutil.disk_usage(svc.config.state_dir).free // (1024 * 1024),
                    used_vcpus=u.get("vcpus", 0), used_memory_mb=u.get("memory_mb", 0),
                    used_disk_mb=u.get("disk_mb", 0), usable=local_can_run(kind))


def choose(svc: Service, kind: str, plan: Plan, wanted: str | None,
           exclude: str | None = None) -> str:
    """The host a new (or moving) guest goes to."""
    if wanted == svc.host:
        return svc.host
    candidates = [h for h in loads(svc, kind) if h.name != exclude]
    if candidates and not wanted and exclude is None and svc.config.cluster.place_local:
        candidates.append(local_load(svc, kind))  # new guests only: moves go to agents
    if wanted:
        match = [h for h in candidates if h.name == wanted]
        if not match:
            raise NotFound(f"no host named '{wanted}'", "see `vps host list`")
        if not match[0].usable:
            raise Conflict(f"host {wanted} does not take new guests (draining or cannot run "
                           f"{kind})", "pick another host")
        candidates = match
    elif not candidates:
        if exclude is None:
            return svc.host
        raise Conflict("no other host to move the guest to", "add one with `vps host add`")
    return place(candidates, plan, svc.config.overcommit.for_type(kind), kind)


def add(svc: Service, name: str, url: str, secret: str) -> dict[str, Any]:
    from vpshost.agent.client import AgentClient

    check_name(name)
    if name == svc.host:
        raise UsageError(f"'{name}' is the control plane's own host", "pick another name")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"host url '{url}' is not an http(s) URL",
                         "for example https://10.0.0.2:8421")
    ca = svc.config.pki_dir / "ca.crt"
    if url.startswith("http://") and ca.exists() and not svc.config.agent.allow_http:
        # secure by default once the cluster has a CA: no silent plain-HTTP host
        raise UsageError(f"this control plane has a cluster CA ({ca}), so it registers "
                         f"agents over mutual TLS, and {url} is plain HTTP",
                         f"`vps pki issue {name} --ip ADDR --out DIR`, start the agent with "
                         "--tls-dir DIR and add it as https://...; or set [agent] allow_http "
                         "= true to register plain-HTTP agents")
    # proves the URL, the secret and (https://) both certificates
    info = AgentClient(name, url, secret, pki_dir=svc.config.pki_dir).info()
    with svc.db.session() as s:
        if s.scalar(select(Host.id).where(Host.name == name)):
            raise Conflict(f"a host named '{name}' is already registered",
                           "remove it first or pick another name")
        s.add(Host(name=name, url=url, secret=secret, info=info, last_seen=utcnow()))
    svc.record(None, "host-added", f"{name} at {url}: {info.get('cores')} cores, "
               f"{info.get('memory_mb')} MiB")
    return show(svc, name)


def _view(h: Host, used: dict[str, int]) -> dict[str, Any]:
    info = h.info or {}
    return {"name": h.name, "url": h.url, "state": h.state,
            "cores": info.get("cores"), "memory_mb": info.get("memory_mb"),
            "disk_free_mb": info.get("state_dir_free_mb"), "kvm": info.get("kvm"),
            "xen_dom0": info.get("xen_dom0"),
            "types": {k: v.get("usable") for k, v in info.get("types", {}).items()},
            "guests": used.get("guests", 0), "vcpus_committed": used.get("vcpus", 0),
            "memory_committed_mb": used.get("memory_mb", 0),
            "last_seen": h.last_seen.isoformat() + "Z" if h.last_seen else None}


def list_hosts(svc: Service) -> list[dict[str, Any]]:
    used = _committed(svc)
    with svc.db.session() as s:
        return [_view(h, used.get(h.name, {}))
                for h in s.scalars(select(Host).order_by(Host.name))]


def show(svc: Service, name: str) -> dict[str, Any]:
    used = _committed(svc)
    with svc.db.session() as s:
        h = s.scalar(select(Host).where(Host.name == name))
        if h is None:
            raise NotFound(f"no host named '{name}'", "see `vps host list`")
        out = _view(h, used.get(name, {}))
        out["instances"] = list(s.scalars(select(Instance.name)
                                          .where(Instance.host == name)
                                          .order_by(Instance.name)))
    return out


def remove(svc: Service, name: str) -> None:
    with svc.db.session() as s:
        h = s.scalar(select(Host).where(Host.name == name))
        if h is None:
            raise NotFound(f"no host named '{name}'", "see `vps host list`")
        n = s.scalar(select(func.count()).select_from(Instance).where(Instance.host == name))
        if n:
            raise Conflict(f"host {name} still has {n} guest(s)",
                           f"move them with `vps host drain {name}` first")
        s.delete(h)
    svc.record(None, "host-removed", name)


def route_guest(svc: Service, ip: str | None, host: str) -> None:
    """Routed mode: send the guest's /32 to the host that runs it (or drop the route
    when it runs on this host or is gone)."""
    if not (svc.config.cluster.route_guests and ip):
        return
    from urllib.parse import urlparse

    from vpshost.runner import run

    if host == svc.host:
        run(["ip", "route", "del", f"{ip}/32"], check=False)
        return
    via = urlparse(svc.agent(host).url).hostname or ""
    run(["ip", "route", "replace", f"{ip}/32", "via", via])


def set_state(svc: Service, name: str, state: str) -> None:
    with svc.db.session() as s:
        h = s.scalar(select(Host).where(Host.name == name))
        if h is None:
            raise NotFound(f"no host named '{name}'", "see `vps host list`")
        h.state = state
