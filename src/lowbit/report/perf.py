"""The performance report: operators on the roofline, the memory breakdown, tokens per second
against batch size, and (for a profile) predicted against measured times."""

from __future__ import annotations

from typing import Any

from lowbit.report.charts import bars, grouped_bars, lines, roofline_chart
from lowbit.report.html import Report


def perf_sections(
    report: Report, result: dict[str, Any], sweep: list[dict[str, Any]], peak: float,
    bandwidth: float,
) -> None:  # fmt: skip
    """The estimate, the roofline, memory, the batch sweep and the operator tables."""
    est = result["estimate"]
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
