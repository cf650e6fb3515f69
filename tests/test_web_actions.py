"""The web page drives a real container through its whole life, in headless Chromium.

Playwright clicks the page as a user would: create a busybox container from the form,
open its panel, resize it, take and restore a snapshot, forward a port, pause and
resume it, and delete it. Every step is checked in the page and against the service
(the store and LXC), so a button that only looks right fails here.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.apiserver import free_port, serving

pytestmark = [pytest.mark.lxc, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install -y chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def site(vps_env: Any) -> Iterator[dict[str, Any]]:
    """A real API server over the test vpshost, and an admin token for the page."""
    with serving(vps_env.service) as url:
        yield {"url": url, "token": vps_env.service.token_create("webadmin", admin=True)}


@pytest.fixture
def page(site: dict[str, Any]) -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(60_000)
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.goto(f"{site['url']}/#token={site['token']}")
            pg.wait_for_selector("text=tenant webadmin")
            yield pg
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


def _shot(page: Any, what: str) -> None:
    """Keep a screenshot to look at (VPS_KEEP_SCREENSHOT_DIR=DIR)."""
    where = os.environ.get("VPS_KEEP_SCREENSHOT_DIR")
    if where:
        page.screenshot(path=f"{where}/web-{what}.png", full_page=True)


def _row(page: Any, name: str) -> Any:
    return page.locator(f"#rows tr[data-name='{name}']")


def _resize_memory(page: Any, name: str, memory: str) -> None:
    """Open the instance's panel and submit its resize form with a new memory size."""
    _row(page, name).get_by_role("button", name="Manage").click()
    page.wait_for_selector(f"#detail-title:has-text('{name}: container')")
    resize = page.locator("#resize-form")
    resize.locator("input[name=memory]").fill(memory)
    resize.locator("button").click()


def _state(page: Any, name: str, state: str) -> None:
    page.wait_for_selector(f"#rows tr[data-name='{name}'] .state.{state}", timeout=90_000)


def test_a_container_through_its_life_in_the_page(page: Any, vps_env: Any) -> None:
    svc = vps_env.service
    name = vps_env.unique("web")
    try:
        # create from the form
        form = page.locator("#create-form")
        form.locator("input[name=name]").fill(name)
        form.locator("select[name=type]").select_option("container")
        form.locator("select[name=image]").select_option("busybox")
        form.locator("input[name=memory]").fill("128M")
        form.locator("input[name=disk]").fill("256M")
        form.locator("button").click()
        _state(page, name, "running")
        assert svc.show(name)["memory_mb"] == 128

        # its panel; resize the memory live
        _resize_memory(page, name, "192M")
        page.wait_for_selector("#message:has-text('resized')")
        assert svc.show(name)["memory_mb"] == 192
        limit = vps_env.ok(name, "grep MemTotal /proc/meminfo")
        assert int(limit.split()[1]) == 192 * 1024  # lxcfs shows the new limit inside
        expect_limits = re.compile(r"1 cpu, 192M mem, 256M disk")
        page.wait_for_function(
            "(n) => document.querySelector(`#rows tr[data-name='${n}']`).textContent"
            ".includes('192M mem')", arg=name)
        assert expect_limits.search(_row(page, name).inner_text())

        # snapshot, change a file, restore: the file is back as it was
        vps_env.ok(name, "echo before > /root/marker")
        snap = page.locator("#snapshot-form")
        snap.locator("input[name=name]").fill("s1")
        snap.locator("button").click()
        page.wait_for_selector("#snapshots td:text-is('s1')")
        assert [s["name"] for s in svc.snapshots(name)] == ["s1"]
        vps_env.ok(name, "echo after > /root/marker")
        page.once("dialog", lambda d: d.accept())
        page.locator("#snapshots tr", has_text="s1").get_by_role(
            "button", name="Restore").click()
        page.wait_for_selector(f"#message:has-text('restore {name}: done')")
        _state(page, name, "running")
        assert vps_env.ok(name, "cat /root/marker").strip() == "before"

        # a port forward, listed in the panel and in the store; then removed
        port = free_port()
        pf = page.locator("#port-form")
        pf.locator("input[name=host_port]").fill(str(port))
        pf.locator("input[name=guest_port]").fill("8080")
        pf.locator("button").click()
        page.wait_for_selector(f"#ports td:has-text('host {port}')")
        assert [p["host_port"] for p in svc.ports(name)] == [port]
        page.locator("#ports tr", has_text=f"host {port}").get_by_role(
            "button", name="Remove").click()
        page.wait_for_selector("#ports td:text-is('No port forwards.')")
        assert svc.ports(name) == []

        # pause and resume: the container's processes freeze, then run again
        _row(page, name).get_by_role("button", name="Pause").click()
        _state(page, name, "paused")
        assert vps_env.lxc_state(name) == "FROZEN"
        _row(page, name).get_by_role("button", name="Resume").click()
        _state(page, name, "running")
        assert vps_env.lxc_state(name) == "RUNNING"

        # the panel's event log shows what happened
        page.wait_for_selector("#events li:has-text('snapshot')", timeout=10_000)
        _shot(page, "panel")

        # delete, confirmed in the dialog: gone from the page, the store and LXC
        page.once("dialog", lambda d: d.accept())
        _row(page, name).get_by_role("button", name="Delete").click()
        page.wait_for_selector(f"#rows tr[data-name='{name}']", state="detached",
                               timeout=90_000)
        assert name not in vps_env.names()
        assert page.locator("#detail").is_hidden()
    finally:
        vps_env.remove(name)


def test_a_refused_resize_is_shown_and_changes_nothing(page: Any, vps_env: Any,
                                                       make_container: Any) -> None:
    name = make_container(memory_mb=64)
    page.wait_for_selector(f"#rows tr[data-name='{name}']")
    _resize_memory(page, name, "12 parsecs")
    page.wait_for_selector("#message.error")
    assert "memory" in page.locator("#message").inner_text()
    assert vps_env.service.show(name)["memory_mb"] == 64
