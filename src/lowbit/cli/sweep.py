"""``lowbit sweep`` and ``lowbit results``: a grid of trials on Ray, and its results store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.options import Overwrite


def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="The sweep file (YAML).")],
    resume: Annotated[
        bool, typer.Option(help="Continue a sweep: done trials are kept, the rest run.")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="An existing Ray cluster (HOST:PORT); default: local Ray.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Trials in flight at once.")] = 1,
    store: Annotated[
        Path | None, typer.Option(help="Results store (default: NAME.results.sqlite beside it).")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Run the trials in this process, one by one (no Ray).")
    ] = False,
) -> None:
    """Run every trial of SWEEP_FILE (models × plans × texts) as Ray tasks, recording each in
    the results store the moment it ends; with --resume, trials already done are not rerun.

    Example: lowbit sweep study.yaml --workers 2; lowbit sweep study.yaml --resume
    """
    from lowbit.errors import ConfigError
    from lowbit.report.console import console, progress_bar
    from lowbit.sweep.driver import default_store, run_sweep
    from lowbit.sweep.executors import LocalExecutor, RayExecutor
    from lowbit.sweep.spec import load_sweep
    from lowbit.sweep.trial import run_trial

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if local and address is not None:
        raise ConfigError("--local runs in this process; it takes no --address")
    spec = load_sweep(sweep_file)
    executor = LocalExecutor(run_trial) if local else RayExecutor(run_trial, address, workers)
    path = store or default_store(sweep_file)
    with progress_bar("trials", None) as update:
        summary = run_sweep(spec, path, executor, resume=resume, progress=update)
    console.print(
        f"{summary.trials} trials in {path}: {summary.skipped} already done, {summary.done} run "
        f"now, {len(summary.failed)} failed"
    )
    for digest, error in summary.failed.items():
        console.print(f"  failed {digest}: {error}")
    if summary.failed:
        raise typer.Exit(1)


def results(
    store: Annotated[Path, typer.Argument(help="A results store written by `lowbit sweep`.")],
    status: Annotated[str | None, typer.Option(help="Only trials with this status.")] = None,
    match: Annotated[str | None, typer.Option(help="Only trials whose name contains this.")] = None,
    export: Annotated[
        Path | None, typer.Option(help="Write the trials to a .csv or .json.")
    ] = None,
    pareto: Annotated[Path | None, typer.Option(help="Draw the Pareto front (HTML).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """List, filter and export the trials of a results store, and draw their Pareto front.

    Example: lowbit results study.results.sqlite --status done --export done.csv --pareto p.html
    """
    from rich.table import Table

    from lowbit.report.console import console
    from lowbit.sweep import results as R

    trials = R.select(store, status, match)
    table = Table(title=f"{store}: {len(trials)} trials")
    for head in ("hash", "trial", "status", "bits/weight", "KL", "ppl", "s"):
        table.add_column(head)
    for t in trials:
        m = t.metrics or {}
        cells = [m.get("bits_per_weight_linear"), m.get("kl_mean"), m.get("perplexity"), t.seconds]
        table.add_row(t.hash, t.name, t.status, *(_fmt(v) for v in cells))
    console.print(table)
    if export is not None:
        R.export(trials, export, overwrite=overwrite)
        console.print(f"wrote {export}")
    if pareto is not None:
        n = R.pareto_html(trials, pareto, f"Pareto: {store.name}", overwrite=overwrite)
        console.print(f"wrote {pareto} ({n} points)")


def _fmt(v: object) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
