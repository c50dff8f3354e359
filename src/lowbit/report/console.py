"""Rich progress bars and result tables for the terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None = None
) -> Iterator[Callable[[int, int], None]]:
    """Yield a callback ``update(done, total)`` that drives one progress bar; without a
    terminal (a log file, a batch job), plain lines at each tenth and at the end instead, so a
    log shows how far a job got."""
    if not console.is_terminal:
        yield _plain_lines(description)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)

        def update(done: int, total_: int) -> None:
            progress.update(task, completed=done, total=total_)

        yield update


def _plain_lines(description: str) -> Callable[[int, int], None]:
    import time

    start, shown = time.perf_counter(), [-1]

    def update(done: int, total: int) -> None:
        step = max(total // 10, 1)
        if done == total or done // step > shown[0]:
            shown[0] = done // step
            elapsed = time.perf_counter() - start
            console.print(f"{description}: {done}/{total} ({elapsed:.0f} s)", highlight=False)

    return update


def results_table(rows: list[dict[str, Any]], title: str) -> Table:
    """One row per model: bits per weight over the blocks' linear layers and over the whole
    model (embeddings, head and norms stay fp32 unless quantized), size, perplexity, KL
    divergence, top-1 agreement, times."""
    table = Table(title=title, title_justify="left")
    for header in (
        "model",
        "bits/w linear",
        "bits/w model",
        "size",
        "perplexity",
        "KL div",
        "top-1 agree",
        "quantize s",
        "eval s",
    ):
        table.add_column(header, justify="left" if header == "model" else "right")
    for row in rows:
        table.add_row(
            row["name"],
            _fmt(row.get("bits_per_weight_linear"), "{:.3f}"),
            _fmt(row.get("bits_per_weight_model"), "{:.3f}"),
            _size(row.get("size_bytes")),
            _fmt(row.get("perplexity"), "{:.3f}"),
            _fmt(row.get("kl_mean"), "{:.4f}"),
            _fmt(row.get("top1_agreement"), "{:.2%}"),
            _fmt(row.get("quantize_s"), "{:.1f}"),
            _fmt(row.get("eval_s"), "{:.1f}"),
        )
    return table


def _fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.1f} MB"


def task_table(metrics: dict[str, dict[str, float]], title: str) -> Table:
    """One row per task or group: accuracy, length-normalised accuracy, exact match of each
    filter (generation tasks), perplexity."""
    table = Table(title=title, title_justify="left")
    for header in ("task", "acc", "acc_norm", "exact_match", "perplexity"):
        table.add_column(header, justify="left" if header == "task" else "right")
    shown = {k: v for k, v in metrics.items() if not is_mmlu_subject(k)}
    for name, m in shown.items():
        exact = [f"{v:.4f} ({k.partition(',')[2] or 'none'})" for k, v in m.items()
                 if k.partition(",")[0] == "exact_match"]  # fmt: skip
        table.add_row(
            name,
            _fmt(m.get("acc"), "{:.4f}"),
            _fmt(m.get("acc_norm"), "{:.4f}"),
            ", ".join(exact) or "—",
            _fmt(m.get("perplexity"), "{:.3f}"),
        )
    return table


def is_mmlu_subject(name: str) -> bool:
    groups = {"mmlu", "mmlu_stem", "mmlu_humanities", "mmlu_social_sciences", "mmlu_other"}
    return name.startswith("mmlu_") and name not in groups


def comparison_table(tasks: dict[str, dict[str, Any]], title: str) -> Table:
    """One row per task: accuracies, flips both ways, flip rate, error overlap, McNemar p."""
    table = Table(title=title, title_justify="left")
    headers = (
        "task",
        "n",
        "acc ref",
        "acc quant",
        "Δ",
        "→wrong",
        "→right",
        "flips",
        "Jaccard",
        "p",
        "FP/FN ref → quant",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "task" else "right")
    for name, c in tasks.items():
        if is_mmlu_subject(name):
            continue
        table.add_row(
            name,
            str(c["n"]),
            f"{c['acc_ref']:.4f}",
            f"{c['acc_quant']:.4f}",
            f"{c['delta']:+.4f}",
            str(c["flips_to_wrong"]),
            str(c["flips_to_right"]),
            f"{c['flip_rate']:.2%}",
            f"{c['error_jaccard']:.3f}",
            f"{c['mcnemar']['p_exact']:.3g}",
            fp_fn_cell(c.get("fp_fn")),
        )
    positives = sorted({f"{n}: {c['fp_fn']['positive']}" for n, c in tasks.items()
                        if c.get("fp_fn") and "positive" in c["fp_fn"]})  # fmt: skip
    if positives:
        table.caption = "FP/FN for two-way tasks; positive class: " + "; ".join(positives)
    return table


def fp_fn_cell(fpfn: dict[str, Any] | None) -> str:
    """``fp/fn (ratio) → fp/fn (ratio), Δ change`` of a two-way task; '—' for other tasks."""
    if not fpfn:
        return "—"

    def one(counts: dict[str, Any]) -> str:
        ratio = counts["ratio"]
        return f"{counts['fp']}/{counts['fn']}" + (f" ({ratio:.2f})" if ratio is not None else "")

    change = fpfn.get("ratio_change")
    tail = f", Δ {change:+.2f}" if change is not None else ""
    return f"{one(fpfn['reference'])} → {one(fpfn['quantized'])}{tail}"
