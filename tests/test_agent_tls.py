"""Mutual TLS between the control plane and its agents (vpshost/agent/pki.py).

The unit tests check the certificates themselves. The others start real `vps agent`
processes on 127.0.0.1 (one with mutual TLS, one plain), each with its own state dir
through VPS_* variables, and talk to them with raw TLS sockets, httpx and the control
plane's own client, including `vps host add` in a subprocess. No root, no namespaces.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from vpshost.agent import pki
from vpshost.errors import RuntimeFailure, UsageError

VPS = str(Path(sys.executable).with_name("vps"))
SECRET = "tls-test-secret-0123456789abcdef"
UTC = dt.UTC


# -- certificates (pure) -----------------------------------------------------------------
def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_is_a_ca_for_ten_years() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    _key, ca = pki.make_ca(now=now)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    ca.verify_directly_issued_by(ca)  # self-signed
    assert (ca.not_valid_after_utc - now).days in range(3649, 3651)


def test_host_certificate_names_its_addresses_for_two_years() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    ca_key, ca = pki.make_ca(now=now)
    _key, cert = pki.issue(ca_key, ca, "node1", server=True, ips=["10.0.0.2", "fd00::2"],
                           dns=["node1.example.net"], now=now)
    cert.verify_directly_issued_by(ca)
    assert pki.san_of(cert) == ["10.0.0.2", "fd00::2", "node1.example.net"]
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.rfc4514_string() == "CN=node1,O=vpshost"
    assert (cert.not_valid_after_utc - now).days in range(729, 731)
    # a leaf never outlives its CA
    _key, long = pki.issue(ca_key, ca, "node1", server=True, ips=["10.0.0.2"], days=99999,
                           now=now)
    assert long.not_valid_after_utc == ca.not_valid_after_utc


def test_client_certificate_is_for_clients_only() -> None:
    ca_key, ca = pki.make_ca()
    _key, cert = pki.issue(ca_key, ca, "vpshost control plane", server=False)
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.san_of(cert) == []


def test_host_certificate_needs_an_address() -> None:
    ca_key, ca = pki.make_ca()
    with pytest.raises(UsageError, match="would name no address"):
        pki.issue(ca_key, ca, "node1", server=True)
    with pytest.raises(UsageError, match="not an IP address"):
        pki.issue(ca_key, ca, "node1", server=True, ips=["node1"])


def test_expiry() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    _key, ca = pki.make_ca(days=100, now=now)
    path = Path("ca.crt")
    assert pki.expiry_problem(ca, path, now) is None
    assert "expired on 2026-04-" in str(pki.expiry_problem(ca, path, now + dt.timedelta(101)))
    assert "not valid before" in str(pki.expiry_problem(ca, path, now - dt.timedelta(1)))
    assert not pki.expires_soon(ca, now)
    assert pki.expires_soon(ca, now + dt.timedelta(days=80))


def mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_init_and_issue_files(tmp_path: Path) -> None:
    cp, out = tmp_path / "pki", tmp_path / "node1"
    assert len(pki.init(cp)) == 2
    assert mode(cp) == 0o700 and mode(cp / "ca.key") == 0o600
    assert mode(cp / "client.key") == 0o600 and mode(cp / "ca.crt") == 0o644
    ca_bytes = (cp / "ca.crt").read_bytes()
    assert pki.init(cp) == []  # nothing missing: the CA is never replaced
    # a client certificate close to expiry is renewed, under the same CA
    ca_key = pki._read_key(cp / "ca.key")
    _k, short = pki.issue(ca_key, pki.read_cert(cp / "ca.crt"), "cp", server=False, days=10)
    pki.write_cert(cp / "client.crt", short)
    assert [line.split(":")[0] for line in pki.init(cp)] == [
        "control plane client certificate"]
    assert (cp / "ca.crt").read_bytes() == ca_bytes
    cert = pki.issue_host(cp, "node1", ["127.0.0.1"], [], out)
    assert (out / "ca.crt").read_bytes() == ca_bytes
    assert mode(out) == 0o700 and mode(out / "agent.key") == 0o600
    assert pki.read_cert(out / "agent.crt") == cert
    files = pki.server_files(out)
    assert files.certfile == out / "agent.crt" and files.warnings == ()


def test_issue_without_ca(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no cluster CA"):
        pki.issue_host(tmp_path / "pki", "node1", ["127.0.0.1"], [], tmp_path / "out")


def test_server_files_refuse_a_bad_setup(tmp_path: Path) -> None:
    cp, other, out = tmp_path / "pki", tmp_path / "other", tmp_path / "node1"
    pki.init(cp)
    pki.init(other)
    pki.issue_host(cp, "node1", ["127.0.0.1"], [], out)
    (out / "agent.key").chmod(0o644)
    with pytest.raises(UsageError, match="readable by other users"):
        pki.server_files(out)
    (out / "agent.key").chmod(0o600)
    (out / "ca.crt").write_bytes((other / "ca.crt").read_bytes())
    with pytest.raises(UsageError, match="not signed by the CA"):
        pki.server_files(out)
    (out / "ca.crt").write_bytes((cp / "ca.crt").read_bytes())
    ca_key, ca = pki._read_key(cp / "ca.key"), pki.read_cert(cp / "ca.crt")
    _k, old = pki.issue(ca_key, ca, "node1", server=True, ips=["127.0.0.1"], days=1,
                        now=dt.datetime.now(UTC) - dt.timedelta(days=3))
    pki.write_cert(out / "agent.crt", old)
    with pytest.raises(UsageError, match="expired"):
        pki.server_files(out)
    (out / "agent.key").unlink()
    with pytest.raises(UsageError, match="no agent.key"):
        pki.server_files(out)


def test_client_context_needs_the_pki(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no cluster CA") as e:
        pki.client_context(tmp_path)
    assert "vps pki init" in e.value.hint
    pki.init(tmp_path)
    (tmp_path / "client.key").unlink()
    with pytest.raises(UsageError, match="no client certificate"):
        pki.client_context(tmp_path)


# -- real agents -------------------------------------------------------------------------
@dataclass
class Cluster:
    root: Path
    cp_env: dict[str, str]  # the control plane's VPS_* environment
    tls_port: int
    plain_port: int
    plain_log: Path

    @property
    def pki(self) -> Path:
        return self.root / "cp" / "pki"

    def context(self, ca: Path | None = None, cert_dir: Path | None = None,
                cert: str = "client", tls12: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca or self.pki / "ca.crt"))
        if cert_dir is not None:
            ctx.load_cert_chain(cert_dir / f"{cert}.crt", cert_dir / f"{cert}.key")
        if tls12:  # the client certificate is then checked inside the handshake itself
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def vps(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VPS, *args], env=self.cp_env, capture_output=True, text=True,
                              timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60  # a busy machine imports FastAPI slowly
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"agent on port {port} did not come up: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("tls")
    base = {k: v for k, v in os.environ.items() if not k.startswith("VPS_")}
    base["VPS_CONFIG"] = str(root / "no-config.toml")
    cp_env = dict(base, VPS_STATE_DIR=str(root / "cp"))
    agent_env = dict(base, VPS_STATE_DIR=str(root / "agent"))
    (root / "agent").mkdir()
    (root / "agent" / "agent.secret").write_text(SECRET + "\n")
    for args in (["pki", "init"], ["pki", "issue", "node1", "--ip", "127.0.0.1",
                                   "--out", str(root / "node1-tls")]):
        r = subprocess.run([VPS, *args], env=cp_env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # a second cluster: its CA and client certificate must not get in
    r = subprocess.run([VPS, "pki", "init"], env=dict(base, VPS_STATE_DIR=str(root / "other")),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tls_port, plain_port = free_port(), free_port()
    procs = []
    # the TLS directory comes through the environment ([agent] tls_dir), as on a host
    # whose config names it
    for port, extra, name in ((tls_port, {"VPS_AGENT_TLS_DIR": str(root / "node1-tls")},
                               "tls"), (plain_port, {}, "plain")):
        log = root / f"{name}.log"
        proc = subprocess.Popen([VPS, "agent", "--listen", f"127.0.0.1:{port}"],
                                env=dict(agent_env, **extra), stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
    try:
        for proc, port, name in zip(procs, (tls_port, plain_port), ("tls", "plain"),
                                    strict=True):
            wait_listening(port, proc, root / f"{name}.log")
        yield Cluster(root, cp_env, tls_port, plain_port, root / "plain.log")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def auth(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_the_cluster_client_certificate_and_secret_get_answers(cluster: Cluster) -> None:
    url = f"https://127.0.0.1:{cluster.tls_port}/agent/v1"
    ctx = cluster.context(cert_dir=cluster.pki)
    r = httpx.post(url + "/call", json={"type": "container", "method": "probe", "args": {}},
                   headers=auth(), verify=ctx, timeout=30)
    assert r.status_code == 200, r.text
    assert set(r.json()["result"]) >= {"usable", "detail"}
    info = httpx.get(url + "/info", headers=auth(), verify=ctx, timeout=30)
    assert info.status_code == 200 and info.json()["cores"] >= 1


def test_the_right_certificate_with_a_wrong_secret_gets_401(cluster: Cluster) -> None:
    url = f"https://127.0.0.1:{cluster.tls_port}/agent/v1/info"
    ctx = cluster.context(cert_dir=cluster.pki)
    r = httpx.get(url, headers=auth("wrong-secret-0123456789"), verify=ctx, timeout=30)
    assert r.status_code == 401 and "agent secret" in r.json()["error"]
    assert httpx.get(url, verify=ctx, timeout=30).status_code == 401


def refused_at_handshake(cluster: Cluster, ctx: ssl.SSLContext) -> None:
    """Under TLS 1.2 the agent checks the client certificate inside the handshake, so
    the handshake itself fails."""
    raw = socket.create_connection(("127.0.0.1", cluster.tls_port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1",
                         do_handshake_on_connect=False) as tls, \
            pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls.do_handshake()


@pytest.mark.parametrize("who", ["no certificate", "other CA", "a host's certificate"])
def test_clients_without_a_cluster_client_certificate_are_refused(cluster: Cluster,
                                                                   who: str) -> None:
    cert_dir, cert = {"no certificate": (None, "client"),
                      "other CA": (cluster.root / "other" / "pki", "client"),
                      # serverAuth only: an agent's key cannot pose as the control plane
                      "a host's certificate": (cluster.root / "node1-tls", "agent")}[who]
    refused_at_handshake(cluster, cluster.context(cert_dir=cert_dir, cert=cert, tls12=True))
    ctx13 = cluster.context(cert_dir=cert_dir, cert=cert)
    with ctx13.wrap_socket(socket.create_connection(("127.0.0.1", cluster.tls_port),
                                                    timeout=10),
                           server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.3"
        # under TLS 1.3 the agent checks it after the client's last handshake message
        # and ends the connection before reading any request
        tls.sendall(b"GET /agent/v1/info HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = tls.recv(100)
        except (ssl.SSLError, ConnectionResetError):
            answer = b""
        assert answer == b""  # no HTTP reply at all, not even a 401
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://127.0.0.1:{cluster.tls_port}/agent/v1/info", headers=auth(),
                  verify=ctx13, timeout=10)


def test_the_control_plane_client(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from vpshost.agent.client import AgentClient, RemoteDriver
    from vpshost.config import load

    for k, v in cluster.cp_env.items():
        if k.startswith("VPS_"):
            monkeypatch.setenv(k, v)
    url = f"https://127.0.0.1:{cluster.tls_port}"
    probe = RemoteDriver(load(), "container", AgentClient("node1", url, SECRET)).probe()
    assert isinstance(probe.usable, bool)
    # what goes wrong, said plainly
    cases = {
        "does not name localhost": AgentClient("node1", f"https://localhost:"
                                               f"{cluster.tls_port}", SECRET),
        "is not trusted": AgentClient("node1", url, SECRET, tls=cluster.context(
            ca=cluster.root / "other" / "pki" / "ca.crt",
            cert_dir=cluster.root / "other" / "pki")),
        "refuses this control plane's client certificate": AgentClient(
            "node1", url, SECRET, tls=cluster.context(cert_dir=cluster.root / "other" / "pki")),
        "serves HTTPS": AgentClient("node1", f"http://127.0.0.1:{cluster.tls_port}", SECRET),
        "does not speak TLS": AgentClient("node1", f"https://127.0.0.1:{cluster.plain_port}",
                                          SECRET),
        "is not reachable": AgentClient("node1", f"https://127.0.0.1:{free_port()}", SECRET),
    }
    for words, client in cases.items():
        with pytest.raises(RuntimeFailure) as e:
            client.info()
        assert words in e.value.message, e.value.message
        assert e.value.hint
    monkeypatch.setenv("VPS_PKI_DIR", str(cluster.root / "nowhere"))
    with pytest.raises(UsageError, match="no cluster CA"):
        AgentClient("node1", url, SECRET).info()


def test_host_add_over_mutual_tls(cluster: Cluster) -> None:
    url = f"https://127.0.0.1:{cluster.tls_port}"
    r = cluster.vps("host", "add", "node1", url, "--secret", SECRET, "--json")
    assert r.returncode == 0, r.stderr
    [host] = json.loads(r.stdout)
    assert host["url"] == url and host["cores"] >= 1
    r = cluster.vps("host", "add", "node2", url, "--secret", "wrong-secret-0123456789")
    assert r.returncode != 0 and "wrong agent secret" in r.stderr
    # the cluster has a CA: a plain-HTTP agent is not registered by mistake
    r = cluster.vps("host", "add", "node3", "--url", f"http://127.0.0.1:{cluster.plain_port}",
                    "--secret", SECRET)
    assert r.returncode == 2 and "plain HTTP" in r.stderr and "allow_http" in r.stderr
    r = cluster.vps("host", "list", "--json")
    assert [h["name"] for h in json.loads(r.stdout)] == ["node1"]


def test_a_plain_agent_says_it_has_no_tls(cluster: Cluster) -> None:
    r = httpx.get(f"http://127.0.0.1:{cluster.plain_port}/agent/v1/info", headers=auth(),
                  timeout=30)
    assert r.status_code == 200
    log = cluster.plain_log.read_text()
    assert "warning: no TLS" in log and f"http://127.0.0.1:{cluster.plain_port}" in log


def test_cli_refusals(cluster: Cluster) -> None:
    r = cluster.vps("pki", "issue", "node9", "--out", str(cluster.root / "node9"))
    assert r.returncode == 2 and "would name no address" in r.stderr
    assert not (cluster.root / "node9").exists()
    r = cluster.vps("agent", "--listen", f"127.0.0.1:{free_port()}", "--secret-file",
                    str(cluster.root / "agent" / "agent.secret"),
                    "--tls-dir", str(cluster.root / "missing"))
    assert r.returncode == 2 and "has no agent.crt" in r.stderr and "vps pki issue" in r.stderr
