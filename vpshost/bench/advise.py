"""`vps advise`: pick a guest type for a workload from this host's measured results.

Hard constraints first (another OS or its own kernel rules containers out), then the
workload's figure of merit from the newest results.json: CPU-bound -> CPU ratio to
native; I/O-bound -> disk and network ratios; density and price -> memory per idle
guest and start-up; "kernel" (kernel-heavy: many syscalls, forks, its own tuning) ->
its own kernel unless told otherwise. Every reason quotes the numbers it used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

WORKLOADS = ("cpu", "io", "kernel", "density")


def _r(res: dict[str, Any], kind: str, key: str) -> float | None:
    v = res.get("overhead", {}).get("ratios", {}).get(kind, {}).get(key)
    return v if isinstance(v, int | float) and not math.isnan(v) else None


def _isolation_summary(res: dict[str, Any], kind: str) -> str:
    iso = res.get("isolation", {}).get(kind)
    if not iso:
        return ""
    worst = max(iso["stressors"].items(),
                key=lambda kv: kv[1]["degradation_pct"] if kv[1]["degradation_pct"]
                is not None else 1e9)
    deg = worst[1]["degradation_pct"]
    return (f"worst neighbour for {kind}: {worst[0]} "
            + (f"(+{deg:.0f}% response time)" if deg is not None else "(requests failed)"))


def recommend(res: dict[str, Any], workload: str, needs_own_kernel: bool = False,
              other_os: bool = False) -> dict[str, Any]:
    """{"type", "reasons": [...], "alternatives": {...}} for the workload."""
    if workload not in WORKLOADS:
        from vpshost.errors import UsageError

        raise UsageError(f"unknown workload '{workload}'", f"use one of {', '.join(WORKLOADS)}")
    labels = res.get("labels", {})
    accel = res.get("machine", {}).get("vm_accel", "?").upper()
    kinds = list(res.get("overhead", {}).get("ratios", {}))
    reasons: list[str] = []
    alt: dict[str, str] = {}
    vm_note = (f"VM figures here are QEMU {accel}" + (": software emulation, a KVM host "
               "would be far closer to native" if accel == "TCG" else ""))

    def fmt(kind: str, key: str, what: str) -> str:
        v = _r(res, kind, key)
        return f"{labels.get(kind, kind)} {what} {v:.2f}x native" if v is not None else ""

    if other_os or needs_own_kernel or workload == "kernel":
        why = ("another OS" if other_os else "its own kernel" if needs_own_kernel
               else "kernel-heavy work (own kernel, modules, sysctls)")
        choice = "xen" if "xen" in kinds and not other_os else "vm"
        reasons.append(f"{why}: containers share the host's kernel, so only a VM "
                       f"({'Xen domain' if choice == 'xen' else 'QEMU'}) can run it")
        for key, what in (("cpu_mibps", "CPU"), ("seq_write_mbps", "disk write"),
                          ("tcp_mbit", "TCP throughput")):
            text = fmt(choice, key, what)
            if text:
                reasons.append(text)
        reasons.append(vm_note)
        iso = _isolation_summary(res, choice)
        if iso:
            reasons.append(iso)
        alt["container"] = "ruled out: shares the host kernel"
        return {"type": choice, "workload": workload, "reasons": reasons,
                "alternatives": alt}

    if workload == "cpu":
        key, what = "cpu_mibps", "CPU throughput"
    elif workload == "io":
        key, what = "seq_write_mbps", "disk write (1M direct)"
    else:
        key, what = "", ""
    if workload == "density":
        dens = res.get("density", {})
        scored = {k: d["mb_per_guest"] for k, d in dens.items()
                  if isinstance(d.get("mb_per_guest"), int | float) and d["mb_per_guest"] > 0}
        choice = min(scored, key=lambda k: scored[k]) if scored else "container"
        for k, mb in sorted(scored.items(), key=lambda kv: kv[1]):
            fit = dens[k].get("fit_estimate")
            reasons.append(f"{labels.get(k, k)}: {mb:.1f} MiB of host memory per idle guest"
                           + (f", about {fit:,} would fit" if fit else ""))
        st = res.get("startup", {})
        for k, s in st.items():
            reasons.append(f"{labels.get(k, k)}: ready {s['median_s']:.2f} s after create")
    else:
        scored = {k: v for k in kinds if (v := _r(res, k, key)) is not None}
        if workload == "io":  # weigh network too
            for k in list(scored):
                net = _r(res, k, "tcp_mbit")
                if net is not None:
                    scored[k] = (scored[k] + net) / 2
        choice = max(scored, key=lambda k: scored[k]) if scored else "container"
        for k in sorted(scored, key=lambda k: -scored[k]):
            reasons.append(fmt(k, key, what))
            if workload == "io":
                reasons.append(fmt(k, "tcp_mbit", "TCP throughput"))
        if "vm" in kinds:
            reasons.append(vm_note)
    iso = _isolation_summary(res, choice)
    if iso:
        reasons.append(iso + " (use a VM when tenants must not affect each other)")
    for k in kinds:
        if k != choice:
            alt[k] = "slower or heavier on this host for this workload (numbers above)"
    return {"type": choice, "workload": workload, "reasons": [r for r in reasons if r],
            "alternatives": alt}


def find_results(explicit: Path | None = None) -> Path:
    from vpshost.bench.suite import latest
    from vpshost.config import load
    from vpshost.errors import NotFound

    if explicit:
        if not explicit.exists():
            raise NotFound(f"no results file {explicit}")
        return explicit
    repo_results = Path(__file__).resolve().parents[2] / "docs" / "results"
    found = latest([load().state_dir / "bench"]) or latest([repo_results])
    if found is None:
        raise NotFound("no benchmark results yet", "run `vps bench --quick` first")
    return found


def advise_cli(workload: str, needs_own_kernel: bool, other_os: bool,
               results: Path | None, as_json: bool) -> None:
    path = find_results(results)
    rec = recommend(json.loads(path.read_text()), workload, needs_own_kernel, other_os)
    rec["results"] = str(path)
    if as_json:
        print(json.dumps(rec, indent=2))
        return
    print(f"recommended: {rec['type']}  (workload: {workload}; from {path})")
    for r in rec["reasons"]:
        print(f"  - {r}")
    for k, why in rec["alternatives"].items():
        print(f"  {k}: {why}")
