"""``lowbit report``: one HTML page tying result files together."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.options import Overwrite


def report(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="Result files of lowbit commands (quantize, eval, run, compare, pareto, "
            "sensitivity, perf)."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML page to write.")],
    title: Annotated[str, typer.Option(help="The page's title.")] = "lowbit report",
    overwrite: Overwrite = False,
) -> None:
    """Write ONE self-contained HTML page (no network needed to view it) from RESULTS: an
    overview, the plan per layer, perplexity and KL (with its histogram), accuracy by task
    and category, flips, the Pareto front, sensitivity heatmaps and the roofline, each as
    far as the results hold it.

    Example: lowbit report q.result.json eval.json pareto/pareto.json -o report.html
    """
    from lowbit.workflows.report import report_job

    report_job(results, output, title=title, overwrite=overwrite)
