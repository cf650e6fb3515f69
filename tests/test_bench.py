"""`vps bench` end to end on this host (real containers and TCG VMs), then `vps advise`
on what it measured; plus the advice rules on a fixed result (fast).

The end-to-end test runs the suite's smallest mode (--tiny: every section, the same
code path as --quick and the full suite, smaller sizes and counts) so the test suite
stays within minutes; it asserts structure and sanity, never speed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vpshost.bench.advise import recommend

VPS = str(Path(sys.executable).with_name("vps"))
SECTIONS = ("overhead", "isolation", "scaling", "density", "startup")


def _fixed() -> dict[str, Any]:
    return {
        "labels": {"container": "container (LXC)", "vm": "vm (QEMU TCG)"},
        "machine": {"vm_accel": "tcg"},
        "overhead": {"ratios": {"container": {"cpu_mibps": 0.97, "seq_write_mbps": 0.9,
                                              "tcp_mbit": 0.8},
                                "vm": {"cpu_mibps": 0.05, "seq_write_mbps": 0.2,
                                       "tcp_mbit": 0.1}}},
        "density": {"container": {"mb_per_guest": 3.0, "fit_estimate": 7000},
                    "vm": {"mb_per_guest": 150.0, "fit_estimate": 140}},
        "startup": {"container": {"median_s": 0.2}, "vm": {"median_s": 6.0}},
        "isolation": {},
    }


def test_advice_follows_the_numbers_and_the_constraints() -> None:
    r = _fixed()
    cpu = recommend(r, "cpu")
    assert cpu["type"] == "container" and any("0.97x" in x for x in cpu["reasons"])
    assert any("TCG" in x for x in cpu["reasons"])
    dens = recommend(r, "density")
    assert dens["type"] == "container" and any("3.0 MiB" in x for x in dens["reasons"])
    assert recommend(r, "cpu", other_os=True)["type"] == "vm"
    assert recommend(r, "io", needs_own_kernel=True)["type"] == "vm"
    assert recommend(r, "kernel")["type"] == "vm"
    r["overhead"]["ratios"]["vm"]["cpu_mibps"] = 0.99  # a KVM-like host
    assert recommend(r, "cpu")["type"] == "vm"


def _finite_positive(v: Any) -> bool:
    return isinstance(v, int | float) and not math.isnan(v) and v > 0


@pytest.mark.slow
@pytest.mark.lxc
@pytest.mark.qemu
def test_bench_runs_end_to_end_and_reports_every_section(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("lxc-start") or not shutil.which(
            "qemu-system-x86_64"):
        pytest.skip("needs root, LXC and QEMU")
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPS_")}
    env["VPS_STATE_DIR"] = str(tmp_path / "state")
    env["VPS_CONFIG"] = str(tmp_path / "none.toml")
    r = subprocess.run([VPS, "bench", "--tiny", "--out", str(out)], capture_output=True,
                       text=True, timeout=1800, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "expect about" in r.stderr  # the expected time is stated up front
    res = json.loads((out / "results.json").read_text())
    for section in SECTIONS:
        assert section in res, section
    kinds = ["container", "vm"]
    assert res["machine"]["vm_accel"] in ("tcg", "kvm")
    assert res["labels"]["vm"].endswith(f"({res['machine']['vm_accel'].upper()})") or \
        res["machine"]["vm_accel"].upper() in res["labels"]["vm"]
    assert "xen" in res["skipped"]  # no Xen dom0 here: said, not silently dropped

    ov = res["overhead"]
    for kind in ["native", *kinds]:
        for key in ("cpu_mibps", "mem_mbps", "seq_write_mbps", "seq_read_mbps",
                    "write_4k_iops", "tcp_mbit", "rtt_ms"):
            assert _finite_positive(ov["places"][kind][key]), (kind, key)
    for kind in kinds:
        assert _finite_positive(ov["ratios"][kind]["cpu_mibps"])
    if shutil.which("fio"):
        assert _finite_positive(ov["places"]["container"]["fio_rand4k_read_iops"])

    for kind in kinds:
        iso = res["isolation"][kind]
        assert _finite_positive(iso["baseline"]["mean_ms"]) and iso["baseline"]["failed"] == 0
        assert set(iso["stressors"]) == {"cpu", "memory", "fork-bomb", "disk", "net-send",
                                         "net-receive"}
        for s in iso["stressors"].values():
            assert isinstance(s["survived"], bool) and s["requests"] > 0
            assert s["degradation_pct"] is None or isinstance(s["degradation_pct"], float)
        assert iso["stressors"]["cpu"]["survived"]

    for kind in ["native", *kinds]:
        series = res["scaling"][kind]
        assert [s["guests"] for s in series] == res["params"]["scaling"]["counts"]
        assert all(_finite_positive(s["total_mibps"]) for s in series)
        assert all(s["failures"] == 0 for s in series)
    for kind in kinds:
        d = res["density"][kind]
        assert d["guests"] == res["params"]["density"][kind] and d["failures"] == 0
        assert _finite_positive(d["mb_per_guest"]) and d["fit_estimate"] >= 1
        assert _finite_positive(res["startup"][kind]["median_s"])
    # containers are denser than VMs on any host
    assert res["density"]["container"]["mb_per_guest"] < res["density"]["vm"]["mb_per_guest"]

    md = (out / "report.md").read_text()
    for title in ("## Machine", "## Overhead", "## Isolation", "## Scalability", "## Density",
                  "## Start-up"):
        assert title in md
    assert "TCG" in md or res["machine"]["vm_accel"] == "kvm"
    for png in ("overhead", "isolation", "scaling", "density", "startup"):
        data = (out / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"({png}.png)" in md

    adv = subprocess.run([VPS, "advise", "--workload", "density", "--results",
                          str(out / "results.json"), "--json"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert adv.returncode == 0, adv.stderr
    rec = json.loads(adv.stdout)
    assert rec["type"] == "container" and any("MiB of host memory" in x
                                              for x in rec["reasons"])


def _lab_side(label: str, cpu: float) -> dict[str, Any]:
    return {"label": label, "host": "h", "native": {"cpu_s": 1.0, "mem_s": 0.5},
            "guest": {"cpu_s": cpu, "mem_s": 0.6}, "ratio": {"cpu": round(1 / cpu, 3),
                                                              "mem": 0.833},
            "startup_s": [17.0, 18.5],
            "scaling": [{"guests": 1, "ran": 1, "failed": 0, "mib_per_s": 8.0},
                        {"guests": 2, "ran": 1, "failed": 1, "mib_per_s": 7.0}]}


def test_lab_comparison_report_and_plot(tmp_path: Path) -> None:
    """The KVM-against-Xen section renders every figure and failure it is given."""
    from vpshost.bench import labcompare

    r = {"sizes": {"counts": [1, 2]}, "nesting": "both nested",
         "xen": _lab_side("Xen PV", 1.25), "kvm": _lab_side("KVM vm", 2.0)}
    md = "\n".join(labcompare.markdown(r))
    assert "| CPU job (md5sum), ratio to lab host | 0.8 | 0.5 |" in md
    assert "17.0, 18.5" in md and "(1 failed)" in md
    labcompare.write(r, tmp_path)
    assert json.loads((tmp_path / "lab.json").read_text())["xen"]["ratio"]["cpu"] == 0.8
    assert (tmp_path / "lab.png").read_bytes()[:4] == b"\x89PNG"
    assert "lab.png" in (tmp_path / "lab.md").read_text()
