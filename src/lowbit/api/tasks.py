"""The API's task-evaluation functions (re-exported by :mod:`lowbit.api`). The harness runs a
whole model: :func:`load_for_tasks` builds one (only one at a time is ever held)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from lowbit.evaluation.harness import TaskConfig, TaskRun
    from lowbit.evaluation.taskcache import TaskRunKey
    from lowbit.models.sources import ModelHandle
    from lowbit.runtime import Runtime


def load_for_tasks(
    source: str, rt: Runtime, *, allow_pickle: bool = False
) -> tuple[nn.Module, ModelHandle]:
    """(the whole model on ``rt``, the handle of the model it is or was made from) for a model
    source or a saved quantized directory (dequantized, with its activation and KV-cache
    quantization attached)."""
    from lowbit.api.core import load
    from lowbit.api.quantize import origin
    from lowbit.models.saving import is_quantized_dir

    if is_quantized_dir(Path(source)):
        from lowbit.models.fakequant import attach_runtime
        from lowbit.models.saving import load_quantized
        from lowbit.plan import Plan

        model, layers, manifest = load_quantized(Path(source), rt)
        plan = Plan.from_dict(manifest["plan"])
        attach_runtime(model, plan, layers, manifest.get("activation_ranges"))
        return model, origin(manifest)
    handle = load(source, allow_pickle=allow_pickle)
    return handle.load_model(rt), handle


def evaluate_tasks(
    model: nn.Module,
    handle: ModelHandle,
    cfg: TaskConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> TaskRun:
    """Run ``model`` (with ``handle``'s tokenizer) on the tasks of ``cfg`` through the
    lm-evaluation-harness; returns a TaskRun with every sample."""
    from lowbit.evaluation.harness import run_tasks
    from lowbit.evaluation.text import data_dir
    from lowbit.models.sources import cache_root

    tokenizer = handle.load_tokenizer()
    root, cache = data_dir(), cache_root()
    return run_tasks(model, tokenizer, cfg, data_root=root, cache=cache, progress=progress)


def cached_task_run(
    source: str, handle: ModelHandle, cfg: TaskConfig, rt: Runtime
) -> tuple[TaskRun | None, TaskRunKey | None]:
    """(the cached TaskRun of the original model ``source`` on ``cfg`` in ``rt``'s dtype and
    device kind, or None; its cache key for :func:`store_task_run`, None for a quantized
    directory, which is never cached)."""
    from lowbit.evaluation import taskcache
    from lowbit.models.saving import is_quantized_dir
    from lowbit.models.sources import cache_root

    if is_quantized_dir(Path(source)):
        return None, None
    key = _task_key(handle, cfg, rt)
    return taskcache.load(taskcache.cache_file(cache_root(), key), key), key


def store_task_run(key: TaskRunKey, run: TaskRun) -> Path:
    """Cache ``run`` under ``key`` (from :func:`cached_task_run`); returns the file."""
    from lowbit.evaluation import taskcache
    from lowbit.models.sources import cache_root

    path = taskcache.cache_file(cache_root(), key)
    taskcache.store(path, key, run)
    return path


def _task_key(handle: ModelHandle, cfg: TaskConfig, rt: Runtime) -> TaskRunKey:
    import lm_eval

    from lowbit.evaluation import taskcache
    from lowbit.evaluation.harness import task_dirs, tokenizer_fingerprint
    from lowbit.evaluation.text import data_dir
    from lowbit.models.sources import cache_root

    dirs = task_dirs(cfg, data_dir(), cache_root())
    return taskcache.TaskRunKey(
        model=handle.fingerprint,
        tokenizer=tokenizer_fingerprint(handle.load_tokenizer()),
        tasks=tuple(cfg.tasks),
        limit=cfg.limit,
        max_gen_toks=cfg.max_gen_toks,
        batch_size=cfg.batch_size,
        task_files=taskcache.files_fingerprint(dirs, cfg.include_paths),
        harness=lm_eval.__version__,
        dtype=str(rt.dtype).removeprefix("torch."),
        device=rt.device.type,
    )


def check_tasks(cfg: TaskConfig) -> None:
    """Resolve, load and check every task of ``cfg`` (names, sources, templates, stop
    sequences) without a model: call it before loading one, so bad tasks fail first."""
    from lowbit.evaluation.harness import prepare
    from lowbit.evaluation.text import data_dir
    from lowbit.models.sources import cache_root

    prepare(cfg, data_dir(), cache_root())


def compare_task_runs(reference: TaskRun, quantized: TaskRun) -> dict[str, object]:
    """Flips, error overlap, FP/FN, McNemar and categories of two TaskRuns."""
    from lowbit.evaluation.compare import compare_runs

    return compare_runs(reference, quantized)
