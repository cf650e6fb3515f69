"""``RemoteDriver``: the Driver interface, performed by another host's agent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from vpshost.agent import protocol
from vpshost.config import Config
from vpshost.drivers.base import Driver, ExecResult, Power, Probe, Progress, no_progress
from vpshost.errors import RuntimeFailure
from vpshost.models import Guest, Plan

LONG = 1800.0  # image builds and disk copies can take minutes


class AgentClient:
    def __init__(self, host: str, url: str, secret: str) -> None:
        self.host = host
        self.url = url.rstrip("/")
        self.secret = secret

    def request(self, verb: str, path: str, body: dict[str, Any] | None = None,
                timeout: float = LONG) -> Any:
        try:
            r = httpx.request(verb, self.url + protocol.API + path, json=body,
                              headers={"Authorization": f"Bearer {self.secret}"},
                              timeout=httpx.Timeout(timeout, connect=5.0))
        except httpx.HTTPError as exc:
            raise RuntimeFailure(f"host {self.host}: agent at {self.url} is not reachable "
                                 f"({exc.__class__.__name__}: {exc})",
                                 "check that `vps agent` runs there; `vps host list`") from None
        if r.status_code >= 400:
            try:
                payload = r.json()
            except ValueError:
                payload = {"error": r.text[:500]}
            raise protocol.error_from_json(payload, self.host)
        return r.json()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def read_file(self, guest: str, filename: str) -> Iterator[bytes]:
        url = f"{self.url}{protocol.API}/files/{guest}/{filename}"
        with httpx.stream("GET", url, headers=self._headers(),
                          timeout=httpx.Timeout(LONG, connect=5.0)) as r:
            if r.status_code >= 400:
                r.read()
                raise protocol.error_from_json(r.json(), self.host)
            yield from r.iter_bytes(1 << 20)

    def write_file(self, guest: str, filename: str, chunks: Iterator[bytes]) -> None:
        url = f"{self.url}{protocol.API}/files/{guest}/{filename}"
        r = httpx.put(url, content=chunks, headers=self._headers(),
                      timeout=httpx.Timeout(LONG, connect=5.0))
        if r.status_code >= 400:
            raise protocol.error_from_json(r.json(), self.host)

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/info", timeout=30)
        return result

    def call(self, kind: str, method: str, guest: Guest | None, **args: Any) -> Any:
        body = {"type": kind, "method": method, "args": protocol.to_json(args),
                "guest": protocol.guest_to_json(guest) if guest else None}
        return self.request("POST", "/call", body)["result"]


class RemoteDriver(Driver):
    """Forwards each driver call to the agent of the host the guest lives on."""

    def __init__(self, config: Config, kind: str, agent: AgentClient) -> None:
        super().__init__(config)
        self.type = kind
        self.agent = agent

    def _call(self, method: str, guest: Guest | None, **args: Any) -> Any:
        return self.agent.call(self.type, method, guest, **args)

    def probe(self) -> Probe:
        return Probe(**self._call("probe", None))

    def create(self, guest: Guest, progress: Progress = no_progress) -> None:
        progress(f"creating on host {self.agent.host}")
        self._call("create", guest)

    def start(self, guest: Guest) -> None:
        self._call("start", guest)

    def stop(self, guest: Guest, timeout: float) -> None:
        self._call("stop", guest, timeout=timeout)

    def delete(self, guest: Guest) -> None:
        self._call("delete", guest)

    def power(self, guest: Guest) -> Power:
        return Power(self._call("power", guest))

    def present(self) -> set[str]:
        return set(self._call("present", None))

    def exec(self, guest: Guest, argv: list[str], timeout: float = 60.0) -> ExecResult:
        return ExecResult(**self._call("exec", guest, argv=argv, timeout=timeout))

    def console_argv(self, guest: Guest) -> list[str]:
        raise RuntimeFailure(f"the console of {guest.name} is on host {self.agent.host}",
                             f"run `vps console {guest.name}` there")

    def stats(self, guest: Guest) -> dict[str, Any]:
        result: dict[str, Any] = self._call("stats", guest)
        return result

    def set_limits(self, guest: Guest, plan: Plan) -> None:
        self._call("set_limits", guest, plan=protocol.to_json(plan))

    def pause(self, guest: Guest) -> None:
        self._call("pause", guest)

    def resume(self, guest: Guest) -> None:
        self._call("resume", guest)

    def snapshot(self, guest: Guest, snap: str) -> None:
        self._call("snapshot", guest, snap=snap)

    def restore(self, guest: Guest, snap: str) -> None:
        self._call("restore", guest, snap=snap)

    def delete_snapshot(self, guest: Guest, snap: str) -> None:
        self._call("delete_snapshot", guest, snap=snap)

    def migration_files(self, guest: Guest) -> list[str]:
        return list(self._call("migration_files", guest))

    def migrate_prepare(self, guest: Guest, listen_host: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("migrate_prepare", guest, listen_host=listen_host)
        return result

    def migrate_send(self, guest: Guest, target: dict[str, Any], downtime_ms: int,
                     postcopy: bool) -> dict[str, Any]:
        result: dict[str, Any] = self._call("migrate_send", guest, target=target,
                                            downtime_ms=downtime_ms, postcopy=postcopy)
        return result

    def migrate_finish(self, guest: Guest) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._call("migrate_finish", guest)
        return result

    def migrate_abort(self, guest: Guest) -> None:
        self._call("migrate_abort", guest)

    def migrate_cleanup_source(self, guest: Guest) -> None:
        self._call("migrate_cleanup_source", guest)
