"""results.json -> report.md (tables) + PNG plots, written side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

OVERHEAD_ROWS = [
    ("cpu_mibps", "CPU: md5sum throughput", "MiB/s"),
    ("mem_mbps", "memory: dd /dev/zero -> /dev/null", "MiB/s"),
    ("seq_write_mbps", "disk: dd 1 MiB direct write", "MiB/s"),
    ("seq_read_mbps", "disk: dd 1 MiB direct read", "MiB/s"),
    ("write_4k_iops", "disk: dd 4 KiB direct write", "IOPS"),
    ("fio_rand4k_read_iops", "disk: fio 4K random read (QD16)", "IOPS"),
    ("fio_rand4k_write_iops", "disk: fio 4K random write (QD16)", "IOPS"),
    ("fio_seq1m_read_mbps", "disk: fio 1M sequential read", "MiB/s"),
    ("tcp_mbit", "net: TCP host -> guest", "Mbit/s"),
    ("rtt_ms", "net: ping round trip (lower is better)", "ms"),
]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out + [""]


def markdown(r: dict[str, Any], plots: dict[str, str]) -> str:
    m = r["machine"]
    lab = r["labels"]
    kinds = [k for k in ("container", "vm", "xen") if k in r["overhead"]["places"]]
    vm_note = ("VMs ran under **QEMU TCG** (no VT-x/AMD-V on this host): their figures "
               "measure instruction emulation, not KVM, and a KVM host would be far closer "
               "to native." if m.get("vm_accel") == "tcg" else "VMs ran under KVM.")
    L = [f"# vpshost benchmark ({r['mode']})", "",
         f"Started {r['started']}, took {r['duration_s'] / 60:.1f} min.", "",
         "## Machine", "",
         f"- CPU: {m.get('cpu', '?')}, {m['cores']} cores; {m['memory_mb']} MiB RAM",
         f"- kernel {m['kernel']}, cgroup {m.get('cgroup', '?')}, LXC "
         f"{m.get('lxc_version', '?')}, QEMU {m.get('qemu_version', '?')}",
         f"- VM accelerator: **{m['vm_accel'].upper()}** ({m.get('kvm_detail', '')})",
         f"- {vm_note}", ""]
    if r.get("skipped"):
        L += ["Skipped:", ""] + [f"- {k}: {v}" for k, v in r["skipped"].items()] + [""]
    if r.get("notes"):  # what a reader must know about this particular run
        L += ["Notes on this run:", ""] + [f"- {n}" for n in r["notes"]] + [""]
    L += ["Method: every job is the same busybox shell job, run natively on the host and "
          "inside one guest of each type with the same plan (1 vCPU, 128 MiB). Ratios are "
          "guest / native, so 1.00 = as fast as native and lower is worse for every row "
          "(for round-trip time native / guest). See docs/bench.md.", ""]

    ov = r["overhead"]
    L += ["## Overhead", ""]
    rows = []
    for key, label, unit in OVERHEAD_ROWS:
        if key not in ov["places"].get("native", {}):
            continue
        row: list[Any] = [f"{label} ({unit})", ov["places"]["native"].get(key)]
        for k in kinds:
            row += [ov["places"][k].get(key), ov["ratios"][k].get(key)]
        rows.append(row)
    head = ["job", "native"]
    for k in kinds:
        head += [lab[k], "ratio"]
    L += _table(head, rows)
    L += ["fio runs natively and for containers (the host's fio inside the container's "
          "cgroups, on its filesystem); the tiny VM image has no fio, so the VM's disk "
          "figures are the dd rows. The VM disk is a qcow2 overlay: O_DIRECT inside the "
          "guest still goes through QEMU's host-side I/O path. Likewise a container's disk is "
          "an ext4 image on a loop device: O_DIRECT stops at the loop device, which reads "
          "and writes its backing file through the host's page cache, so container disk "
          "figures above native measure that cache, not the disk.", ""]
    if "overhead" in plots:
        L += [f"![overhead ratios]({plots['overhead']})", ""]

    L += ["## Isolation (Matthews et al. 2007)", "",
          f"A good guest serves a 4 KiB page over HTTP at "
          f"{r['params']['isolation']['rate']} requests/s for "
          f"{r['params']['isolation']['seconds']} s per run while its neighbour (same type, "
          "same plan, max 256 processes) runs one stressor. Degradation = mean response "
          "time against the baseline; failed = errors or answers slower than 2 s.", ""]
    rows = []
    for k in kinds:
        iso = r["isolation"][k]
        b = iso["baseline"]
        rows.append([lab[k], "baseline", round(b["mean_ms"], 2), b["p95_ms"], b["failed"],
                     "-", "-"])
        for name, s in iso["stressors"].items():
            rows.append([lab[k], name, s["mean_ms"], s["p95_ms"], s["failed"],
                         s["degradation_pct"], "yes" if s["survived"] else "NO"])
    L += _table(["type", "stressor", "mean ms", "p95 ms", "failed", "degradation %",
                 "stressor survived"], rows)
    if "isolation" in plots:
        L += [f"![isolation]({plots['isolation']})", ""]

    L += ["## Scalability", "",
          f"N guests (1 vCPU each) hash {r['params']['scaling']['mib']} MiB at once; total "
          "throughput = all MiB / the slowest guest's time (guest clock). Native = N "
          "processes on the host." + (
              f" Admission control's vCPU ratio is lifted to {r['bench_vcpu_ratio']} for "
              "the bench: this measures the oversold host, not the refusal."
              if "bench_vcpu_ratio" in r else ""), ""]
    rows = []
    for k, series in r["scaling"].items():
        for s in series:
            fails = f"{s['failures']} ({s['error']})" if s.get("error") else s["failures"]
            rows.append([lab.get(k, k), s["guests"], s["total_mibps"], s["wall_s"], fails])
    L += _table(["type", "guests", "total MiB/s", "slowest s", "failures"], rows)
    if "scaling" in plots:
        L += [f"![scaling]({plots['scaling']})", ""]

    L += ["## Density", "",
          "Idle guests started until the configured count (or 90% of host memory); memory "
          "per guest counted from the host side (container: memory cgroup usage plus its "
          "LXC monitor; VM: QEMU's resident size); fit = what 90% of host memory holds. "
          "The growth of host used memory is shown beside it (other work moves it).", ""]
    rows = [[lab[k], d["plan_memory_mb"], d["guests"], d["mb_per_guest"],
             d.get("host_delta_mb_per_guest"), d["fit_estimate"], d["failures"],
             d["stop_reason"]] for k, d in r["density"].items()]
    L += _table(["type", "plan MiB", "started", "MiB per guest", "host used growth / guest",
                 "fit (extrapolated)", "failures", "stopped because"], rows)
    if "density" in plots:
        L += [f"![density]({plots['density']})", ""]

    L += ["## Start-up", "", "Create-to-ready through the service API (container: exec "
          "answers; VM: the guest agent answers).", ""]
    rows = [[lab[k], s["runs"], s["median_s"], s["min_s"], s["max_s"]]
            for k, s in r["startup"].items()]
    L += _table(["type", "runs", "median s", "min s", "max s"], rows)
    if "startup" in plots:
        L += [f"![start-up]({plots['startup']})", ""]
    if "lab" in r:
        from vpshost.bench import labcompare

        L += labcompare.markdown(r["lab"])
        if "lab" in plots:
            L += [f"![kvm against xen]({plots['lab']})", ""]
    return "\n".join(L)


def write_all(r: dict[str, Any], out: Path) -> None:
    from vpshost.bench.plots import make_plots

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    plots = make_plots(r, out)
    if "lab" in r:
        from vpshost.bench import labcompare

        labcompare.plot(r["lab"], out / "lab.png")
        plots["lab"] = "lab.png"
    (out / "report.md").write_text(markdown(r, plots) + "\n")
