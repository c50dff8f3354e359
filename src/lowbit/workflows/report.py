"""``lowbit report``: one self-contained HTML page from a run's result files."""

from __future__ import annotations

from pathlib import Path

from lowbit import api
from lowbit.report.combined import combined_report, load_results
from lowbit.report.console import console


def report_job(results: list[Path], out: Path, *, title: str, overwrite: bool = False) -> Path:
    """Read every result (refusing one that is not a lowbit result), write the page ``out``."""
    api.check_outputs(out, overwrite=overwrite)
    loaded = load_results(results)
    combined_report(loaded, title).write(out, overwrite=overwrite)
    console.print(f"report of {len(loaded)} results written to {out}")
    return out
