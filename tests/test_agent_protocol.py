"""Guest files on the wire: compressed, and written back with their holes."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from vpshost.agent import protocol
from vpshost.models import Guest, NetSpec, Plan


def test_a_mostly_empty_disk_travels_small_and_lands_sparse(tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    with open(src, "wb") as f:
        f.write(os.urandom(100_000))
        f.seek(64 * 1024 * 1024)  # a 64 MiB hole
        f.write(b"tail" * 1000)
    wire = list(protocol.compressed_chunks(src))
    assert sum(map(len, wire)) < 1024 * 1024  # the hole costs next to nothing
    dst = tmp_path / "copy.img"
    assert protocol.write_sparse(dst, iter(wire)) == src.stat().st_size
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_blocks * 512 < 4 * 1024 * 1024  # the hole stayed a hole


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=3000), st.integers(0, 3 * protocol.BLOCK)),
                max_size=6))
def test_round_trip_of_any_mix_of_data_and_zeros(
    parts: list[bytes | int]) -> None:
    import tempfile

    d = Path(tempfile.mkdtemp())
    src = d / "f"
    with open(src, "wb") as f:
        for p in parts:
            f.write(p if isinstance(p, bytes) else b"\0" * p)
    dst = d / "g"
    protocol.write_sparse(dst, protocol.compressed_chunks(src))
    assert dst.read_bytes() == src.read_bytes()


def test_a_guest_crosses_the_wire_under_the_agents_own_directory() -> None:
    g = Guest(id=7, name="web", type="container", image="busybox",
              plan=Plan(memory_mb=64), net=NetSpec("10.1.0.2", 22, "10.1.0.1", "br0",
                                                   "0a:00:00:00:00:07"),
              dir=Path("/control/guests/web"), options={"mode": "pv"})
    back = protocol.guest_from_json(protocol.guest_to_json(g), Path("/agent/guests"))
    assert back.dir == Path("/agent/guests/web")
    assert back.plan == g.plan and back.net == g.net and back.options == g.options
