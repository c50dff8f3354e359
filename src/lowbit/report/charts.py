"""Charts as inline SVG strings (matplotlib, no display): sensitivity heatmaps, per-block bars,
proxy scatter plots, Pareto curves, rooflines and performance lines."""

from __future__ import annotations

import io
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def heatmap(values: list[list[float | None]], rows: list[str], cols: list[str], title: str) -> str:
    """``values[r][c]`` on a log colour scale (blocks × module types)."""
    import numpy as np
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    positive = data[np.isfinite(data) & (data > 0)]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 0.8 + 0.22 * len(rows)))
    norm = LogNorm(positive.min(), positive.max()) if positive.size else None
    shown = np.where(data > 0, data, np.nan)
    image = ax.imshow(shown, aspect="auto", cmap="magma_r", norm=norm, interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_ylabel("block")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _svg(fig)


def grouped_bars(
    series: dict[str, list[float]],
    labels: list[str],
    title: str,
    ylabel: str,
    yscale: str = "log",
) -> str:
    """One group of bars per label (e.g. block), one bar per series (e.g. spec)."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for k, (name, vals) in enumerate(series.items()):
        shown = [max(v, 1e-12) for v in vals] if yscale == "log" else vals
        ax.bar(x + k * width, shown, width, label=name)
    ax.set_yscale(yscale)
    ax.set_xticks(x + 0.4 - width / 2, labels, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _svg(fig)


def histogram(edges: list[float], counts: list[int], xlabel: str, title: str) -> str:
    """Counts in log-spaced bins (``counts[0]`` below ``edges[0]``, the last at or above
    ``edges[-1]``), as a fraction of the total on a log x axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    total = max(sum(counts), 1)
    lefts = [edges[0] / 10**0.25, *edges]
    rights = [*edges, edges[-1] * 10**0.25]
    widths = [r - left for left, r in zip(lefts, rights, strict=True)]
    ax.bar(lefts, [c / total for c in counts], widths, align="edge", edgecolor="white")
    ax.set_xscale("log")
    return _finish(fig, ax, xlabel, "fraction of tokens", title, legend=False)


def scatter(xs: list[float], ys: list[float], xlabel: str, ylabel: str, title: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def pareto(
    curves: dict[str, list[tuple[float, float]]],
    marks: dict[str, tuple[float, float]],
    xlabel: str,
    ylabel: str,
    title: str,
) -> str:
    """Lines of (bits per weight, loss) per method, and single reference points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    for name, (x, y) in marks.items():
        ax.scatter([x], [y], marker="x", s=60, zorder=3)
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_yscale("log")
    return _finish(fig, ax, xlabel, ylabel, title, legend=True)


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, *, legend: bool) -> str:
    """Labels, title and grid (and the legend), then the figure as SVG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
    return _svg(fig)


def roofline_chart(
    ops: dict[str, list[dict[str, Any]]], peak: float, bandwidth: float, title: str
) -> str:
    """Each operator at (FLOP per byte, attained FLOP/s) under the memory and compute roofs."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    lo, hi = 1e-2, 1e5
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(x, np.minimum(x * bandwidth, peak), color="black", lw=1.2, label="roof")
    for (stage, rows), marker in zip(ops.items(), ("o", "s", "^"), strict=False):
        for r in rows:
            if r["kind"] == "comm" or not r["flops"] or not r["seconds"]:
                continue
            ax.scatter(r["intensity"], r["flops"] * r["count"] / r["seconds"], marker=marker, s=22)
            ax.annotate(
                f"{r['name']} ({stage})",
                (r["intensity"], r["flops"] * r["count"] / r["seconds"]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    xlabel = "arithmetic intensity (FLOP per byte)"
    return _finish(fig, ax, xlabel, "attained FLOP/s", title, legend=False)


def bars(values: dict[str, float], title: str, ylabel: str, scale: float = 1.0) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(list(values), [v / scale for v in values.values()])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def lines(
    series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str
) -> str:
    """One line per series on a log₂ x axis (e.g. throughput against batch size)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    return _finish(fig, ax, xlabel, ylabel, title, legend=True)
