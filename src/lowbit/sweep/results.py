"""Reading a results store: filter its trials, export them (CSV, JSON), draw the Pareto front."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lowbit._io import atomic_file
from lowbit.errors import ConfigError
from lowbit.sweep.store import STATUSES, Trial, open_store


def select(store_path: Path, status: str | None = None, match: str | None = None) -> list[Trial]:
    """The trials of the store at ``store_path``, with ``status`` and whose name contains
    ``match`` (case-insensitive) when given."""
    if status is not None and status not in STATUSES:
        raise ConfigError(f"--status {status!r} is unknown; use one of {', '.join(STATUSES)}")
    store = open_store(store_path, create=False)
    try:
        trials = store.trials(status)
    finally:
        store.close()
    if match:
        trials = [t for t in trials if match.lower() in t.name.lower()]
    return trials


def to_json(trials: list[Trial]) -> str:
    from dataclasses import asdict

    return json.dumps([asdict(t) for t in trials], indent=1, sort_keys=True) + "\n"


def to_csv(trials: list[Trial]) -> str:
    rows = [t.flat() for t in trials]
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def export(trials: list[Trial], out: Path, *, overwrite: bool = False) -> None:
    """Write ``trials`` to ``out`` as CSV or JSON (by its suffix), atomically."""
    writers = {".csv": to_csv, ".json": to_json}
    if out.suffix not in writers:
        raise ConfigError(f"--export {out}: use a .csv or .json file name")
    with atomic_file(out, overwrite=overwrite) as f:
        f.write(writers[out.suffix](trials))


def pareto_rows(trials: list[Trial]) -> list[dict[str, Any]]:
    """The done trials as Pareto points: one curve per model, algorithm and text."""
    rows = []
    for t in trials:
        m = t.metrics or {}
        if t.status != "done" or m.get("kl_mean") is None:
            continue
        model, label, text = (t.name.split(" | ") + ["", ""])[:3]
        rows.append({
            "name": label, "method": f"{Path(model).name} {label.split()[0]} on {text}",
            "bits_per_weight_linear": m["bits_per_weight_linear"], "kl_mean": m["kl_mean"],
            "perplexity": m.get("perplexity"), "top1_agreement": m.get("top1_agreement"),
            "quantize_s": (t.provenance or {}).get("timings_s", {}).get("quantize_s"),
        })  # fmt: skip
    return rows


def pareto_html(trials: list[Trial], out: Path, title: str, *, overwrite: bool = False) -> int:
    """Draw the Pareto front of the done trials into ``out`` (self-contained HTML); the
    number of points."""
    from lowbit.report.pareto import pareto_report

    rows = pareto_rows(trials)
    if not rows:
        raise ConfigError("no done trial with a KL divergence to draw; run the sweep first")
    pareto_report(rows, {}, title).write(out, overwrite=overwrite)
    return len(rows)
