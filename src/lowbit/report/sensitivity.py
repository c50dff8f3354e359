"""The sensitivity report: where quantization hurts, per layer, block and module type."""

from __future__ import annotations

from lowbit.report import charts
from lowbit.report.html import Report
from lowbit.sensitivity.table import SensitivityTable


def sensitivity_sections(report: Report, table: SensitivityTable) -> None:
    """Proxy correlations, sums per module type, a heatmap per spec and sums per block."""
    metric = "kl" if table.has_metric("kl") else "hessian"
    report.note(
        f"model {table.model.get('source')} ({table.model.get('fingerprint')}); "
        f"{len(table.layers)} linear layers × {len(table.menu)} specs; probe {table.probe}; "
        f"timings {', '.join(f'{k} {v:.1f}' for k, v in table.timings.items())}"
    )
    _correlations(report, table)
    modules = sorted({x.module for x in table.layers}, key=[x.module for x in table.layers].index)
    by_module = table.aggregate(metric, "module")
    report.heading(f"Sum of {metric} per module type")
    report.table(["module", *table.labels], [[m, *by_module[m]] for m in modules])
    for s, label in enumerate(table.labels):
        grid = [[_value(table, b, m, s, metric) for m in modules] for b in range(table.n_blocks)]
        report.figure(
            charts.heatmap(
                grid,
                [str(b) for b in range(table.n_blocks)],
                modules,
                f"{metric} with only that layer at {label}",
            )
        )
    by_block = table.aggregate(metric, "block")
    blocks = [str(b) for b in range(table.n_blocks)]
    series = {label: [by_block[b][s] for b in blocks] for s, label in enumerate(table.labels)}
    report.figure(charts.grouped_bars(series, blocks, f"sum of {metric} per block", metric))


def _correlations(report: Report, table: SensitivityTable) -> None:
    if not table.has_metric("kl"):
        report.note("measured KL divergence not computed: no proxy correlation")
        return
    report.heading("Rank correlation of the proxies with the measured KL divergence")
    proxies = [p for p in ("hessian", "fisher") if table.has_metric(p)]
    rhos = {p: table.rank_correlation(p) for p in proxies}
    keys = ["all", *table.labels]
    report.table(["proxy", *keys], [[p, *(rhos[p][k] for k in keys)] for p in proxies])
    entries = list(table.entries.values())
    for p in proxies:
        report.figure(
            charts.scatter(
                [e.value(p) or 0.0 for e in entries],
                [e.kl or 0.0 for e in entries],
                p,
                "measured KL",
                f"{p} proxy against measured KL",
            )
        )


def _value(table: SensitivityTable, block: int, module: str, spec: int, metric: str):
    for info in table.layers:
        if info.block == block and info.module == module:
            entry = table.entries.get((info.name, spec))
            return None if entry is None else entry.value(metric)
    return None
