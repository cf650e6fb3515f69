"""Noisy-neighbour metrics: parsers on fixed text, then /metrics and `vps top` with real
containers (one of them made to hit its memory limit and CPU cap)."""

from __future__ import annotations

from typing import Any

import pytest

from vpshost import metrics

V1_BLKIO = """8:0 Read 4096
8:0 Write 8192
8:0 Total 12288
7:3 Read 100
7:3 Write 0
Total 12388
"""
PSI = """some avg10=1.50 avg60=0.20 avg300=0.00 total=2500000
full avg10=0.00 avg60=0.00 avg300=0.00 total=1000
"""


def test_parsers() -> None:
    assert metrics.parse_blkio_bytes(V1_BLKIO) == (4196, 8192)
    assert metrics.parse_io_stat("259:0 rbytes=10 wbytes=20 rios=1\n8:0 rbytes=5 wbytes=0\n") \
        == (15, 20)
    p = metrics.parse_psi(PSI)
    assert p == {"some_avg10": 1.5, "some_seconds": 2.5, "full_avg10": 0.0,
                 "full_seconds": 0.001}
    assert metrics.parse_psi(None) == {}


def test_rates() -> None:
    a = {"time": 10.0, "cpu_seconds": 1.0, "cpu_wait_seconds": 0.0, "net_rx_bytes": 0,
         "io_read_bytes": None}
    b = {"time": 12.0, "cpu_seconds": 2.0, "cpu_wait_seconds": 0.5, "net_rx_bytes": 2048,
         "io_read_bytes": 7}
    r = metrics.rates(a, b)
    assert r["cpu_pct"] == 50.0 and r["wait_pct"] == 25.0 and r["net_rx_bps"] == 1024
    assert r["io_read_bps"] is None


def test_prometheus_text_escapes_and_skips_missing() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    s = {"name": 'we"ird', "type": "vm", "tenant": "a\\b", "cpu_seconds": 1.5,
         "memory_bytes": None, "unavailable": {}}
    fams = {f.name: f for f in text_string_to_metric_families(metrics.prometheus([s]))}
    assert fams["vps_cpu_seconds"].samples[0].labels["name"] == 'we"ird'
    assert fams["vps_cpu_seconds"].samples[0].value == 1.5
    assert "vps_memory_bytes" not in fams


def _families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.mark.lxc
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_metrics_route_has_a_series_per_running_instance(vps_env, make_container
                                                         ) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from vpshost.api import create_app

    busy = make_container(memory_mb=32, cpu_cap_pct=20)
    idle = make_container()
    stopped = make_container(start=False)
    # hit the memory limit and the CPU cap, move some network bytes
    vps_env.sh(busy, "x=$(head -c 48000000 /dev/zero | tr '\\0' a); echo ${#x}", timeout=60)
    vps_env.sh(busy, "timeout 1 sh -c 'while :; do :; done'; ping -c 2 -W 1 "
               f"{vps_env.service.view(idle)['ip']} >/dev/null", timeout=30)
    admin = vps_env.service.token_create("metrics-admin", admin=True)
    tenant = vps_env.service.token_create("nobody-here")
    with TestClient(create_app(vps_env.service)) as client:
        assert client.get("/metrics").status_code == 401
        r = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        fams = _families(r.text)
        mine = client.get("/metrics", headers={"Authorization": f"Bearer {tenant}"})
        assert not [s for s in _families(mine.text)["vps_instance_up"].samples]
    running = {row["name"] for row in vps_env.service.list() if row["state"] == "running"}
    up = {s.labels["name"]: s.labels for s in fams["vps_instance_up"].samples}
    assert set(up) == running and {busy, idle} <= running and stopped not in up
    assert up[busy] == {"name": busy, "type": "container", "tenant": "default"}
    for fam in ("vps_cpu_seconds", "vps_cpu_throttled_periods", "vps_memory_bytes",
                "vps_memory_limit_hits", "vps_io_read_bytes", "vps_net_receive_bytes",
                "vps_net_transmit_bytes", "vps_cpu_wait_seconds"):
        names = {s.labels["name"] for s in fams[fam].samples}
        assert names == running, fam

    def value(fam: str, name: str) -> float:
        return next(s.value for s in fams[fam].samples if s.labels["name"] == name
                    and not s.name.endswith("_created"))

    assert value("vps_memory_oom_kills", busy) >= 1  # the hog hit 32M and was killed
    assert value("vps_cpu_throttled_periods", busy) > 0  # capped at 20%
    assert value("vps_memory_limit_bytes", busy) == 32 * 2**20
    assert value("vps_net_transmit_bytes", busy) > 0  # the pings
    assert value("vps_cpu_seconds", busy) > value("vps_cpu_seconds", idle)
    assert "vps_host_memory_available_bytes" in fams


@pytest.mark.lxc
def test_top_once_shows_running_instances(vps_env, make_container) -> None:  # type: ignore[no-untyped-def]
    name = make_container()
    r = vps_env.cli("top", "--once", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    assert "CPU%" in r.stdout and "WAIT%" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if name in ln)
    assert "container" in line and "128.0M" in line
