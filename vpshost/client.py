"""RemoteService: the ``Service`` methods the CLI calls, over the REST API.

Same names, arguments and return shapes as ``vpshost.service.Service``, so the CLI does
not care which it has. Long operations are polled to the end; every error body becomes
the ``VpsError`` subclass of its status, so the CLI prints message and hint and exits
with the same code as it would locally.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from vpshost.drivers.base import ExecResult, Progress, no_progress
from vpshost.errors import (
    Conflict,
    NotFound,
    RuntimeFailure,
    Unauthorized,
    Unsupported,
    UsageError,
    VpsError,
)
from vpshost.service.core import CreateRequest

Rows = list[dict[str, Any]]  # aliases: inside the class, `list` is the method
Argv = list[str]

_BY_STATUS: dict[int, type[VpsError]] = {400: UsageError, 401: Unauthorized, 403: Unauthorized,
                                         404: NotFound, 409: Conflict, 422: UsageError,
                                         501: Unsupported}


def error_for(status: int, message: str, hint: str = "") -> VpsError:
    """The exception a local Service would have raised for this HTTP status."""
    cls = _BY_STATUS.get(status, UsageError if 400 <= status < 500 else RuntimeFailure)
    exc = cls.__new__(cls)  # Unsupported's own __init__ builds its message; bypass it
    VpsError.__init__(exc, message, hint)
    return exc


class RemoteService:
    """A client of `vps serve`, standing in for a local ``Service``."""

    def __init__(self, url: str, token: str, timeout: float = 120.0,
                 poll_interval: float = 0.05) -> None:
        self.url = url.rstrip("/")
        self.base = self.url if self.url.endswith("/api/v1") else self.url + "/api/v1"
        self.poll_interval = poll_interval
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    # -- plumbing ----------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise RuntimeFailure(
                f"the vpshost server at {self.url} is not reachable",
                "start it with `vps serve`, or unset VPS_SERVER (and [server] url) to "
                "work locally") from None
        except httpx.TimeoutException:
            raise RuntimeFailure(f"the vpshost server at {self.url} did not answer in time",
                                 "check that it is running and not overloaded") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                message, hint = str(body["error"]), str(body.get("detail") or "")
            except (ValueError, KeyError, TypeError):
                message, hint = f"HTTP {resp.status_code} from {self.url}: " \
                                f"{resp.text[:200]}", "is VPS_SERVER a vpshost server?"
            raise error_for(resp.status_code, message, hint)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def _wait(self, accepted: dict[str, Any], progress: Progress = no_progress) -> Any:
        """Poll an operation until it ends; its result, or its error raised."""
        op_id = accepted["operation"]
        delay = self.poll_interval
        started, reported = time.monotonic(), False
        while True:
            op = self._call("GET", f"/operations/{op_id}")
            if op["status"] == "success":
                return op.get("result")
            if op["status"] == "failure":
                raise error_for(op.get("http_status") or 500, op.get("error") or "failed",
                                op.get("detail") or "")
            if not reported and time.monotonic() - started > 1.0:  # say so if slow
                progress(f"{accepted['kind']} {accepted.get('instance') or ''}: waiting "
                         f"for the server (operation {op_id})")
                reported = True
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _op(self, method: str, path: str, progress: Progress = no_progress,
            **kwargs: Any) -> Any:
        return self._wait(self._call(method, path, **kwargs), progress)

    # -- instances ---------------------------------------------------------------------
    def create(self, req: CreateRequest, progress: Progress = no_progress) -> dict[str, Any]:
        p = req.plan
        body = {"name": req.name, "type": req.type, "image": req.image, "cpus": p.vcpus,
                "memory_mb": p.memory_mb, "swap_mb": p.swap_mb, "disk_mb": p.disk_mb,
                "cpu_cap_pct": p.cpu_cap_pct, "cpu_weight": p.cpu_weight,
                "io_read_bps": p.io_read_bps, "io_write_bps": p.io_write_bps,
                "io_read_iops": p.io_read_iops, "io_write_iops": p.io_write_iops,
                "bandwidth_mbit": p.bandwidth_mbit, "max_procs": p.max_procs,
                "privileged": req.privileged, "start": req.start, "options": req.options}
        return self._op("POST", "/instances", progress, json=body)

    def start(self, name: str) -> dict[str, Any]:
        return self._op("POST", f"/instances/{name}/start")

    def stop(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        params = {"timeout": timeout} if timeout is not None else {}
        return self._op("POST", f"/instances/{name}/stop",
                        params=params)

    def restart(self, name: str) -> dict[str, Any]:
        return self._op("POST", f"/instances/{name}/restart")

    def pause(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/instances/{name}/pause")

    def resume(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/instances/{name}/resume")

    def delete(self, name: str, force: bool = False) -> None:
        self._op("DELETE", f"/instances/{name}", params={"force": force})

    def list(self) -> Rows:
        return self._call("GET", "/instances")

    def show(self, name: str, stats: bool = False) -> dict[str, Any]:
        return self._call("GET", f"/instances/{name}",
                          params={"stats": stats})

    def resize(self, name: str, **changes: int | None) -> dict[str, Any]:
        names = {"vcpus": "cpus"}
        body = {names.get(k, k): v for k, v in changes.items() if v is not None}
        return self._call("PATCH", f"/instances/{name}", json=body)

    def exec(self, name: str, argv: Argv, timeout: float = 60.0) -> ExecResult:
        if not argv:
            raise UsageError("no command given", "write it after --, e.g. "
                             "`vps exec NAME -- uname -a`")
        out = self._call("POST", f"/instances/{name}/exec",
                         json={"command": argv, "timeout": timeout},
                         timeout=timeout + 30)
        return ExecResult(returncode=out["returncode"], stdout=out["stdout"],
                          stderr=out["stderr"])

    def events(self, name: str | None = None, limit: int = 100) -> Rows:
        params: dict[str, Any] = {"limit": limit}
        if name:
            params["instance"] = name
        return self._call("GET", "/events", params=params)

    # -- ports and snapshots -----------------------------------------------------------
    def port_add(self, name: str, host_port: int, guest_port: int,
                 proto: str = "tcp") -> Rows:
        return self._call("POST", f"/instances/{name}/ports",
                          json={"host_port": host_port, "guest_port": guest_port,
                                "proto": proto})

    def port_remove(self, name: str, host_port: int, proto: str = "tcp") -> None:
        self._call("DELETE", f"/instances/{name}/ports/{host_port}", params={"proto": proto})

    def ports(self, name: str | None = None) -> Rows:
        path = f"/instances/{name}/ports" if name else "/ports"
        return self._call("GET", path)

    def snapshot(self, name: str, snap: str) -> None:
        self._op("POST", f"/instances/{name}/snapshots", json={"name": snap})

    def snapshots(self, name: str) -> Rows:
        return self._call("GET", f"/instances/{name}/snapshots")

    def restore(self, name: str, snap: str) -> dict[str, Any]:
        return self._op("POST",
                        f"/instances/{name}/snapshots/{snap}/restore")

    def delete_snapshot(self, name: str, snap: str) -> None:
        self._call("DELETE", f"/instances/{name}/snapshots/{snap}")

    # -- host --------------------------------------------------------------------------
    def images(self) -> Rows:
        return self._call("GET", "/images")

    def host_info(self) -> dict[str, Any]:
        return self._call("GET", "/host")

    def op_get(self, op_id: str) -> dict[str, Any]:
        return self._call("GET", f"/operations/{op_id}")
