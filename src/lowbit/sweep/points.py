"""Work of another command run as sweep trials: ``lowbit pareto --ray`` hands its points and
``lowbit sensitivity --ray`` its shards of blocks here; they run as Ray tasks (or in this
process) recorded in a results store, so an interrupted run resumes trial by trial exactly as
``lowbit sweep --resume`` does."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError
from lowbit.sweep.driver import Executor, run_trials
from lowbit.sweep.executors import TrialFn
from lowbit.sweep.grid import TrialConfig
from lowbit.sweep.store import config_hash, open_store


def measure(
    named: list[tuple[str, TrialConfig]],
    store_path: Path,
    executor: Executor,
    *,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """{name: the trial's full result (metrics, eval, provenance)} for every configuration,
    run through ``executor`` unless done in the store already; a failed trial is an error
    naming it (the others stay recorded, and ``resume`` reruns only it)."""
    summary = run_trials(named, store_path, executor, resume=resume, progress=progress)
    store = open_store(store_path, create=False)
    try:
        rows = {t.hash: t for t in store.trials()}
    finally:
        store.close()
    trials = {name: rows[config_hash(config)] for name, config in named}
    failed = [f"{name}: {t.error}" for name, t in trials.items() if t.status != "done"]
    if summary.failed or failed:
        raise LowbitError(
            f"{len(failed)} of {len(named)} points failed ({'; '.join(failed)}); the rest are "
            f"kept in {store_path}: fix the cause and run again with --resume"
        )
    return {name: _result(t.artefacts["result"]) for name, t in trials.items()}


def _result(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


@dataclass(frozen=True)
class RayRunner:
    """Trials as Ray tasks recorded in the store at ``store_path``; ``shards``: how many
    pieces a divisible job (a sensitivity table) is cut into (one per worker)."""

    store_path: Path
    executor: Executor
    label: str
    resume: bool
    shards: int

    def __call__(self, named: list[tuple[str, TrialConfig]]) -> dict[str, dict[str, Any]]:
        from lowbit.report.console import progress_bar

        with progress_bar(f"{self.label} (Ray trials)", None) as update:
            return measure(named, self.store_path, self.executor, resume=self.resume,
                           progress=update)  # fmt: skip


def ray_runner(
    store_path: Path,
    address: str | None,
    workers: int,
    *,
    trial: TrialFn | None = None,
    label: str = "points",
    resume: bool = True,
) -> RayRunner:
    """A runner for ``lowbit pareto --ray`` (``trial``: :func:`~lowbit.sweep.trial.run_trial`)
    and ``lowbit sensitivity --ray`` (:func:`~lowbit.sweep.probes.probe_trial`): the trials as
    Ray tasks, recorded in the store at ``store_path`` (trials done there before are not run
    again; without ``resume`` a store that holds trials is refused)."""
    from lowbit.errors import ConfigError
    from lowbit.sweep.executors import RayExecutor
    from lowbit.sweep.trial import run_trial

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    executor = RayExecutor(trial or run_trial, address, workers)
    return RayRunner(store_path, executor, label, resume, workers)
