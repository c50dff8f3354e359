"""The Pareto report: measured (and predicted) KL divergence against bits per weight."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from lowbit.report import charts
from lowbit.report.html import Report

COLUMNS = [
    ("name", "plan"),
    ("bits_per_weight_linear", "bits/weight"),
    ("predicted_loss", "predicted KL"),
    ("kl_mean", "KL"),
    ("perplexity", "ppl"),
    ("top1_agreement", "top-1"),
    ("quantize_s", "quantize s"),
]


def _cells(row: dict[str, Any]) -> list[Any]:
    return [row.get(key) for key, _ in COLUMNS]


def pareto_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Pareto sweep")
    for _, head in COLUMNS:
        table.add_column(head, justify="left" if head == "plan" else "right")
    for row in sorted(rows, key=lambda r: (r["method"], r["bits_per_weight_linear"])):
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in _cells(row)))
    return table


def pareto_report(
    rows: list[dict[str, Any]], marks: dict[str, tuple[float, float]], title: str
) -> Report:
    report = Report(title)
    pareto_sections(report, rows, marks)
    return report


def pareto_sections(
    report: Report, rows: list[dict[str, Any]], marks: dict[str, tuple[float, float]]
) -> None:
    """The measured (and predicted) front and the table of points."""
    curves: dict[str, list[tuple[float, float]]] = {}
    predicted: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        curves.setdefault(row["method"], []).append((row["bits_per_weight_linear"], row["kl_mean"]))
        if row.get("predicted_loss"):
            predicted.setdefault(f"{row['method']} (predicted)", []).append(
                (row["bits_per_weight_linear"], row["predicted_loss"])
            )
    report.figure(
        charts.pareto(
            curves,
            marks,
            "bits per weight (linear layers, scales included)",
            "KL divergence to the original",
            "measured KL divergence",
        )
    )
    report.figure(
        charts.pareto(
            {**curves, **predicted},
            {},
            "bits per weight",
            "KL divergence",
            "measured against predicted (sum of single-layer KL)",
        )
    )
    report.heading("Points")
    report.table([head for _, head in COLUMNS], [_cells(r) for r in rows])
