"""A harness run as lowbit keeps it: the harness's metrics per task and group, and one
:class:`SampleRecord` per document of every leaf task (for a task with several filters, such as
GSM8K's strict and flexible answer extraction, the records follow its first filter, the one its
verdict is taken from), with which label of each two-way task is the positive one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.evaluation import task_defs
from lowbit.evaluation.samples import SampleRecord, record_from_harness


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


def display(harness_name: str) -> str:
    return harness_name.removeprefix(task_defs.LOCAL_PREFIX)


def collect(
    raw: dict[str, Any], kinds: dict[str, str], cfg: Any, include: list[Path], tokenizer: str
) -> TaskRun:
    """The TaskRun of one ``simple_evaluate`` result (with logged samples)."""
    import lm_eval

    metrics = {display(name): _metrics(values) for name, values in raw["results"].items()}
    samples, filters, positive = {}, {}, {}
    for name, logged in raw["samples"].items():
        task = display(name)
        first = logged[0].get("filter", "none") if logged else "none"
        kept = sorted((s for s in logged if s.get("filter", "none") == first), key=_doc_id)
        samples[task] = [record_from_harness(s) for s in kept]
        if first != "none":
            filters[task] = first
        label = positive_label(kept)
        if label is not None:
            positive[task] = label
    info = {
        "harness": lm_eval.__version__,
        "tasks": kinds,
        "task_dirs": [str(p) for p in include],
        "include_paths": list(cfg.include_paths),
        "limit": cfg.limit,
        "selection": "the first N documents of each task (harness --limit)"
        if cfg.limit
        else "all documents",
        "n_samples": {display(k): v for k, v in raw.get("n-samples", {}).items()},
        "batch_size": cfg.batch_size,
        "max_gen_toks": cfg.max_gen_toks,
        "verdict_filter": filters,
        "positive_label": positive,
        "tokenizer": tokenizer,
    }
    return TaskRun(metrics, samples, info)


def _doc_id(sample: dict[str, Any]) -> int:
    return int(sample["doc_id"])


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    """Numeric metrics; ``metric,none`` becomes ``metric``, ``metric,FILTER`` is kept as is."""
    return {
        k.removesuffix(",none"): v
        for k, v in values.items()
        if "," in k and isinstance(v, int | float) and not isinstance(v, bool)
    }


def positive_label(logged: list[dict[str, Any]]) -> str | None:
    """For a two-way task, which answer is the positive class (the second choice): its text
    when every document has the same two answers (``'yes'``), else ``'choice 2'``."""
    if not logged or any(len(s.get("arguments", [])) != 2 or _generative(s) for s in logged):
        return None
    pairs = {tuple(str(arg[1]).strip() for arg in s["arguments"]) for s in logged}
    if len(pairs) == 1:
        ((first, second),) = pairs
        if first != second:
            return f"{second!r} (choice 2)"
    return "choice 2"


def _generative(sample: dict[str, Any]) -> bool:
    args = sample.get("arguments") or [()]
    return len(args[0]) > 1 and isinstance(args[0][1], dict)
