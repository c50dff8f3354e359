"""The sweep driver: expand the grid, record every trial in the store, run those not done.

Each trial is marked ``running`` when it is handed out and ``done`` (with its results) or
``failed`` (with its error) the moment it returns, each change one transaction. After a crash
of the driver or a worker, ``--resume`` runs exactly the trials that are not ``done``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lowbit.errors import ConfigError
from lowbit.sweep.executors import Finished, Job
from lowbit.sweep.grid import TrialConfig, expand
from lowbit.sweep.spec import SweepSpec
from lowbit.sweep.store import config_hash, open_store


class Executor(Protocol):
    def prepare(self) -> None: ...
    def run(self, jobs: list[Job], artefacts: Path) -> Any: ...


@dataclass(frozen=True)
class SweepSummary:
    store: Path
    trials: int
    skipped: int  # already done
    done: int
    failed: dict[str, str]  # hash -> error


def default_store(sweep_file: Path) -> Path:
    """The store beside the sweep file: ``NAME.results.sqlite``."""
    return sweep_file.with_name(f"{sweep_file.stem}.results.sqlite")


def run_sweep(
    spec: SweepSpec,
    store_path: Path,
    executor: Executor,
    *,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SweepSummary:
    """Run every trial of ``spec`` not yet done in the store at ``store_path``."""
    trials = expand(spec)  # bad input fails here, before the store is touched
    return run_trials(trials, store_path, executor, resume=resume, progress=progress)


def run_trials(
    trials: list[tuple[str, TrialConfig]],
    store_path: Path,
    executor: Executor,
    *,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SweepSummary:
    """Run every (name, configuration) not yet done in the store at ``store_path`` (the
    machinery of a sweep, for any list of trials: ``lowbit pareto --ray`` uses it too)."""
    executor.prepare()  # so do a missing Ray and an unreachable cluster
    store = open_store(store_path)
    try:
        if store.trials() and not resume:
            raise ConfigError(
                f"results store {store_path} already holds trials; pass --resume to continue "
                "the sweep (done trials are kept), or choose another store"
            )
        check_threads(store, trials)
        configs = {store.add(name, cfg): cfg for name, cfg in trials}
        todo = store.todo(list(configs))
        artefacts = store_path.with_name(f"{store_path.stem}.trials")
        artefacts.mkdir(parents=True, exist_ok=True)
        for digest in todo:
            store.start(digest)
        failed: dict[str, str] = {}
        jobs = [(d, configs[d]) for d in todo]
        for finished, (digest, result) in enumerate(executor.run(jobs, artefacts), 1):
            _record(store, (digest, result), failed)
            if progress:
                progress(finished, len(todo))
        return SweepSummary(store_path, len(configs), len(configs) - len(todo),
                            len(todo) - len(failed), failed)  # fmt: skip
    finally:
        store.close()


def check_threads(store: Any, trials: list[tuple[str, TrialConfig]]) -> None:
    """Refuse to resume a store whose trials were run at another torch thread count (or by a
    lowbit that recorded none) and not at this run's: their hashes differ, so they would be
    run again beside the old rows instead of being kept."""
    old = store.trials()
    present = {t.hash for t in old}
    wanted = {
        _without_threads(c): c.get("threads") for _, c in trials if config_hash(c) not in present
    }
    for trial in old:
        key = _without_threads(trial.config)
        if key not in wanted or trial.config.get("threads") == wanted[key]:
            continue
        have, want = trial.config.get("threads"), wanted[key]
        fix = f"delete {store.path} (or give another store) to run them again"
        if have is None:
            raise ConfigError(
                f"results store {store.path}: trial {trial.name!r} was run by an earlier lowbit "
                f"that recorded no torch thread count; this run uses {want}, so the trial would "
                f"be run again beside the old row; {fix}"
            )
        raise ConfigError(
            f"results store {store.path}: trial {trial.name!r} was run at {have} torch threads, "
            f"this run uses {want}; GPTQ's figures depend on the count, so it would be run "
            f"again beside the old row. Resume at {have} threads (OMP_NUM_THREADS={have} for "
            f"the driver, or `runtime: {{threads: {have}}}` in a sweep file), or {fix}"
        )


def _without_threads(config: dict[str, Any]) -> str:
    return config_hash({k: v for k, v in config.items() if k != "threads"})


def _record(store: Any, finished: Finished, failed: dict[str, str]) -> None:
    digest, result = finished
    if isinstance(result, BaseException):
        failed[digest] = f"{type(result).__name__}: {result}"
        store.fail(digest, failed[digest])
    else:
        store.finish(digest, result["metrics"], result["artefacts"], result["provenance"],
                     result["seconds"])  # fmt: skip
