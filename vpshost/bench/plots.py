"""PNG plots of a results dict (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

COLORS = {"native": "#555555", "container": "#2a7ab0", "vm": "#d9822b", "xen": "#3a9a5b"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(v: Any) -> bool:
    return isinstance(v, int | float) and not math.isnan(v)


def overhead(r: dict[str, Any], path: Path) -> None:
    from vpshost.bench.report import OVERHEAD_ROWS

    plt = _plt()
    ratios = r["overhead"]["ratios"]
    kinds = list(ratios)
    keys = [(k, lbl) for k, lbl, _ in OVERHEAD_ROWS
            if any(_ok(ratios[t].get(k)) for t in kinds)]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(keys) * max(1, len(kinds)) + 1.8))
    h = 0.8 / max(1, len(kinds))
    for i, t in enumerate(kinds):
        ys = [j + i * h for j in range(len(keys))]
        vals = [ratios[t].get(k) if _ok(ratios[t].get(k)) else None for k, _ in keys]
        ax.barh(ys, [v or 0 for v in vals], height=h, color=COLORS.get(t),
                label=r["labels"][t])
        for y, v in zip(ys, vals, strict=True):
            ax.text(v * 1.08 if v else 0.0012, y,
                    (f"{v:.2f}" if v >= 0.01 else f"{v:.3f}") if v else "not run",
                    va="center", fontsize=8, color="black" if v else "gray")
    ax.set_xscale("log")
    ax.set_xlim(0.001, 20)
    ax.set_yticks([j + h * (len(kinds) - 1) / 2 for j in range(len(keys))])
    ax.set_yticklabels([lbl for _, lbl in keys], fontsize=9)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("ratio to native, log scale (1 = native; left of the line is slower)")
    accel = r["machine"].get("vm_accel", "").upper()
    ax.set_title("Overhead against native" + (f" (VMs: QEMU {accel})" if accel else ""))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def isolation(r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    kinds = list(r["isolation"])
    names = list(next(iter(r["isolation"].values()))["stressors"])
    fig, ax = plt.subplots(figsize=(10, 4.8))
    w = 0.8 / max(1, len(kinds))
    hi = 2.0
    for i, t in enumerate(kinds):
        st = r["isolation"][t]["stressors"]
        for j, n in enumerate(names):
            s = st[n]
            v = s["degradation_pct"]
            x = j + i * w
            failed = s["failed"] / max(1, s["requests"]) * 100
            if _ok(v):
                ratio = max(0.05, 1 + v / 100)
                hi = max(hi, ratio)
                ax.bar(x, ratio - 1, bottom=1, width=w, color=COLORS.get(t),
                       label=r["labels"][t] if j == 0 else None)
                note = f"{ratio:.2g}x"
                if failed:
                    note += f"\n{failed:.0f}% failed"
                y = max(ratio, 1)
            else:
                ax.bar(x, 0, bottom=1, width=w, color=COLORS.get(t),
                       label=r["labels"][t] if j == 0 else None)
                note, y = "all\nfailed", 1
            if not s["survived"]:
                note += "\nneighbour\ndied"
            if s.get("good_serving_after") is False:
                note += "\ngood guest\ndown"
            ax.text(x, y * 1.05, note, ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(0.5, hi * 2)
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    # plain ratios on the axis (0.5, 1, 2, 5...), not powers of ten
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if t <= hi * 2]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.axhline(1, color="black", lw=0.8)
    ax.set_xticks([j + w * (len(kinds) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names)
    ax.set_ylabel("good guest's mean response time\n/ its baseline (log; 1 = unaffected)")
    ax.set_title("Isolation: an HTTP guest while its neighbour runs one stressor")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling(r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for t, series in r["scaling"].items():
        ran = [s for s in series if s["total_mibps"] > 0]  # log scale: no zeros
        ax.plot([s["guests"] for s in ran], [s["total_mibps"] for s in ran], marker="o",
                color=COLORS.get(t), label=r["labels"].get(t, t))
        for s in series:
            if s["failures"] and ran:
                # a round that did not run is marked at the last height that did
                y = s["total_mibps"] if s["total_mibps"] > 0 else ran[-1]["total_mibps"]
                ax.plot([s["guests"]], [y], marker="x", color=COLORS.get(t))
                ax.annotate(f"{s['failures']} failed", (s["guests"], y),
                            fontsize=7, textcoords="offset points", xytext=(3, 5))
    ax.set_xscale("log", base=2)
    xs_all = sorted({s["guests"] for v in r["scaling"].values() for s in v})
    ax.set_xticks(xs_all)
    ax.set_xticklabels([str(x) for x in xs_all])
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("guests running the job at once")
    ax.set_ylabel("total throughput (MiB/s hashed, log scale)")
    ax.set_title(f"Scalability on {r['machine']['cores']} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def density(r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    kinds = list(r["density"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    per = [r["density"][k]["mb_per_guest"] for k in kinds]
    fit = [r["density"][k]["fit_estimate"] or 0 for k in kinds]
    labels = [r["labels"][k] for k in kinds]
    colors = [COLORS.get(k) for k in kinds]
    for ax, vals, title in ((axes[0], per, "host memory per idle guest (MiB)"),
                            (axes[1], fit, "idle guests that fit (extrapolated)")):
        bars = ax.bar(labels, vals, color=colors)
        ax.set_title(title, fontsize=10)
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:,.0f}",
                    ha="center", va="bottom", fontsize=9)
        ax.set_ylim(0, max(vals + [1]) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def startup(r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    kinds = list(r["startup"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    vals = [r["startup"][k]["median_s"] for k in kinds]
    bars = ax.bar([r["labels"][k] for k in kinds], vals, color=[COLORS.get(k) for k in kinds])
    for b, v in zip(bars, vals, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.2f} s", ha="center",
                va="bottom", fontsize=9)
    ax.set_ylabel("create-to-ready, median (s)")
    ax.set_ylim(0, max(vals + [0.1]) * 1.2)
    ax.set_title("Start-up")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(r: dict[str, Any], out: Path) -> dict[str, str]:
    """Write every plot; section -> file name (relative, for the report's links)."""
    done = {}
    for name, fn in (("overhead", overhead), ("isolation", isolation), ("scaling", scaling),
                     ("density", density), ("startup", startup)):
        f = f"{name}.png"
        fn(r, out / f)
        done[name] = f
    return done
