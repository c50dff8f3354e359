"""The lm-evaluation-harness bridge: evaluate an in-memory model on tasks, keep every sample.

The model (reference or fake-quantized) is wrapped in the harness's own Hugging Face model class
(``HFLM``), so requests are batched, multiple-choice items with one-token answers share their
context, generation tasks decode greedily in batches with the KV cache (``generate_until``), and
metrics are computed exactly as the harness computes them. Local tasks are the harness's
standard tasks reading local files (:mod:`lowbit.evaluation.task_defs`); tasks of one's own are
YAML files in the harness's format (given directly, or by name from ``include_paths``); any
other name is looked up among the harness's own tasks (these read the hub). Everything about
the tasks is checked before a model is needed (:func:`prepare`, :mod:`task_check`).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError, DataError, UnknownNameError
from lowbit.evaluation import task_check, task_defs
from lowbit.evaluation.task_results import TaskRun, collect, display


class TaskSource(str, Enum):
    """Where a task's documents come from: ``auto`` (local files when the data directory holds
    them, else the hub), ``local`` or ``hub``."""

    AUTO = "auto"
    LOCAL = "local"
    HUB = "hub"


@dataclass(frozen=True)
class TaskConfig:
    """Which tasks, how many items of each (the first ``limit``), where tasks of one's own are
    (``include_paths``, as the harness's ``--include_path``), and how requests are run."""

    tasks: tuple[str, ...]
    limit: int | None = None
    source: TaskSource = TaskSource.AUTO
    batch_size: int = 16
    bootstrap_iters: int = 0  # standard errors by bootstrap are off: per-sample data is kept
    include_paths: tuple[str, ...] = ()
    max_gen_toks: int | None = None  # generation tasks: at most this many new tokens per item

    def __post_init__(self) -> None:
        names = tuple(t.strip() for t in self.tasks if t.strip())
        if not names:
            raise ConfigError("no task given; pass --tasks NAME[,NAME...] (see `lowbit ls tasks`)")
        object.__setattr__(self, "tasks", names)
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ConfigError(f"--limit must be a positive number of items, got {self.limit!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size!r}")
        if self.max_gen_toks is not None and self.max_gen_toks < 1:
            raise ConfigError(f"--max-gen-toks must be positive, got {self.max_gen_toks!r}")
        paths = tuple(str(Path(p).expanduser()) for p in self.include_paths)
        for path in paths:
            if not Path(path).is_dir():
                raise DataError(f"--include-path {path}: no such directory of task YAML files")
        object.__setattr__(self, "include_paths", paths)
        try:
            object.__setattr__(self, "source", TaskSource(self.source))
        except ValueError:
            known = ", ".join(s.value for s in TaskSource)
            raise ConfigError(
                f"--task-source must be one of {known}, got {self.source!r}"
            ) from None


@dataclass(frozen=True)
class ResolvedTask:
    name: str  # as the user wrote it (a task of one's own: the name its YAML gives)
    harness_name: str  # a registered name or a YAML file
    kind: str  # "local" (lowbit's definitions), "user" (include path or YAML file) or "hub"

    @property
    def local(self) -> bool:
        return self.kind == "local"


def resolve(cfg: TaskConfig, data_root: Path) -> list[ResolvedTask]:
    """Map each requested name (after expanding suites such as ``standard``) to a task of one's
    own (a YAML file, or a name in an include path), a local or a hub harness task, or fail
    with suggestions; then check, without opening any dataset, that local data files exist and
    that the hub answers if any task needs it. Nothing here loads a model."""
    from lm_eval.tasks import TaskManager

    names = [n for name in cfg.tasks for n in task_defs.SUITES.get(name, (name,))]
    user = TaskManager(include_path=list(cfg.include_paths), include_defaults=False)
    out, hub = [], []
    for name in names:
        if name.endswith((".yaml", ".yml")):
            out.append(_user_file(name))
        elif name in user.all_tasks:
            out.append(ResolvedTask(name, name, "user"))
        else:
            task = _builtin(name, cfg, data_root)
            hub += [name] if task.kind == "hub" else []
            out.append(task)
    if hub:
        _check_hub_names(hub, task_defs.local_names(), user.all_tasks)
    manager = user if not hub else _with_defaults(cfg.include_paths)
    task_check.check_sources(manager, [t.harness_name for t in out if not t.local])
    return out


@functools.lru_cache(maxsize=4)
def _with_defaults(include_paths: tuple[str, ...]) -> Any:
    """The harness's task manager over its own tasks (indexing them takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None)


def _user_file(name: str) -> ResolvedTask:
    from lm_eval.tasks._index import TaskIndex

    path = Path(name).expanduser()
    if not path.is_file():
        raise DataError(f"--tasks {name}: no such task file")
    try:
        entry = TaskIndex.entry_from_path(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a task YAML of the lm-evaluation-harness ({exc})") from None
    if entry is None:
        raise DataError(f"{path}: a task YAML needs a `task:` (or `group:`) name")
    return ResolvedTask(str(entry.name), str(path.resolve()), "user")


def _builtin(name: str, cfg: TaskConfig, data_root: Path) -> ResolvedTask:
    local = task_defs.local_names()
    base = name.removeprefix(task_defs.LOCAL_PREFIX)
    is_local = base in local or _is_mmlu_subject(base, data_root)
    if cfg.source is TaskSource.LOCAL and not is_local:
        close = difflib.get_close_matches(base, local, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(
            f"unknown local task {name!r}{hint} (local tasks: {', '.join(local)})"
        )
    if is_local and cfg.source is not TaskSource.HUB:
        if task_defs.files_present(data_root, base):
            return ResolvedTask(base, task_defs.LOCAL_PREFIX + base, "local")
        if cfg.source is TaskSource.LOCAL:
            raise DataError(
                f"task {name!r}: its files are not under {data_root}; set "
                "LOWBIT_DATA_DIR or use --task-source hub"
            )
    return ResolvedTask(name, name, "hub")


def _is_mmlu_subject(base: str, data_root: Path) -> bool:
    prefix = task_defs.MMLU + "_"
    if not base.startswith(prefix) or not (data_root / "mmlu" / "test").is_dir():
        return False
    return (data_root / "mmlu" / "test" / f"{base.removeprefix(prefix)}_test.csv").is_file()


def _check_hub_names(names: list[str], local: list[str], user: list[str]) -> None:
    """Hub tasks are named correctly and the hub answers; without a hub this fails at once,
    before the harness indexes its thousands of task files."""
    reason = task_check.hub_unreachable()
    if reason is not None:
        pool = [*local, *user]
        close = sorted({m for n in names for m in difflib.get_close_matches(n, pool, 3, 0.6)})
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DataError(
            f"task(s) {', '.join(map(repr, names))}: not local tasks nor tasks of your own, "
            f"so the lm-evaluation-harness's hub tasks, and the hub is not available "
            f"({reason}){hint} (local tasks: {', '.join(local)}); {task_check.LOCAL_HINT}"
        )
    known = set(_with_defaults(()).all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, [*local, *user, *known], n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown task {name!r}{hint} (local tasks: {', '.join(local)}; suites: "
                f"{', '.join(task_defs.SUITES)}; a task of your own: its YAML file, or "
                "--include-path DIR; others are the lm-evaluation-harness's own: "
                "`lm_eval ls tasks`)"
            )


@dataclass(frozen=True)
class Prepared:
    """Resolved tasks, the harness's task manager over their directories, lowbit's ones."""

    tasks: list[ResolvedTask]
    manager: Any
    include: list[Path]


def _local_dirs(tasks: list[ResolvedTask], data_root: Path, cache: Path) -> list[Path]:
    local = [t.name for t in tasks if t.local]
    return task_defs.write_task_dirs(data_root, cache, local) if local else []


def task_dirs(cfg: TaskConfig, data_root: Path, cache: Path) -> list[Path]:
    """The local task directories ``cfg`` runs on (written once; their names carry the
    fingerprint of their data, code and harness version)."""
    return _local_dirs(resolve(cfg, data_root), data_root, cache)


def prepare(cfg: TaskConfig, data_root: Path, cache: Path) -> Prepared:
    """Resolve the tasks, write the local ones' YAML, and load and check every task (sources,
    templates on the evaluated documents, stop sequences, one verdict per sample): everything
    a run needs except the model, so bad tasks fail before any model is loaded."""
    from lm_eval.tasks import TaskManager

    tasks = resolve(cfg, data_root)
    include = _local_dirs(tasks, data_root, cache)
    paths = [*map(str, include), *cfg.include_paths]
    manager = TaskManager(
        include_path=paths or None, include_defaults=any(t.kind == "hub" for t in tasks)
    )
    check_supported(manager, [t.harness_name for t in tasks], cfg.limit)
    return Prepared(tasks, manager, include)


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
    ``progress(done, total)`` is called as requests (scored or generated) finish."""
    import lm_eval

    prep = prepare(cfg, data_root, cache)
    device = str(next(model.parameters()).device)
    lm = _bridge_class()(
        pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=device
    )
    if progress is not None:
        lm.progress = _Progress(progress)
        lm.cache_hook = lm.progress
    t0 = time.perf_counter()
    raw = lm_eval.simple_evaluate(
        model=lm,
        tasks=[t.harness_name for t in prep.tasks],
        task_manager=prep.manager,
        limit=cfg.limit,
        log_samples=True,
        bootstrap_iters=cfg.bootstrap_iters,
        gen_kwargs={"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None,
        random_seed=None,  # leave the caller's random generators alone
        numpy_random_seed=None,
        torch_random_seed=None,
    )
    seconds = time.perf_counter() - t0
    if raw is None:
        raise DataError("the harness returned no result (is this a distributed worker?)")
    kinds = {t.name: t.kind for t in prep.tasks}
    run = collect(raw, kinds, cfg, prep.include, tokenizer_fingerprint(tokenizer))
    run.info["seconds"] = seconds
    return run


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

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            if self.progress is None:
                return super().generate_until(requests, disable_tqdm)
            self.progress.start(len(requests))
            return super().generate_until(requests, disable_tqdm=True)

    return LowbitHFLM


def check_supported(manager: Any, names: list[str], limit: int | None = None) -> None:
    """Load the tasks and refuse, before any request runs, those whose samples lowbit cannot
    compare or whose templates or stop sequences are wrong (:mod:`task_check`)."""
    from jinja2.exceptions import UndefinedError

    try:
        loaded = manager.load(names)
    except UndefinedError as exc:  # the harness renders each task's first document as it loads
        raise task_check.template_error(manager, names, exc) from None
    except ValueError as exc:
        if "Duplicate task" in str(exc):  # a task named both alone and through its group
            raise ConfigError(
                f"{str(exc).replace(task_defs.LOCAL_PREFIX, '')}; name each task once "
                "(a group such as mmlu already holds its subjects)"
            ) from None
        raise
    task_check.check_built(loaded["tasks"], limit, display)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identifies a tokenizer by its vocabulary and special tokens."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(map(str, tokenizer.all_special_tokens))
    h = hashlib.sha256(repr((vocab, special)).encode())
    return h.hexdigest()[:16]
