"""The REST API under /api/v1 and the web page at /.

No business logic here: each route authenticates, parses, calls one ``Service`` method
with the caller, and shapes the answer. Long operations run in a thread pool and are
recorded with ``Service.op_begin``/``op_finish``, so a client polls
``/api/v1/operations/{id}``; their cheap checks (name, sizes, image, state) run before
the 202, so a bad request is a 4xx at once rather than a failed operation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from vpshost import states
from vpshost.api.models import (
    Accepted,
    CreateBody,
    ErrorBody,
    EventOut,
    ExecBody,
    ExecOut,
    ImageOut,
    InstanceOut,
    MigrateBody,
    OperationOut,
    PortBody,
    PortOut,
    ResizeBody,
    SnapshotBody,
    SnapshotOut,
    WhoAmI,
)
from vpshost.errors import Forbidden, NotFound, Unauthorized, VpsError
from vpshost.models import check_name
from vpshost.service import Caller, CreateRequest, Service

PREFIX = "/api/v1"
STATIC = Path(__file__).parent / "static"
log = logging.getLogger("vpshost.api")

_bearer = HTTPBearer(auto_error=False, description="A token from `vps token create`.")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in ((400, "Bad request"), (401, "Missing or unknown token"),
                       (404, "No such instance (or not yours)"),
                       (409, "Conflicts with the current state"),
                       (422, "Body or parameters malformed"))
}


def error_response(status: int, error: str, detail: str = "") -> JSONResponse:
    return JSONResponse(status_code=status,
                        content=ErrorBody(error=error, detail=detail).model_dump())


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error", "detail"}, whoever raised it."""

    @app.exception_handler(VpsError)
    async def vps_error(_req: Request, exc: VpsError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("request failed: %s", exc)
        return error_response(exc.http_status, exc.message, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, f"invalid request: {_validation_message(exc)}",
                              f"see the schema at {PREFIX}/docs")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, f"no route {req.method} {req.url.path}",
                                  f"see {PREFIX}/docs for the routes")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"internal error: {exc}", "see the server's log")


