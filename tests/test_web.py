"""The web page: served at /, and rendered by headless Chromium against a live server.

Light on purpose: the API tests cover behaviour; this checks that the page loads, its
JavaScript reaches the API with the token and fills the table, and a screenshot comes
out. No guests are started: the listed instance is a row in a throw-away store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apiserver import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); "
    "the Makefile installs it for `make test`")


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    """A real uvicorn in a thread over a Service with its own store."""
    from vpshost.config import Config
    from vpshost.service import Service
    from vpshost.store.schema import Instance

    state = Path(tempfile.mkdtemp(prefix="vps-web-"))
    svc = Service(Config(state_dir=state))
    with svc.db.session() as s:
        s.add(Instance(name="web-shown", type="container", tenant="alice", state="stopped",
                       image="busybox", ip="10.240.0.9", vcpus=2, memory_mb=512, swap_mb=0,
                       disk_mb=2048))
    token = svc.token_create("alice")
    try:
        with serving(svc) as url:
            yield {"url": url, "token": token}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_page_is_served(server: dict[str, Any]) -> None:
    resp = httpx.get(server["url"] + "/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "<title>vpshost</title>" in resp.text and "/api/v1" in resp.text


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    profile = tempfile.mkdtemp(prefix="vps-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
             *args], capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@needs_chromium
def test_page_renders_the_instances(server: dict[str, Any]) -> None:
    """The DOM after the JavaScript ran holds the tenant and the listed instance."""
    url = f"{server['url']}/#token={server['token']}"
    out = _chromium("--dump-dom", url)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tenant alice" in out.stdout
    assert "web-shown" in out.stdout and "10.240.0.9" in out.stdout
    assert "2 cpu, 512M mem, 2G disk" in out.stdout


@needs_chromium
def test_screenshot_is_produced(server: dict[str, Any], tmp_path: Path) -> None:
    shot = tmp_path / "web.png"
    out = _chromium(f"--screenshot={shot}", "--window-size=1200,800",
                    f"{server['url']}/#token={server['token']}")
    assert out.returncode == 0, out.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    if os.environ.get("VPS_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["VPS_KEEP_SCREENSHOT"])
