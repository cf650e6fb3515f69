"""Two control-plane processes, one instance: exactly one operation runs.

Each `vps` process opens its own connection; the state change is a compare-and-set in
the database (UPDATE ... WHERE state IN ...), so the database's own row locking picks
the winner, on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

VPS = str(Path(sys.executable).with_name("vps"))
PG_URL = "postgresql+psycopg://vpshost:vpshost@127.0.0.1/vpshost_test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("lxc-start"),
                                reason="needs root and LXC")


def _pg_available() -> bool:
    try:
        import psycopg

        psycopg.connect("postgresql://vpshost:vpshost@127.0.0.1/vpshost_test",
                        connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means: not here
        return False


def _reset_pg() -> None:
    from sqlalchemy import create_engine, text

    from vpshost.store.schema import Base

    engine = create_engine(PG_URL)
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    state = Path(tempfile.mkdtemp(prefix="vpsconc-", dir="/var/tmp"))
    state.chmod(0o755)
    e = dict(os.environ, VPS_STATE_DIR=str(state), VPS_BRIDGE_PREFIX="vpsk",
             VPS_SUBNET="10.239.0.0/16", VPS_NAT_TABLE="vpsconc")
    if request.param == "postgresql":
        if not _pg_available():
            pytest.skip("PostgreSQL is not running (scripts/postgres.sh starts it)")
        _reset_pg()
        e["VPS_DB_URL"] = PG_URL
    yield e
    subprocess.run([VPS, "delete", "--force", "conc-a"], env=e, capture_output=True)
    if request.param == "postgresql":
        _reset_pg()
    from vpshost.config import NetworkConfig
    from vpshost.host import network

    network.teardown(NetworkConfig(subnet="10.239.0.0/16", bridge_prefix="vpsk",
                                   nft_table="vpsconc"))
    shutil.rmtree(state, ignore_errors=True)


def _vps(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VPS, *args], env=env, capture_output=True, text=True, timeout=120)


def test_one_start_wins(env: dict[str, str]) -> None:
    assert _vps(env, "create", "conc-a", "--memory", "64M", "--disk", "64M").returncode == 0
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _vps(env, "start", "conc-a"), range(2)))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [(r.returncode, r.stderr) for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert "cannot start 'conc-a'" in loser.stderr
    assert ("starting" in loser.stderr) or ("running" in loser.stderr)
    shown = _vps(env, "show", "conc-a", "--json")
    assert '"state": "running"' in shown.stdout
