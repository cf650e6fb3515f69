"""The REST API against the real service and real LXC containers.

One isolated environment per session (its own state directory, bridge prefix, subnet
and nftables table), so the tests never touch the demo's guests or network. The CLI
round trip runs `vps serve` and `vps list --json` as real processes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lxc,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (LXC, bridges, nftables)"),
    pytest.mark.skipif(shutil.which("lxc-start") is None, reason="needs LXC (apt lxc)"),
    # starlette's TestClient suggests httpx2; httpx is what we have and it works
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

ENV = {"VPS_BRIDGE_PREFIX": "vpsa", "VPS_SUBNET": "10.243.0.0/16",
       "VPS_NAT_TABLE": "vpsapitest"}
API = "/api/v1"
VPS = str(Path(sys.executable).with_name("vps"))
SMALL = {"image": "busybox", "memory": "64M", "disk": "64M"}


def _reserve_ids(svc: Any) -> None:
    """Containers' host veths are named after instance ids, and every fresh store
    counts from 1 (the demo's, other sessions'): start this store's ids high."""
    from vpshost.store.schema import Instance

    floor = 14_000_000 + os.getpid() % 2_000_000
    with svc.db.session() as s:
        s.add(Instance(id=floor, name="zz-id-floor", type="container", tenant="-floor",
                       state="error", image="busybox", vcpus=1, memory_mb=16, swap_mb=0,
                       disk_mb=16, last_error="placeholder that keeps ids high (tests)"))


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    state = tempfile.mkdtemp(prefix="vps-api-")
    os.chmod(state, 0o755)  # container roots below it need x access for mapped ids
    saved = {k: os.environ.get(k) for k in [*ENV, "VPS_STATE_DIR", "VPS_SERVER"]}
    os.environ.update(ENV, VPS_STATE_DIR=state)
    os.environ.pop("VPS_SERVER", None)
    from fastapi.testclient import TestClient

    from vpshost.api import create_app
    from vpshost.config import load
    from vpshost.host import network
    from vpshost.service import Service

    cfg = load()
    svc = Service(cfg)
    _reserve_ids(svc)
    tokens = {"a": svc.token_create("alice"), "b": svc.token_create("bob"),
              "admin": svc.token_create("ops", admin=True)}
    try:
        with TestClient(create_app(svc)) as client:
            yield {"svc": svc, "client": client, "tokens": tokens, "state": state}
    finally:
        for inst in svc.list():
            if inst["name"] != "zz-id-floor":
                try:
                    svc.delete(inst["name"], force=True)
                except Exception as exc:  # keep cleaning up the rest
                    print(f"cleanup of {inst['name']} failed: {exc}", file=sys.stderr)
        network.teardown(cfg.network)
        shutil.rmtree(state, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def call(env: dict[str, Any], who: str | None, method: str, path: str,
         **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {env['tokens'][who]}"} if who else {}
    headers.update(kwargs.pop("headers", {}))
    return env["client"].request(method, API + path, headers=headers, **kwargs)


def wait(env: dict[str, Any], who: str, resp: Any, timeout: float = 60) -> dict[str, Any]:
    """Poll the operation a 202 answer names until it ends."""
    assert resp.status_code == 202, resp.text
    href = resp.json()["href"]
    assert resp.headers["location"] == href
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        op = env["client"].get(href, headers={
            "Authorization": f"Bearer {env['tokens'][who]}"}).json()
        if op["status"] != "running":
            return op  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"operation {href} still running after {timeout}s")


def assert_error(resp: Any, status: int, *words: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"]
    for w in words:
        assert w in body["error"], body


@pytest.fixture(scope="module")
def box_a(env: dict[str, Any]) -> str:
    """A busybox container of tenant alice, created through the API."""
    op = wait(env, "a", call(env, "a", "POST", "/instances", json={"name": "api-a", **SMALL}))
    assert op["status"] == "success", op
    assert op["result"]["name"] == "api-a" and op["result"]["state"] == "stopped"
    return "api-a"


# -- auth ------------------------------------------------------------------------------
def test_no_token_is_401_with_json_error(env: dict[str, Any]) -> None:
    for method, path in (("GET", "/instances"), ("GET", "/host"), ("POST", "/instances"),
                         ("GET", "/operations/x")):
        assert_error(call(env, None, method, path), 401, "token")
    assert "vps token create" in call(env, None, "GET", "/instances").json()["detail"]


def test_bad_token_is_401(env: dict[str, Any]) -> None:
    resp = env["client"].get(API + "/instances", headers={"Authorization": "Bearer vps_nope"})
    assert_error(resp, 401, "unknown token")
    resp = env["client"].get(API + "/instances", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert_error(resp, 401)


def test_openapi_document_validates(env: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    resp = env["client"].get(API + "/openapi.json")  # no token needed
    assert resp.status_code == 200
    doc = resp.json()
    validate(doc)
    assert f"{API}/instances/{{name}}/exec" in doc["paths"]
    assert "CreateBody" in doc["components"]["schemas"]
    assert env["client"].get(API + "/docs").status_code == 200


def test_unknown_route_and_malformed_body_use_the_error_shape(env: dict[str, Any]) -> None:
    assert_error(call(env, "a", "GET", "/nowhere"), 404, "no route")
    assert_error(call(env, "a", "POST", "/instances", json={"nmae": "x1"}), 422, "name")
    assert_error(call(env, "a", "POST", "/instances", content=b"{not json",
                      headers={"Content-Type": "application/json"}), 422)


# -- tenants ---------------------------------------------------------------------------
def test_tenants_see_only_their_own(env: dict[str, Any], box_a: str) -> None:
    op = wait(env, "b", call(env, "b", "POST", "/instances", json={"name": "api-b", **SMALL}))
    assert op["status"] == "success", op
    names = {i["name"] for i in call(env, "a", "GET", "/instances").json()}
    assert box_a in names and "api-b" not in names
    names_b = {i["name"] for i in call(env, "b", "GET", "/instances").json()}
    assert "api-b" in names_b and box_a not in names_b
    admin = {i["name"]: i["tenant"] for i in call(env, "admin", "GET", "/instances").json()}
    assert admin[box_a] == "alice" and admin["api-b"] == "bob"
    # another tenant's instance does not exist for bob: 404 everywhere, never 403
    for method, path in (("GET", f"/instances/{box_a}"), ("POST", f"/instances/{box_a}/start"),
                         ("DELETE", f"/instances/{box_a}"),
                         ("POST", f"/instances/{box_a}/exec"),
                         ("GET", f"/instances/{box_a}/ports"),
                         ("GET", f"/events?instance={box_a}")):
        kwargs = {"json": {"command": ["true"]}} if path.endswith("exec") else {}
        assert_error(call(env, "b", method, path, **kwargs), 404, box_a)
    assert call(env, "admin", "GET", f"/instances/{box_a}").status_code == 200
    assert all(e["instance"] != box_a for e in call(env, "b", "GET", "/events").json())
    # operations are private too
    op_id = op["id"]
    assert_error(call(env, "a", "GET", f"/operations/{op_id}"), 404)
    wait(env, "b", call(env, "b", "DELETE", "/instances/api-b"))
    assert_error(call(env, "b", "GET", "/instances/api-b"), 404)


def test_create_refuses_bad_input_at_once(env: dict[str, Any], box_a: str) -> None:
    post = lambda body: call(env, "a", "POST", "/instances", json=body)  # noqa: E731
    assert_error(post({"name": "Bad_Name"}), 400, "invalid name")
    assert_error(post({"name": "ok-x", "memory": "12X"}), 400, "12X")
    assert_error(post({"name": "ok-x", "memory": "1G", "memory_mb": 512}), 400, "both")
    assert_error(post({"name": "ok-x", "image": "no-such"}), 404, "no-such")
    assert_error(post({"name": "ok-x", "type": "floppy"}), 400, "floppy")
    assert_error(post({"name": "ok-x", "cpus": 100000}), 400, "CPUs")
    # duplicate names are refused across tenants (names are host-wide)
    assert_error(post({"name": box_a, **SMALL}), 409, "already exists")
    resp = call(env, "b", "POST", "/instances", json={"name": box_a, **SMALL})
    assert_error(resp, 409, "already exists")
    for r in (post({"name": "Bad_Name"}), post({"name": "ok-x", "memory": "12X"})):
        assert r.json()["detail"], "every 400 comes with a hint"
    assert "ok-x" not in {i["name"] for i in call(env, "admin", "GET", "/instances").json()}


def test_sizes_in_mib_and_as_text(env: dict[str, Any]) -> None:
    op = wait(env, "a", call(env, "a", "POST", "/instances", json={
        "name": "api-mib", "memory_mb": 48, "disk_mb": 80, "swap": "16M"}))
    assert op["status"] == "success", op
    inst = op["result"]
    assert (inst["memory_mb"], inst["disk_mb"], inst["swap_mb"]) == (48, 80, 16)
    resp = call(env, "a", "PATCH", "/instances/api-mib", json={"memory": "96M", "cpus": 1})
    assert resp.status_code == 200, resp.text
    assert resp.json()["memory_mb"] == 96
    assert_error(call(env, "a", "PATCH", "/instances/api-mib", json={}), 400, "nothing")
    assert_error(call(env, "a", "PATCH", "/instances/api-mib", json={"disk": "32M"}), 400,
                 "grow")
    wait(env, "a", call(env, "a", "DELETE", "/instances/api-mib"))


# -- lifecycle -------------------------------------------------------------------------
def test_start_exec_stop_through_the_api(env: dict[str, Any], box_a: str) -> None:
    assert_error(call(env, "a", "POST", f"/instances/{box_a}/stop"), 409, "stopped")
    assert_error(call(env, "a", "POST", f"/instances/{box_a}/exec",
                      json={"command": ["true"]}), 409, "stopped")
    op = wait(env, "a", call(env, "a", "POST", f"/instances/{box_a}/start"))
    assert op["status"] == "success", op
    assert op["result"]["state"] == "running"
    assert call(env, "a", "GET", f"/instances/{box_a}").json()["state"] == "running"

    resp = call(env, "a", "POST", f"/instances/{box_a}/exec",
                json={"command": ["sh", "-c", "echo hello; echo oops >&2; exit 3"]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"returncode": 3, "stdout": "hello\n", "stderr": "oops\n"}
    out = call(env, "a", "POST", f"/instances/{box_a}/exec",
               json={"command": ["hostname"]}).json()
    assert out["stdout"].strip() == box_a
    assert_error(call(env, "a", "POST", f"/instances/{box_a}/exec", json={"command": []}),
                 400, "no command")

    shown = call(env, "a", "GET", f"/instances/{box_a}?stats=true").json()
    assert shown["state"] == "running" and "stats" in shown
    assert_error(call(env, "a", "DELETE", f"/instances/{box_a}"), 409, "running")

    op = wait(env, "a", call(env, "a", "POST", f"/instances/{box_a}/stop?timeout=2"))
    assert op["status"] == "success", op
    assert call(env, "a", "GET", f"/instances/{box_a}").json()["state"] == "stopped"
    kinds = [e["kind"] for e in call(env, "a", "GET", f"/events?instance={box_a}").json()]
    assert "started" in kinds and "stopped" in kinds


def test_ports_and_snapshots(env: dict[str, Any], box_a: str) -> None:
    resp = call(env, "a", "POST", f"/instances/{box_a}/ports",
                json={"host_port": 28411, "guest_port": 80})
    assert resp.status_code == 201, resp.text
    assert resp.json()[0]["host_port"] == 28411
    assert [p["host_port"] for p in call(env, "a", "GET", "/ports").json()] == [28411]
    assert call(env, "b", "GET", "/ports").json() == []
    assert_error(call(env, "a", "POST", f"/instances/{box_a}/ports",
                      json={"host_port": 28411, "guest_port": 81}), 409)
    assert call(env, "a", "DELETE", f"/instances/{box_a}/ports/28411").status_code == 204
    assert_error(call(env, "a", "DELETE", f"/instances/{box_a}/ports/28411"), 404)

    op = wait(env, "a", call(env, "a", "POST", f"/instances/{box_a}/snapshots",
                             json={"name": "s1"}))
    if op["status"] == "failure" and op["http_status"] == 501:
        pytest.skip(f"container snapshots unsupported here: {op['error']}")
    assert op["status"] == "success", op
    assert [s["name"] for s in call(env, "a", "GET", f"/instances/{box_a}/snapshots").json()] \
        == ["s1"]
    assert_error(call(env, "a", "POST", f"/instances/{box_a}/snapshots/nope/restore"), 404)
    op = wait(env, "a", call(env, "a", "POST", f"/instances/{box_a}/snapshots/s1/restore"))
    assert op["status"] == "success", op
    assert call(env, "a", "DELETE", f"/instances/{box_a}/snapshots/s1").status_code == 204


def test_failed_operation_reports_error_and_status(env: dict[str, Any], box_a: str) -> None:
    """A failure past the 202 (say, a state change that won a race) is recorded on the
    operation with message, hint and the status the same error has when direct."""
    from vpshost.client import error_for
    from vpshost.errors import Conflict
    from vpshost.service import Caller

    op_id = env["svc"].op_begin("start", box_a, Caller("alice"))

    def work() -> None:
        raise Conflict(f"'{box_a}' changed state while start was starting", "try again")

    env["client"].app.state.api._run(op_id, work)
    op = call(env, "a", "GET", f"/operations/{op_id}").json()
    assert (op["status"], op["http_status"], op["detail"], op["result"]) == \
        ("failure", 409, "try again", None)
    exc = error_for(op["http_status"], op["error"], op["detail"])
    assert isinstance(exc, Conflict) and exc.hint == "try again"


def test_images_host_events(env: dict[str, Any]) -> None:
    images = call(env, "a", "GET", "/images").json()
    assert any(i["name"] == "busybox" and i["type"] == "container" for i in images)
    assert "kernel" in json.dumps(call(env, "admin", "GET", "/host").json())
    assert_error(call(env, "a", "GET", "/events?limit=0"), 422, "limit")


# -- the CLI through the server -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_round_trip_through_a_real_server(env: dict[str, Any], box_a: str) -> None:
    port = _free_port()
    server_env = {**os.environ}
    server_env.pop("VPS_SERVER", None)
    server = subprocess.Popen([VPS, "serve", "--listen", f"127.0.0.1:{port}"],
                              env=server_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            time.sleep(0.1)
        cli_env = {**os.environ, "VPS_SERVER": url, "VPS_TOKEN": env["tokens"]["a"]}
        out = subprocess.run([VPS, "list", "--json"], env=cli_env, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        assert [r["name"] for r in rows] == [box_a]
        assert {"name", "type", "state", "image", "ip", "cpus", "memory_mb", "swap_mb",
                "disk_mb", "host"} <= set(rows[0])
        # errors come back as the CLI's own: message, hint, exit code 2
        out = subprocess.run([VPS, "show", "api-b-missing"], env=cli_env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2
        assert "error: no instance named 'api-b-missing'" in out.stderr
        assert "hint:" in out.stderr
        # a long operation through the client: create, start, exec, delete
        run = lambda *a: subprocess.run([VPS, *a], env=cli_env,  # noqa: E731
                                        capture_output=True, text=True, timeout=60)
        out = run("create", "api-cli", "--memory", "64M", "--disk", "64M", "--start",
                  "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["state"] == "running"
        out = run("exec", "api-cli", "--", "sh", "-c", "echo from-cli; exit 4")
        assert (out.returncode, out.stdout) == (4, "from-cli\n")
        out = run("delete", "api-cli", "--force")
        assert out.returncode == 0, out.stderr
        # the server is gone: a clear message, not a traceback
        dead = {**cli_env, "VPS_SERVER": f"http://127.0.0.1:{_free_port()}"}
        out = subprocess.run([VPS, "list"], env=dead, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 1
        assert "not reachable" in out.stderr and "vps serve" in out.stderr
    finally:
        server.terminate()
        try:
            log, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            log, _ = server.communicate()
    assert "reconciled:" in log, log
