"""The lm-evaluation-harness bridge: evaluate an in-memory model on tasks, keep every sample.

The model (reference or fake-quantized) is wrapped in the harness's own Hugging Face model class
(``HFLM``), so requests are batched, multiple-choice items with one-token answers share their
context, and metrics are computed exactly as the harness computes them. Local tasks are the
harness's standard tasks reading local files (:mod:`lowbit.evaluation.task_defs`); any other
name is looked up among the harness's own tasks (these read the hub).
"""

from __future__ import annotations

import difflib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError, DataError, UnknownNameError
from lowbit.evaluation import task_defs
from lowbit.evaluation.samples import SampleRecord, record_from_harness


class TaskSource(str, Enum):
    """Where a task's documents come from: ``auto`` (local files when the data directory holds
    them, else the hub), ``local`` or ``hub``."""

    AUTO = "auto"
    LOCAL = "local"
    HUB = "hub"


@dataclass(frozen=True)
class TaskConfig:
    """Which tasks, how many items of each (the first ``limit``), and how requests are run."""

    tasks: tuple[str, ...]
    limit: int | None = None
    source: TaskSource = TaskSource.AUTO
    batch_size: int = 16
    bootstrap_iters: int = 0  # standard errors by bootstrap are off: per-sample data is kept

    def __post_init__(self) -> None:
        names = tuple(t.strip() for t in self.tasks if t.strip())
        if not names:
            raise ConfigError("no task given; pass --tasks NAME[,NAME...] (see `lowbit ls tasks`)")
        object.__setattr__(self, "tasks", names)
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ConfigError(f"--limit must be a positive number of items, got {self.limit!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size!r}")
        try:
            object.__setattr__(self, "source", TaskSource(self.source))
        except ValueError:
            known = ", ".join(s.value for s in TaskSource)
            raise ConfigError(
                f"--task-source must be one of {known}, got {self.source!r}"
            ) from None


@dataclass(frozen=True)
class ResolvedTask:
    name: str  # as the user wrote it
    harness_name: str
    local: bool


@dataclass
class TaskRun:
    """Metrics per task and group (the harness's own) and every sample of every leaf task."""

    metrics: dict[str, dict[str, float]]
    samples: dict[str, list[SampleRecord]]
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "samples": {t: [s.to_dict() for s in recs] for t, recs in self.samples.items()},
            "info": self.info,
        }


def resolve(cfg: TaskConfig, data_root: Path) -> list[ResolvedTask]:
    """Map each requested name to a local or a hub harness task, or fail with suggestions."""
    out, hub = [], []
    local = task_defs.local_names()
    for name in cfg.tasks:
        base = name.removeprefix(task_defs.LOCAL_PREFIX)
        is_local = base in local or _is_mmlu_subject(base, data_root)
        if cfg.source is TaskSource.LOCAL and not is_local:
            close = difflib.get_close_matches(base, local, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown local task {name!r}{hint} (local tasks: {', '.join(local)})"
            )
        if is_local and cfg.source is not TaskSource.HUB:
            if not task_defs.files_present(data_root, base):
                if cfg.source is TaskSource.LOCAL:
                    raise DataError(
                        f"task {name!r}: its files are not under {data_root}; set "
                        "LOWBIT_DATA_DIR or use --task-source hub"
                    )
            else:
                out.append(ResolvedTask(base, task_defs.LOCAL_PREFIX + base, True))
                continue
        hub.append(name)
        out.append(ResolvedTask(name, name, False))
    if hub:
        _check_hub_names(hub, local)
    return out


def _is_mmlu_subject(base: str, data_root: Path) -> bool:
    prefix = task_defs.MMLU + "_"
    if not base.startswith(prefix) or not (data_root / "mmlu" / "test").is_dir():
        return False
    return (data_root / "mmlu" / "test" / f"{base.removeprefix(prefix)}_test.csv").is_file()


def _check_hub_names(names: list[str], local: list[str]) -> None:
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, [*local, *known], n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown task {name!r}{hint} (local tasks: {', '.join(local)}; "
                "others are the lm-evaluation-harness's own: `lm_eval ls tasks`)"
            )


