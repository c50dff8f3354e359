"""The API's task-evaluation functions (re-exported by :mod:`lowbit.api`)."""

from __future__ import annotations

from typing import Any


def evaluate_tasks(model: Any, handle: Any, cfg: Any, *, progress: Any = None) -> Any:
    """Run ``model`` (with ``handle``'s tokenizer) on the tasks of ``cfg`` (a TaskConfig)
    through the lm-evaluation-harness; returns a TaskRun with every sample."""
    from lowbit.evaluation.harness import run_tasks
    from lowbit.evaluation.text import data_dir
    from lowbit.models.sources import cache_root

    tokenizer = handle.load_tokenizer()
    root, cache = data_dir(), cache_root()
    return run_tasks(model, tokenizer, cfg, data_root=root, cache=cache, progress=progress)


def compare_task_runs(reference: Any, quantized: Any) -> dict[str, Any]:
    """Flips, error overlap, FP/FN, McNemar and categories of two TaskRuns."""
    from lowbit.evaluation.compare import compare_runs

    return compare_runs(reference, quantized)
