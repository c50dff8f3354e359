"""The performance report: operators on the roofline, the memory breakdown, tokens per second
against batch size, and (for a profile) predicted against measured times."""

from __future__ import annotations

from typing import Any

from lowbit.report.charts import _pyplot, _svg, grouped_bars
from lowbit.report.html import Report


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
    ax.set_xlabel("arithmetic intensity (FLOP per byte)")
    ax.set_ylabel("attained FLOP/s")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _svg(fig)


def bars(values: dict[str, float], title: str, ylabel: str, scale: float = 1.0) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(list(values), [v / scale for v in values.values()])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def lines(
    series: dict[str, list[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    log: bool = True,
) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if log:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def perf_report(
    result: dict[str, Any], sweep: list[dict[str, Any]], peak: float, bandwidth: float
) -> Report:
    est = result["estimate"]
    report = Report(f"lowbit perf: {result['model']} on {result['hardware']['name']}")
    report.note(
        f"TTFT {est['ttft_s'] * 1e3:.2f} ms, TPOT {est['tpot_s'] * 1e3:.3f} ms, "
        f"{est['tokens_per_s']:.1f} tokens/s; fits: {est['fits']}; largest batch "
        f"{est['max_batch']}, longest context {est['max_context']} tokens."
    )
    ops = {"prefill": est["prefill_ops"], "decode": est["decode_ops"]}
    report.figure(
        roofline_chart(ops, peak, bandwidth, f"operators on the roofline ({result['compute']})")
    )
    mem = {k: v for k, v in est["memory_bytes"].items() if k != "total"}
    report.figure(bars(mem, "memory per GPU", "GB", 1e9))
    if sweep:
        report.figure(
            lines(
                {"tokens/s": [(r["batch"], r["tokens_per_s"]) for r in sweep]},
                "batch",
                "tokens per second",
                "throughput against batch size",
            )
        )
    for stage, rows in ops.items():
        report.heading(f"{stage}: operators (times summed over the blocks)")
        report.table(
            ["operator", "FLOPs", "bytes", "FLOP/byte", "bound", "total s"],
            [
                [r["name"], r["flops"], r["bytes"], r["intensity"], r["bound"], r["seconds"]]
                for r in rows
            ],
        )
    return report


def profile_report(result: dict[str, Any]) -> Report:
    report = Report(f"lowbit profile: {result['model']} on {result['hardware']['name']}")
    for stage in ("prefill", "decode"):
        rows = result["comparison"][stage]
        report.heading(f"{stage}: predicted against measured")
        report.table(
            ["operator", "predicted s", "measured s", "measured / predicted"],
            [[r["name"], r["predicted_s"], r["measured_s"], r["ratio"]] for r in rows],
        )
        series = {
            "predicted": [r["predicted_s"] for r in rows],
            "measured": [r["measured_s"] for r in rows],
        }
        report.figure(grouped_bars(series, [r["name"] for r in rows], stage, "seconds"))
    return report
