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
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(keys) * max(1, len(kinds)) + 1.5))
    h = 0.8 / max(1, len(kinds))
    for i, t in enumerate(kinds):
        ys = [j + i * h for j in range(len(keys))]
        vals = [ratios[t].get(k) if _ok(ratios[t].get(k)) else 0 for k, _ in keys]
        bars = ax.barh(ys, vals, height=h, color=COLORS.get(t), label=r["labels"][t])
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_width() + 0.01, b.get_y() + h / 2,
                    f"{v:.2f}" if v else "n/a", va="center", fontsize=8)
    ax.set_yticks([j + h * (len(kinds) - 1) / 2 for j in range(len(keys))])
    ax.set_yticklabels([lbl for _, lbl in keys], fontsize=9)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xlim(0, max(1.25, max((ratios[t].get(k) or 0 for t in kinds for k, _ in keys
                                  if _ok(ratios[t].get(k))), default=1) * 1.15))
    ax.set_xlabel("ratio to native (1.0 = native; lower is worse)")
    ax.set_title("Overhead against native")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def isolation(r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    kinds = list(r["isolation"])
    names = list(next(iter(r["isolation"].values()))["stressors"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    w = 0.8 / max(1, len(kinds))
    top = 10.0
    for i, t in enumerate(kinds):
        st = r["isolation"][t]["stressors"]
        for j, n in enumerate(names):
            s = st[n]
            v = s["degradation_pct"]
            failed = s["failed"] / max(1, s["requests"]) * 100
            x = j + i * w
            val = v if _ok(v) else 0.0
            top = max(top, val)
            ax.bar(x, val, width=w, color=COLORS.get(t),
                   label=r["labels"][t] if j == 0 else None)
            note = f"{val:.0f}%" if _ok(v) else "all failed"
            if failed and _ok(v):
                note += f"\n{failed:.0f}% failed"
            if not s["survived"]:
                note += "\nneighbour died"
            ax.text(x, val, note, ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + w * (len(kinds) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names)
    ax.set_ylim(min(0, ax.get_ylim()[0]), top * 1.3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("good guest's mean response time vs baseline (%)")
    ax.set_title("Isolation: degradation of an HTTP guest per neighbour stressor")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling(r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for t, series in r["scaling"].items():
        xs = [s["guests"] for s in series]
        ys = [s["total_mibps"] for s in series]
        ax.plot(xs, ys, marker="o", color=COLORS.get(t), label=r["labels"].get(t, t))
        for s in series:
            if s["failures"]:
                ax.annotate(f"{s['failures']} failed", (s["guests"], s["total_mibps"]),
                            fontsize=7, textcoords="offset points", xytext=(3, 5))
    ax.set_xscale("log", base=2)
    xs_all = sorted({s["guests"] for v in r["scaling"].values() for s in v})
    ax.set_xticks(xs_all)
    ax.set_xticklabels([str(x) for x in xs_all])
    ax.set_yscale("log")
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
