"""A live move's progress, without a move: the send's recorder and the file it writes,
how `vps migrate` shows the samples, and how criu's refusal is worded.

The real moves (a VM's progress samples, a container refused or moved with CRIU) are in
tests/test_vm_migration.py and tests/test_cluster.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from vpshost.cli.migrate_view import MigrateView, human_bytes, sample_line
from vpshost.drivers.base import PROGRESS_FILE, read_progress, write_progress
from vpshost.drivers.container import criu_problem, criu_reason
from vpshost.drivers.qemu import migrate

# what `criu check` printed on these machines (Debian 12, criu 3.17.1)
CRIU_OUTPUT = """\
Error (criu/util.c:642): exited, status=1
Error (criu/util.c:642): exited, status=1
Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds
Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable
Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.
Error (criu/crtools.c:260): Could not initialize kernel features detection.
"""


def test_criu_reason_is_criu_s_own_words_first_cause_first() -> None:
    assert criu_reason(CRIU_OUTPUT) == (
        "vdso: Unexpected rt vDSO area bounds; vdso: Failed to fill self vdso symtable; "
        "kerndat_vdso_fill_symtable failed when initializing kerndat.")
    assert criu_reason("") == "criu check failed and said nothing"


def test_criu_problem_answers_for_this_host() -> None:
    problem = criu_problem()  # runs the real `criu check` when criu is installed
    if shutil.which("criu") is None:
        assert problem is not None and "not installed" in problem
    else:
        assert problem is None or (problem and "exited, status" not in problem)


def test_the_recorder_writes_whole_samples_in_phase_order(tmp_path: Path) -> None:
    (tmp_path / PROGRESS_FILE).write_text('{"phase": "done"}')  # a previous move's
    rec = migrate._Recorder(tmp_path)
    assert read_progress(tmp_path) == {}  # gone: a new move starts from nothing
    rec.mirror({"offset": 10 << 20, "len": 40 << 20})
    first = read_progress(tmp_path)
    assert first["phase"] == "disk-mirror" and first["percent"] == 25.0
    rec.mirror({"offset": 20 << 20, "len": 40 << 20})  # too soon: not written
    assert read_progress(tmp_path)["seq"] == first["seq"]
    rec.ram({"status": "active", "ram": {"total": 256 << 20, "remaining": 192 << 20,
                                         "transferred": 70 << 20, "dirty-pages-rate": 120,
                                         "dirty-sync-count": 1}})
    ram = read_progress(tmp_path)  # a new phase is written at once
    assert ram["phase"] == "ram-precopy" and ram["percent"] == 25.0
    assert ram["transferred_bytes"] == (20 << 20) + (70 << 20)  # the mirror moved on
    assert ram["dirty_pages_rate"] == 120 and ram["passes"] == 1
    rec.ram({"status": "device", "ram": {"total": 256 << 20, "remaining": 0,
                                         "transferred": 300 << 20}})
    assert read_progress(tmp_path)["phase"] == "completing"
    rec.end("done")
    done = read_progress(tmp_path)
    assert done["phase"] == "done" and done["percent"] == 100.0
    assert done["seq"] == ram["seq"] + 2
    assert [p.name for p in tmp_path.iterdir()] == [PROGRESS_FILE]  # no tmp left


def test_a_torn_or_foreign_progress_file_reads_as_nothing(tmp_path: Path) -> None:
    (tmp_path / PROGRESS_FILE).write_text('{"phase": "disk-')
    assert read_progress(tmp_path) == {}
    (tmp_path / PROGRESS_FILE).write_text("[1, 2]")
    assert read_progress(tmp_path) == {}
    write_progress(tmp_path, {"seq": 3})
    assert json.loads((tmp_path / PROGRESS_FILE).read_text()) == {"seq": 3}


def _sample(seq: int, phase: str, at: float, sent: int, **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "phase": phase, "time": at, "transferred_bytes": sent,
            "done_bytes": sent, "total_bytes": 1 << 30, "percent": 100 * sent / (1 << 30),
            **extra}


def test_without_a_terminal_the_view_prints_plain_lines_with_the_rate(
        capsys: pytest.CaptureFixture[str]) -> None:
    with MigrateView() as view:  # stderr is not a terminal under pytest
        assert view.bar is None
        view.step("preparing h1 to receive web")
        view.sample(_sample(1, "disk-mirror", 100.0, 0))
        view.sample(_sample(2, "disk-mirror", 100.5, 64 << 20))  # same phase, 0.5 s: quiet
        view.sample(_sample(3, "ram-precopy", 101.0, 128 << 20, dirty_pages_rate=50,
                            passes=2))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("preparing h1 to receive web")
    assert lines[1].startswith("disk-mirror    0.0%")
    assert lines[2].startswith("ram-precopy ") and "128.0 MiB/s" in lines[2]
    assert "dirty 50 pages/s" in lines[2] and "pass 2" in lines[2]
    assert len(lines) == 3


def test_sample_line_and_sizes() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(3 << 30) == "3.0 GiB"
    line = sample_line({"phase": "done", "percent": 100.0, "total_bytes": 1,
                        "transferred_bytes": 5 << 20}, None)
    assert line == "done         100.0%  sent 5.0 MiB"
