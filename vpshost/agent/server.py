"""`vps agent`: perform driver operations on this host for the control plane.

Authenticated with a shared secret per host (``Authorization: Bearer <secret>``),
compared in constant time, and, with a TLS directory (``--tls-dir`` or ``[agent]
tls_dir``), by mutual TLS: HTTPS with a client certificate from the cluster CA required
at the handshake, the secret then being a second factor. The agent keeps no state: its
drivers derive everything from the guest the control plane sends, placed under the
agent's own state dir.
"""

from __future__ import annotations

import hmac
import logging
import ssl
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from vpshost.agent import protocol
from vpshost.config import Config, load
from vpshost.drivers.base import Driver, load_driver
from vpshost.errors import NotFound, Unauthorized, UsageError, VpsError
from vpshost.models import Plan, check_name

log = logging.getLogger("vpshost.agent")


def ensure_guest_network(cfg: Config, ip: str) -> None:
    """The bridge of the guest's segment, on this host (cheap when it exists)."""
    from vpshost.host import network
    from vpshost.host.addresses import AddressPlan

    segment = AddressPlan(cfg.network).segment_of(ip)
    if not Path(f"/sys/class/net/{segment.bridge}").exists():
        network.ensure_bridge(cfg.network, segment)
        network.sync_nat(cfg.network, [])


def create_agent_app(cfg: Config, secret: str) -> FastAPI:
    app = FastAPI(title="vpshost agent", docs_url=None, redoc_url=None, openapi_url=None)
    drivers: dict[str, Driver] = {}

    def driver(kind: str) -> Driver:
        if kind not in drivers:
            drivers[kind] = load_driver(kind, cfg)
        return drivers[kind]

    def check(request: Request) -> None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), secret.encode()):
            raise Unauthorized("missing or wrong agent secret",
                               "use the secret given to `vps host add`")

    @app.exception_handler(VpsError)
    async def vps_error(_request: Request, exc: VpsError) -> JSONResponse:
        return JSONResponse(protocol.error_to_json(exc), status_code=exc.http_status)

    @app.get(f"{protocol.API}/info")
    def info(request: Request) -> dict[str, Any]:
        check(request)
        from vpshost.host import probe

        data = probe.info(cfg)
        data["types"] = {}
        for kind in ("container", "vm", "xen"):
            try:
                p = driver(kind).probe()
                data["types"][kind] = {"usable": p.usable, "detail": p.detail}
            except VpsError as exc:
                data["types"][kind] = {"usable": False, "detail": exc.message}
        return data

    def guest_file(name: str, filename: str) -> Path:
        check_name(name)
        if "/" in filename or filename.startswith(".") or not filename:
            raise UsageError(f"'{filename}' is not a guest file name")
        return cfg.guests_dir / name / filename

    @app.get(protocol.API + "/files/{name}/{filename}")
    def get_file(request: Request, name: str, filename: str) -> StreamingResponse:
        check(request)
        path = guest_file(name, filename)
        if not path.is_file():
            raise NotFound(f"guest {name} has no file {filename} here")
        return StreamingResponse(protocol.compressed_chunks(path),
                                 media_type="application/octet-stream")

    @app.put(protocol.API + "/files/{name}/{filename}")
    async def put_file(request: Request, name: str, filename: str) -> dict[str, Any]:
        check(request)
        path = guest_file(name, filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        writer = protocol.SparseWriter(tmp)
        try:
            async for chunk in request.stream():
                writer.feed(chunk)
        finally:
            size = writer.close()
        tmp.rename(path)
        return {"bytes": size}

    @app.post(f"{protocol.API}/call")
    def call(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        # a plain def: FastAPI runs it in a worker thread, so slow driver calls
        # (a VM boot, a disk copy) do not block other requests
        check(request)
        method = body.get("method", "")
        if method not in protocol.METHODS:
            raise UsageError(f"agent method '{method}' is not allowed")
        drv = driver(body.get("type", ""))
        fn = getattr(drv, method, None)
        if fn is None:
            raise UsageError(f"driver '{drv.type}' has no method '{method}'")
        args = dict(body.get("args") or {})
        if isinstance(args.get("plan"), dict):
            args["plan"] = Plan(**args["plan"])
        if body.get("guest") is not None:
            guest = protocol.guest_from_json(body["guest"], cfg.guests_dir)
            if method in ("start", "migrate_prepare", "restore") and guest.net:
                ensure_guest_network(cfg, guest.net.ip)
            result = fn(guest, **args)
        else:
            result = fn(**args)
        return {"result": protocol.to_json(result)}

    return app


def run_agent(listen: str, secret_file: Path | None, tls_dir: Path | None = None) -> None:
    import uvicorn

    from vpshost.agent import pki
    from vpshost.api.server import parse_listen

    cfg = load()
    secret_path = secret_file or cfg.state_dir / "agent.secret"
    if not secret_path.exists():
        raise UsageError(f"no agent secret at {secret_path}",
                         "write one (e.g. `openssl rand -hex 32 > FILE`) and give the same "
                         "value to `vps host add`")
    secret = secret_path.read_text().strip()
    if len(secret) < 16:
        raise UsageError("the agent secret is shorter than 16 characters", "use a longer one")
    host, port = parse_listen(listen)
    tls = tls_dir or (Path(cfg.agent.tls_dir) if cfg.agent.tls_dir else None)
    ssl_options: dict[str, Any] = {}
    if tls is not None:
        files = pki.server_files(tls)
        for warning in files.warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        # CERT_REQUIRED: a connection without a certificate from the cluster CA ends at
        # the handshake, before any request reaches the app
        ssl_options = {"ssl_certfile": str(files.certfile), "ssl_keyfile": str(files.keyfile),
                       "ssl_ca_certs": str(files.cafile), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    else:
        print("warning: no TLS: the agent serves plain HTTP, so its secret and guest data "
              "cross the network in clear and any host that learns the secret can drive it; "
              "set up mutual TLS (`vps pki issue`, then --tls-dir; docs/cluster.md)",
              file=sys.stderr, flush=True)
    scheme = "https" if tls else "http"
    mode = " (mutual TLS)" if tls else ""
    print(f"vpshost agent on {scheme}://{host}:{port}{protocol.API}{mode} "
          f"(state {cfg.state_dir})", flush=True)
    uvicorn.run(create_agent_app(cfg, secret), host=host, port=port, log_level="warning",
                **ssl_options)