def run_tasks(
    model: Any,
    tokenizer: Any,
    cfg: TaskConfig,
    *,
    data_root: Path,
    cache: Path,
    progress: Callable[[int, int], None] | None = None,
) -> TaskRun:
    """Evaluate ``model`` on ``cfg.tasks`` through the harness; every sample is kept.
    ``progress(done, total)`` is called as log-likelihood requests finish."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = resolve(cfg, data_root)
    any_hub = any(not t.local for t in tasks)
    local = [t.name for t in tasks if t.local]
    include = task_defs.write_task_dirs(data_root, cache, local) if local else []
    manager = TaskManager(include_path=[str(p) for p in include] or None, include_defaults=any_hub)
    check_supported(manager, [t.harness_name for t in tasks])
    device = str(next(model.parameters()).device)
    lm = _bridge_class()(
        pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=device
    )
    if progress is not None:
        lm.progress = _Progress(progress)
        lm.cache_hook = lm.progress
    t0 = time.perf_counter()
    try:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=[t.harness_name for t in tasks],
            task_manager=manager,
            limit=cfg.limit,
            log_samples=True,
            bootstrap_iters=cfg.bootstrap_iters,
            random_seed=None,  # leave the caller's random generators alone
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    except ValueError as exc:
        if "Duplicate task" in str(exc):  # a task named both alone and through its group
            raise ConfigError(
                f"{str(exc).replace(task_defs.LOCAL_PREFIX, '')}; name each task once "
                "(a group such as mmlu already holds its subjects)"
            ) from None
        raise
    seconds = time.perf_counter() - t0
    if raw is None:
        raise DataError("the harness returned no result (is this a distributed worker?)")
    return _collect(raw, tasks, cfg, include, tokenizer, seconds)


class _Progress:
    """Counts finished requests: the harness reports each one to its cache hook."""

    def __init__(self, callback: Callable[[int, int], None]) -> None:
        self.callback, self.done, self.total = callback, 0, 0

    def start(self, total: int) -> None:
        self.total += total
        self.callback(self.done, self.total)

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        self.done += 1
        self.callback(self.done, self.total)


def _bridge_class() -> type:
    """The harness's HFLM, reporting progress through lowbit instead of its own bars."""
    from lm_eval.models.huggingface import HFLM

    class LowbitHFLM(HFLM):  # type: ignore[misc, valid-type]
        progress: _Progress | None = None

        def _loglikelihood_tokens(self, requests: Any, *args: Any, **kwargs: Any) -> Any:
            if self.progress is None:
                return super()._loglikelihood_tokens(requests, *args, **kwargs)
            self.progress.start(len(requests))
            kwargs["disable_tqdm"] = True
            return super()._loglikelihood_tokens(requests, *args, **kwargs)

    return LowbitHFLM


SUPPORTED_OUTPUTS = ("multiple_choice", "loglikelihood")


def check_supported(manager: Any, names: list[str]) -> None:
    """Refuse, before any request runs, tasks whose samples lowbit cannot compare: generation
    and rolling-perplexity tasks, tasks without ``acc``, or with several filters."""
    loaded = manager.load(names)
    for name, task in loaded["tasks"].items():
        label = str(name).removeprefix(task_defs.LOCAL_PREFIX)
        kind = task.get_config("output_type")
        metrics = [m.get("metric") for m in task.get_config("metric_list") or []]
        filters = task.get_config("filter_list") or []
        if kind not in SUPPORTED_OUTPUTS or "acc" not in metrics or len(filters) > 1:
            raise ConfigError(
                f"task {label!r} ({kind}, metrics {metrics}) cannot be compared per sample: "
                f"lowbit evaluates {' and '.join(SUPPORTED_OUTPUTS)} tasks scored by 'acc' "
                "with one filter; run it with lm_eval directly"
            )


def _display(harness_name: str) -> str:
    return harness_name.removeprefix(task_defs.LOCAL_PREFIX)


def _collect(
    raw: dict[str, Any],
    tasks: list[ResolvedTask],
    cfg: TaskConfig,
    include: list[Path],
    tokenizer: Any,
    seconds: float,
) -> TaskRun:
    import lm_eval

    metrics = {
        _display(name): {
            k.removesuffix(",none"): v
            for k, v in values.items()
            if k.endswith(",none") and isinstance(v, int | float)
        }
        for name, values in raw["results"].items()
    }
    samples = {
        _display(name): [record_from_harness(s) for s in sorted(recs, key=lambda s: s["doc_id"])]
        for name, recs in raw["samples"].items()
    }
    info = {
        "harness": lm_eval.__version__,
        "tasks": {t.name: ("local" if t.local else "hub") for t in tasks},
        "task_dirs": [str(p) for p in include],
        "limit": cfg.limit,
        "selection": "the first N documents of each task (harness --limit)"
        if cfg.limit
        else "all documents",
        "n_samples": {_display(k): v for k, v in raw.get("n-samples", {}).items()},
        "batch_size": cfg.batch_size,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seconds": seconds,
    }
    return TaskRun(metrics, samples, info)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identifies a tokenizer by its vocabulary and special tokens."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(map(str, tokenizer.all_special_tokens))
    h = hashlib.sha256(repr((vocab, special)).encode())
    return h.hexdigest()[:16]
