"""The comparison report: accuracy and flips per task, accuracy by category, flip rate by the
reference's margin, and the per-token KL divergence distribution."""

from __future__ import annotations

from typing import Any

from lowbit.report.charts import bars, grouped_bars, histogram
from lowbit.report.console import fp_fn_cell
from lowbit.report.html import Report


def compare_sections(report: Report, result: dict[str, Any]) -> None:
    """Tasks, categories, flips by margin and the KL histogram, as far as ``result`` has them."""
    comparison = result.get("comparison")
    if comparison:
        _tasks(report, comparison["tasks"])
        _categories(report, comparison["categories"])
        _margins(report, comparison["tasks"])
    text = result.get("text")
    if text:
        _kl(report, text)


def _tasks(report: Report, tasks: dict[str, Any]) -> None:
    report.heading("tasks: accuracy, flips and error overlap")
    rows = []
    for name, c in tasks.items():
        ratio = fp_fn_cell(c.get("fp_fn"))
        rows.append(
            [
                name, c["n"], c["acc_ref"], c["acc_quant"], c["delta"], c["flips_to_wrong"],
                c["flips_to_right"], c["flip_rate"], c["error_jaccard"], c["mcnemar"]["p_exact"],
                ratio,
            ]
        )  # fmt: skip
    header = [
        "task", "n", "acc ref", "acc quant", "Δ acc", "right→wrong", "wrong→right", "flip rate",
        "error Jaccard", "McNemar p", "FP/FN ref → quant (Δ ratio)",
    ]  # fmt: skip
    rows += [
        [f"{name} (acc_norm)", n["n"], n["acc_ref"], n["acc_quant"],
         n["acc_quant"] - n["acc_ref"], n["flips_to_wrong"], n["flips_to_right"], n["flip_rate"],
         n["error_jaccard"], n["mcnemar"]["p_exact"], "n/a"]
        for name, c in tasks.items() if (n := c.get("acc_norm")) and not _is_subject(name)
    ]  # fmt: skip
    report.table(header, rows)
    report.note(
        "Flips count items whose correctness changed; the error Jaccard is "
        "|E_ref ∩ E_quant| / |E_ref ∪ E_quant|; McNemar's exact two-sided p-value tests the "
        "accuracy change on the discordant items; FP/FN is for two-way tasks (false positives: "
        "the positive answer chosen where the other was right), with the positive class of "
        "each: "
        + "; ".join(
            f"{n}: {c['fp_fn'].get('positive', 'choice 2')}"
            for n, c in tasks.items()
            if c.get("fp_fn")
        )
        + "."
    )


def _is_subject(name: str) -> bool:
    from lowbit.report.console import is_mmlu_subject

    return is_mmlu_subject(name)


def _categories(report: Report, rows: list[dict[str, Any]]) -> None:
    report.heading("accuracy by MMLU category and by task family")
    report.table(
        ["kind", "group", "n", "acc ref", "acc quant", "Δ acc"],
        [[r["kind"], r["group"], r["n"], r["acc_ref"], r["acc_quant"], r["delta"]] for r in rows],
    )
    labels = [r["group"] for r in rows]
    series = {
        "reference": [r["acc_ref"] for r in rows],
        "quantized": [r["acc_quant"] for r in rows],
    }
    report.figure(grouped_bars(series, labels, "accuracy by group", "accuracy", yscale="linear"))
    loss = {f"{r['group']} ({r['n']})": r["acc_ref"] - r["acc_quant"] for r in rows}
    report.figure(
        bars(loss, "accuracy lost per category: reference − quantized (items)", "points", 0.01)
    )


def _margins(report: Report, tasks: dict[str, Any]) -> None:
    report.heading("flip rate by the reference model's margin between its top two choices")
    report.note("Empty margin buckets are left blank; MMLU appears pooled over its subjects.")
    buckets = None
    series: dict[str, list[float]] = {}
    for name, c in tasks.items():
        rows = c["flips_by_margin"]
        if not any(r["n"] for r in rows) or _is_subject(name):
            continue
        buckets = [f"[{r['lo']}, {r['hi'] if r['hi'] is not None else '∞'})" for r in rows]
        series[name] = [r["rate"] if r["rate"] is not None else float("nan") for r in rows]
    if not buckets:
        report.note("no task with choices")
        return
    report.figure(
        grouped_bars(series, buckets, "flip rate by margin (nats)", "flip rate", yscale="linear")
    )


def _kl(report: Report, text: dict[str, Any]) -> None:
    quant = text["quantized"]
    report.heading(f"KL divergence per token on {text['source']}")
    kl, dp = quant["kl"], quant["delta_p"]
    report.table(
        ["ppl ref", "ppl quant", "mean", "median", "p90", "p99", "max", "Δp mean", "Δp RMS",
         "same top token"],
        [[text["reference"]["perplexity"], quant["perplexity"], kl["mean"], kl["median"],
          kl["p90"], kl["p99"], kl["max"], dp["mean"], dp["rms"], quant["top1_agreement"]]],
    )  # fmt: skip
    hist = quant["kl_histogram"]
    report.figure(
        histogram(hist["edges"], hist["counts"], "KL divergence (nats)", "per-token KL divergence")
    )
