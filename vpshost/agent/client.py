"""``RemoteDriver``: the Driver interface, performed by another host's agent.

An https:// agent is dialled with mutual TLS: its certificate must chain to the cluster
CA (and name the URL's address), and the control plane presents its client certificate
(both from ``<state_dir>/pki``, `vps pki init`). The secret still goes along.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from vpshost.agent import protocol
from vpshost.config import Config
from vpshost.drivers.base import Driver, ExecResult, Power, Probe, Progress, no_progress
from vpshost.errors import RuntimeFailure, VpsError
from vpshost.models import Guest, Plan

LONG = 1800.0  # image builds and disk copies can take minutes


class AgentClient:
    def __init__(self, host: str, url: str, secret: str,
                 tls: ssl.SSLContext | None = None, pki_dir: Path | None = None) -> None:
        self.host = host
        self.url = url.rstrip("/")
        self.secret = secret
        self._tls = tls
        self.pki_dir = pki_dir  # the control plane's CA and client certificate

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx checks the agent with: the cluster CA and our client certificate
        for https://, loaded on first use (plain http:// never needs them)."""
        if not self.url.startswith("https://"):
            return True
        if self._tls is None:
            from vpshost.agent import pki
            from vpshost.config import load

            self._tls = pki.client_context(self.pki_dir or load().pki_dir)
        return self._tls

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as exc:
            raise self.explain(exc) from None

    def explain(self, exc: httpx.HTTPError) -> VpsError:
        """A transport failure as what went wrong and what to do (TLS failures first)."""
        text = _chain_text(exc)
        where = f"host {self.host}: agent at {self.url}"
        if "CERTIFICATE_VERIFY_FAILED" in text and "mismatch" in text:
            addr = urlparse(self.url).hostname or ""
            flag = "--ip" if _is_ip(addr) else "--dns"
            return RuntimeFailure(
                f"{where}: its certificate does not name {addr}",
                f"issue it for that address (`vps pki issue {self.host} {flag} {addr} --out "
                "DIR`) and restart the agent with --tls-dir DIR, or use an address the "
                "certificate names")
        if "CERTIFICATE_VERIFY_FAILED" in text:
            reason = text.split("certificate verify failed:")[-1].split("(")[0].strip()
            return RuntimeFailure(
                f"{where}: its certificate is not trusted ({reason})",
                "the agent must serve a certificate issued by this control plane's cluster CA "
                f"and still valid: `vps pki issue {self.host} --ip ADDR --out DIR` here, copy "
                "DIR to the host and restart `vps agent --tls-dir DIR`")
        if any(s in text for s in ("WRONG_VERSION_NUMBER", "record layer failure",
                                   "packet length too long", "HTTP_REQUEST")):
            return RuntimeFailure(
                f"{where} does not speak TLS (it serves plain HTTP)",
                f"start the agent with --tls-dir DIR (`vps pki issue {self.host}`), or "
                "register it with an http:// URL")
        if "alert" in text and any(s in text for s in (
                "CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "certificate required",
                "bad certificate", "unknown ca", "UNSUPPORTED_CERTIFICATE")):
            return RuntimeFailure(
                f"{where} refused this control plane's client certificate (missing, expired, "
                "or from another cluster CA)",
                "issue the agent's certificate from this control plane's CA (`vps pki issue`) "
                "and check `vps pki init` has made the client certificate")
        if self.url.startswith("https://") and ("UNEXPECTED_EOF" in text or isinstance(
                exc, httpx.RemoteProtocolError | httpx.ReadError)) \
                and _refuses_client(self.url, self.verify):
            # the agent's certificate passed (else CERTIFICATE_VERIFY_FAILED above), and
            # an agent that rejects the client certificate just closes the connection
            return RuntimeFailure(
                f"{where} closes the connection without answering after the TLS handshake: "
                "it refuses this control plane's client certificate (not from its cluster CA, "
                "or expired)",
                "issue the agent's certificate from this control plane's CA "
                f"(`vps pki issue {self.host}`; `vps pki init` renews the client certificate); "
                "restart the agent after giving it the new certificate")
        if self.url.startswith("http://") and _speaks_tls(self.url):
            return RuntimeFailure(
                f"{where}: the agent serves HTTPS (mutual TLS), not plain HTTP",
                f"use https://{self.url.removeprefix('http://')}")
        return RuntimeFailure(f"{where} is not reachable ({exc.__class__.__name__}: {exc})",
                              "check that `vps agent` runs there; `vps host list`")

    def request(self, verb: str, path: str, body: dict[str, Any] | None = None,
                timeout: float = LONG) -> Any:
        with self._reaching():
            r = httpx.request(verb, self.url + protocol.API + path, json=body,
                              headers=self._headers(), verify=self.verify,
                              timeout=httpx.Timeout(timeout, connect=5.0))
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
        with self._reaching(), httpx.stream("GET", url, headers=self._headers(),
                                            verify=self.verify,
                                            timeout=httpx.Timeout(LONG, connect=5.0)) as r:
            if r.status_code >= 400:
                r.read()
                raise protocol.error_from_json(r.json(), self.host)
            yield from r.iter_bytes(1 << 20)

    def write_file(self, guest: str, filename: str, chunks: Iterator[bytes]) -> None:
        url = f"{self.url}{protocol.API}/files/{guest}/{filename}"
        with self._reaching():
            r = httpx.put(url, content=chunks, headers=self._headers(), verify=self.verify,
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


def _chain_text(exc: BaseException) -> str:
    """httpx wraps the ssl error two levels down; its reason code is what tells."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 8:
        parts.append(f"{seen.__class__.__name__}: {seen}")
        if isinstance(seen, ssl.SSLError) and seen.reason:
            parts.append(str(seen.reason))
        seen = seen.__cause__ or seen.__context__
    return " | ".join(parts)


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _refuses_client(url: str, verify: ssl.SSLContext | bool) -> bool:
    """Whether the agent ends every connection of ours without an HTTP answer (rather
    than this one request failing, e.g. an agent that died mid-call)."""
    if not isinstance(verify, ssl.SSLContext):
        return False
    u = urlparse(url)
    try:
        raw = socket.create_connection((u.hostname or "", u.port or 443), timeout=5)
    except OSError:
        return False
    try:
        with raw, verify.wrap_socket(raw, server_hostname=u.hostname) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")  # any answer (404) will do
            return tls.recv(16) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return False


def _speaks_tls(url: str) -> bool:
    """Whether the server at an http:// URL answers a TLS ClientHello like a TLS server
    (so the URL's scheme is what is wrong)."""
    u = urlparse(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # only the protocol counts
    try:
        with socket.create_connection((u.hostname or "", u.port or 80), timeout=3) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.version()
        return True
    except ssl.SSLError as exc:
        # an alert (e.g. "certificate required") is TLS; an HTTP reply is not
        return exc.reason not in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE",
                                  "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")
    except OSError:
        return False


class RemoteDriver(Driver):
    """Forwards each driver call to the agent of the host the guest lives on."""

    def __init__(self, config: Config, kind: str, agent: AgentClient) -> None:
        super().__init__(config)
        self.type = kind
        self.agent = agent
        if agent.pki_dir is None:
            agent.pki_dir = config.pki_dir

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

    def snapshot(self, guest: Guest, snap: str) -> bool | None:
        memory = self._call("snapshot", guest, snap=snap)
        return None if memory is None else bool(memory)

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
