"""Growing a container's disk: only while it is stopped, and df inside sees it."""

from __future__ import annotations

from typing import Any

import pytest


def _df_mb(env: Any, name: str) -> int:
    return int(env.ok(name, "df -m / | tail -1").split()[1])


def test_disk_grows_while_stopped(vps_env: Any, make_container: Any) -> None:
    from vpshost.errors import UsageError

    name = make_container(disk_mb=64)
    before = _df_mb(vps_env, name)
    with pytest.raises(UsageError, match="only while it is stopped"):
        vps_env.service.resize(name, disk_mb=200)
    vps_env.service.stop(name, timeout=0)
    assert vps_env.service.resize(name, disk_mb=200)["disk_mb"] == 200
    vps_env.service.start(name)
    after = _df_mb(vps_env, name)
    assert after > before + 100
    with pytest.raises(UsageError, match="only grow"):
        vps_env.service.resize(name, disk_mb=100)
