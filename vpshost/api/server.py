"""`vps serve`: reconcile the store with the host, then serve the API and the page."""

from __future__ import annotations

import uvicorn

from vpshost.config import load
from vpshost.errors import UsageError


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8420', ':8420' or '[::1]:8420' -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"cannot listen on '{listen}'", "write HOST:PORT, e.g. 127.0.0.1:8420")
    return host.strip("[]") or "0.0.0.0", int(port)


def run_server(listen: str | None) -> None:
    """One Service per process; after a crash, start-up puts the store right first."""
    from vpshost.api.app import create_app
    from vpshost.service import Service

    cfg = load()
    host, port = parse_listen(listen or cfg.server.listen)
    service = Service(cfg)
    fixed = service.reconcile(all_instances=True,
                              report=lambda msg: print(f"reconciled: {msg}", flush=True))
    if not fixed:
        print("reconciled: store and host agree", flush=True)
    print(f"vpshost API on http://{host}:{port}/api/v1 (docs: /api/v1/docs, web page: /)",
          flush=True)
    uvicorn.run(create_app(service), host=host, port=port, log_level="info")