def current_caller(request: Request, cred: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    """The tenant (or admin) the bearer token speaks for."""
    if cred is None or cred.scheme.lower() != "bearer" or not cred.credentials:
        raise Unauthorized("missing bearer token",
                           "send `Authorization: Bearer <token>`; make a token with "
                           "`vps token create --tenant NAME`")
    who = request.app.state.api.service.authenticate(cred.credentials)
    if who is None:
        raise Unauthorized("unknown token",
                           "make a new one with `vps token create --tenant NAME`")
    return who  # type: ignore[no-any-return]


Who = Annotated[Caller, Depends(current_caller)]


class Api:
    """The routes, bound to one ``Service`` and one pool of operation workers."""

    def __init__(self, service: Service, workers: int = 8) -> None:
        self.service = service
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vps-op")

    # -- helpers ---------------------------------------------------------------------
    def _check_state(self, name: str, caller: Caller, op: str) -> dict[str, Any]:
        """404 for an instance the caller may not see; 409 if ``op`` cannot run now."""
        inst = self.service.show(name, caller)
        states.check(op, inst["state"], name)
        return inst

    def _submit(self, kind: str, name: str | None, caller: Caller,
                work: Callable[[], dict[str, Any] | None], response: Response,
                op_id: str | None = None) -> Accepted:
        op_id = op_id or self.service.op_begin(kind, name, caller)
        self.pool.submit(self._run, op_id, work)
        href = f"{PREFIX}/operations/{op_id}"
        response.status_code = 202
        response.headers["Location"] = href
        return Accepted(operation=op_id, kind=kind, instance=name, href=href)

    def _run(self, op_id: str, work: Callable[[], dict[str, Any] | None]) -> None:
        try:
            result = work()
        except VpsError as exc:
            self.service.op_finish(op_id, error=exc.message, result={
                "detail": exc.hint, "http_status": exc.http_status})
        except Exception as exc:  # a worker must always record its end
            log.exception("operation %s failed", op_id)
            self.service.op_finish(op_id, error=f"internal error: {exc}", result={
                "detail": "see the server's log", "http_status": 500})
        else:
            self.service.op_finish(op_id, result=result)

    # -- routes ----------------------------------------------------------------------
    def router(self) -> APIRouter:
        r = APIRouter(prefix=PREFIX, responses=_ERRORS,
                      dependencies=[Depends(current_caller)])
        svc = self.service

        @r.get("/instances", response_model=list[InstanceOut], tags=["instances"])
        def list_instances(who: Who) -> list[dict[str, Any]]:
            """The caller's instances (every instance, for an admin)."""
            return svc.list(who)

        @r.post("/instances", status_code=202, response_model=Accepted, tags=["instances"])
        def create(body: CreateBody, who: Who, response: Response) -> Accepted:
            """Create a guest; poll the operation. Bad input is refused before the 202."""
            req = CreateRequest(name=body.name, type=body.type, image=body.image,
                                plan=body.plan(), privileged=body.privileged,
                                start=body.start, options=body.options)
            svc.check_create(req)
            return self._submit("create", body.name, who,
                                lambda: svc.create(req, who), response)

        @r.get("/instances/{name}", response_model=InstanceOut, tags=["instances"])
        def show(name: str, who: Who, stats: bool = False) -> dict[str, Any]:
            """One instance with its ports, snapshots, recent events and, with
            ``stats=true`` while running, its usage."""
            return svc.show(name, who, stats=stats)

        @r.delete("/instances/{name}", status_code=202, response_model=Accepted,
                  tags=["instances"])
        def delete(name: str, who: Who, response: Response,
                   force: Annotated[bool, Query(description="Stop it first.")] = False
                   ) -> Accepted:
            """Delete a guest with its disk, address and port forwards."""
            inst = svc.show(name, who)
            if not (force and inst["state"] in ("running", "paused")):
                states.check("delete", inst["state"], name)

            def work() -> None:
                svc.delete(name, who, force=force)

            return self._submit("delete", name, who, work, response)

        def long_power(verb: str, check: str) -> None:
            @r.post(f"/instances/{{name}}/{verb}", status_code=202, response_model=Accepted,
                    tags=["power"], name=verb, summary=f"{verb.capitalize()} an instance")
            def route(name: str, who: Who, response: Response,
                      timeout: Annotated[float | None, Query(
                          description="stop: seconds before forcing it off")] = None
                      ) -> Accepted:
                self._check_state(name, who, check)
                if verb == "stop":
                    def work() -> dict[str, Any]:
                        return svc.stop(name, who, timeout=timeout)
                else:
                    def work() -> dict[str, Any]:
                        return getattr(svc, verb)(name, who)  # type: ignore[no-any-return]
                return self._submit(verb, name, who, work, response)

        for verb, check in (("start", "start"), ("stop", "stop"), ("restart", "restart")):
            long_power(verb, check)

        def quick_power(verb: str) -> None:
            @r.post(f"/instances/{{name}}/{verb}", response_model=InstanceOut,
                    tags=["power"], name=verb, summary=f"{verb.capitalize()} an instance")
            def route(name: str, who: Who) -> dict[str, Any]:
                return getattr(svc, verb)(name, who)  # type: ignore[no-any-return]

        for verb in ("pause", "resume"):
            quick_power(verb)

        @r.patch("/instances/{name}", response_model=InstanceOut, tags=["instances"])
        def resize(name: str, body: ResizeBody, who: Who) -> dict[str, Any]:
            """Change limits; they apply live where the type allows."""
            return svc.resize(name, who, **body.changes())

        # hosts and migration: operator actions, for admin tokens only
        def admin_only(who: Caller) -> None:
            if not who.admin:
                raise Forbidden("this is for administrators",
                                "use a token made with `vps token create --admin`")

        @r.get("/hosts", tags=["hosts"])
        def hosts(who: Who) -> list[dict[str, Any]]:
            """Registered hosts with what is committed on each (admin)."""
            admin_only(who)
            return svc.host_list()

        @r.post("/instances/{name}/migrate", status_code=202, response_model=Accepted,
                tags=["hosts"])
        def migrate(name: str, body: MigrateBody, who: Who, response: Response) -> Accepted:
            """Move a guest to another host (admin); poll the operation for the
            measured downtime."""
            admin_only(who)
            self._check_state(name, who, "migrate")
            op_id = svc.op_begin("migrate", name, who)

            def report(sample: dict[str, Any]) -> None:
                svc.op_progress(op_id, sample)

            def work() -> dict[str, Any]:
                return svc.migrate(name, to=body.to, live=body.live, frozen=body.frozen,
                                   postcopy=body.postcopy, downtime_ms=body.downtime_ms,
                                   caller=who, sample=report)

            return self._submit("migrate", name, who, work, response, op_id)

        @r.post("/instances/{name}/exec", response_model=ExecOut, tags=["instances"])
        def exec_(name: str, body: ExecBody, who: Who) -> ExecOut:
            """Run a command in a running guest and wait for it (no shell, no stdin)."""
            res = svc.exec(name, body.command, who, timeout=body.timeout)
            return ExecOut(returncode=res.returncode, stdout=res.stdout, stderr=res.stderr)

        # ports
        @r.get("/ports", response_model=list[PortOut], tags=["ports"])
        def all_ports(who: Who) -> list[dict[str, Any]]:
            """Every port forward the caller may see."""
            return svc.ports(None, who)

        @r.get("/instances/{name}/ports", response_model=list[PortOut], tags=["ports"])
        def ports(name: str, who: Who) -> list[dict[str, Any]]:
            return svc.ports(name, who)

        @r.post("/instances/{name}/ports", status_code=201, response_model=list[PortOut],
                tags=["ports"])
        def port_add(name: str, body: PortBody, who: Who) -> list[dict[str, Any]]:
            """Forward a host port to the guest; returns the guest's forwards."""
            return svc.port_add(name, body.host_port, body.guest_port, body.proto, who)

        @r.delete("/instances/{name}/ports/{host_port}", status_code=204, tags=["ports"])
        def port_remove(name: str, host_port: int, who: Who,
                        proto: str = "tcp") -> Response:
            svc.port_remove(name, host_port, proto, who)
            return Response(status_code=204)

        # snapshots
        @r.get("/instances/{name}/snapshots", response_model=list[SnapshotOut],
               tags=["snapshots"])
        def snapshots(name: str, who: Who) -> list[dict[str, Any]]:
            return svc.snapshots(name, who)

        @r.post("/instances/{name}/snapshots", status_code=202, response_model=Accepted,
                tags=["snapshots"])
        def snapshot(name: str, body: SnapshotBody, who: Who, response: Response
                     ) -> Accepted:
            """Snapshot the disk (and memory, where the type can)."""
            check_name(body.name)
            self._check_state(name, who, "snapshot")

            def work() -> dict[str, Any]:
                svc.snapshot(name, body.name, who)
                return svc.show(name, who)

            return self._submit("snapshot", name, who, work, response)

        @r.post("/instances/{name}/snapshots/{snap}/restore", status_code=202,
                response_model=Accepted, tags=["snapshots"])
        def restore(name: str, snap: str, who: Who, response: Response) -> Accepted:
            self._check_state(name, who, "restore")
            taken: Any = svc.snapshots(name, who)  # (mypy reads core's `list` as Service.list)
            if snap not in {s["name"] for s in taken}:
                raise NotFound(f"'{name}' has no snapshot '{snap}'",
                               f"see GET {PREFIX}/instances/{name}/snapshots")
            return self._submit("restore", name, who,
                                lambda: svc.restore(name, snap, who), response)

        @r.delete("/instances/{name}/snapshots/{snap}", status_code=204, tags=["snapshots"])
        def delete_snapshot(name: str, snap: str, who: Who) -> Response:
            svc.delete_snapshot(name, snap, who)
            return Response(status_code=204)

        # the rest
        @r.get("/whoami", response_model=WhoAmI, tags=["host"])
        def whoami(who: Who) -> WhoAmI:
            """The tenant the token speaks for, and whether it is an admin."""
            return WhoAmI(tenant=who.tenant, admin=who.admin)

        @r.get("/images", response_model=list[ImageOut], tags=["host"])
        def images() -> list[dict[str, Any]]:
            return svc.images()

        @r.get("/host", tags=["host"])
        def host() -> dict[str, Any]:
            """This host: kernel, cores, memory, cgroups, LXC/QEMU/KVM/Xen, free disk
            (the keys of `vps host info --json`)."""
            return svc.host_info()

        @r.get("/events", response_model=list[EventOut], tags=["host"])
        def events(who: Who, instance: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100
                   ) -> list[dict[str, Any]]:
            """The event log, newest first; the caller's own unless admin."""
            return svc.events(instance, who, limit=limit)

        @r.get("/operations/{op_id}", response_model=OperationOut, tags=["operations"])
        def operation(op_id: str, who: Who) -> OperationOut:
            """Poll until ``status`` is success or failure."""
            op = svc.op_get(op_id, who)
            extra: dict[str, Any] = {}
            if op["status"] == "failure":
                info = op.pop("result") or {}
                extra = {"detail": info.get("detail", ""),
                         "http_status": info.get("http_status", 500), "result": None}
            elif op["status"] == "running":
                extra = {"progress": (op.pop("result") or {}).get("progress"), "result": None}
            return OperationOut(**op, **extra)

        return r

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def create_app(service: Service | None = None) -> FastAPI:
    """The app for one ``Service`` (a new one from the config when not given)."""
    api = Api(service or Service())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        from vpshost.service.reclaim import start_background

        stop = start_background(api.service)  # balloon reclaim + KSM, [reclaim] interval_s
        yield
        stop.set()
        api.close()

    app = FastAPI(title="vpshost", version="1", lifespan=lifespan,
                  description="VPS guests of every type (LXC containers, QEMU VMs) behind "
                  "one API. Authenticate with `Authorization: Bearer <token>` (make one "
                  "with `vps token create --tenant NAME`). Errors are "
                  '`{"error": ..., "detail": ...}`.',
                  openapi_url=f"{PREFIX}/openapi.json", docs_url=f"{PREFIX}/docs",
                  redoc_url=None)
    app.state.api = api
    _install_error_handlers(app)
    app.include_router(api.router())

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/metrics", tags=["host"], response_class=PlainTextResponse)
    def metrics_route(who: Who) -> PlainTextResponse:
        """Prometheus text format: a series per running instance (labels name, type,
        tenant) plus host memory, PSI and KSM. Needs a bearer token like every route:
        an admin token sees every instance, a tenant's token its own."""
        from vpshost import metrics

        svc = api.service
        text = metrics.prometheus(metrics.collect(svc, who), metrics.host_sample(), svc.host)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
