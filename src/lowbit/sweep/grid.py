"""From a sweep file to its trials: every cell of the grid as a plain-JSON configuration."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit.errors import ConfigError, LowbitError
from lowbit.plan import Plan
from lowbit.runtime import cpu_threads
from lowbit.sweep.spec import SweepSpec, TaskChoice, task_dict, text_dict

TrialConfig = dict[str, Any]


def _resolve(spec: SweepSpec, name: str) -> str:
    """A path relative to the sweep file's folder when it exists there; else as given (a
    built-in model name, an absolute path)."""
    if spec.path is not None:
        candidate = spec.path.parent / name
        if candidate.exists():
            return str(candidate.resolve())
    return name


def _plans(spec: SweepSpec, model: str) -> list[tuple[str, Plan]]:
    out: list[tuple[str, Plan]] = []
    for algo in spec.algorithms:
        for fc in spec.formats:
            for g in spec.group_sizes:
                try:
                    layer = api.spec_from_options(fc.bits, g, fc.symmetric, algo, fmt=fc.format)
                except LowbitError as exc:
                    raise ConfigError(f"sweep cell {algo} {fc.label} g{g}: {exc}") from None
                out.append((f"{algo} {fc.label} g{g}", api.plan_from_options(layer)))
    for p in spec.plans:
        out.append((Path(p).stem, Plan.load(Path(_resolve(spec, p)))))
    if spec.budgets:
        assert spec.table is not None
        table = api.load_table(Path(_resolve(spec, spec.table)))
        for b in spec.budgets:
            _, plan = api.allocate(table, api.AvgBits(b))
            out.append((f"budget {b:g}", plan))
    return out


def task_config(choice: dict[str, Any]) -> Any:
    """The harness's TaskConfig of a trial's ``tasks`` entry (plain JSON, see task_dict)."""
    from lowbit.evaluation.harness import TaskConfig

    return TaskConfig(**{**choice, "tasks": tuple(choice["tasks"]),
                         "include_paths": tuple(choice["include_paths"])})  # fmt: skip


def _check_tasks(choices: tuple[TaskChoice, ...]) -> None:
    """Every task set resolved and loaded (names, data files, templates) before any trial."""
    for choice in choices:
        try:
            api.check_tasks(task_config(task_dict(choice)))
        except LowbitError as exc:
            raise type(exc)(f"sweep tasks {', '.join(choice.tasks)}: {exc}") from None


def expand(spec: SweepSpec) -> list[tuple[str, TrialConfig]]:
    """(name, configuration) of every trial, in grid order: models × plans × texts × tasks.
    Each runs with ``runtime.threads`` torch threads, by default the driver's (recorded in the
    configuration and its hash; resuming a store at another count is refused by the driver)."""
    _check_tasks(spec.tasks)
    runtime = asdict(spec.runtime)
    threads = runtime.pop("threads") or cpu_threads()
    trials = []
    for model in spec.models:
        source = _resolve(spec, model)
        for label, plan in _plans(spec, source):
            calib = text_dict(spec.calibration) if plan.needs_calibration() else None
            for text in spec.texts:
                config = {
                    "model": source,
                    "plan": plan.to_dict(),
                    "calibration": calib,
                    "eval": text_dict(text),
                    "runtime": dict(runtime),
                    "threads": threads,  # GPTQ's figures depend on it; a Ray worker has one
                }
                name = f"{model} | {label} | {text.source}"
                if not spec.tasks:  # no "tasks" key: a sweep without tasks keeps its hashes
                    trials.append((name, config))
                for choice in spec.tasks:
                    trials.append((f"{name} | {choice.label}",
                                   {**config, "tasks": task_dict(choice)}))  # fmt: skip
    return trials
