"""Reference against quantized across tasks: per-task comparisons, accuracy by MMLU category
and by task family, with the checks that both runs saw the same samples and tokenizer."""

from __future__ import annotations

from typing import Any

from lowbit.errors import DataError
from lowbit.evaluation import task_defs
from lowbit.evaluation.harness import TaskRun
from lowbit.evaluation.samples import SampleRecord, accuracy, compare_samples

MMLU_PREFIX = task_defs.MMLU + "_"


def group_of(task: str) -> tuple[str, str]:
    """(kind, group) of a leaf task: its MMLU category, else its task family."""
    subject = task.removeprefix(MMLU_PREFIX)
    if task.startswith(MMLU_PREFIX) and task_defs.is_mmlu_subject(subject):
        return "MMLU category", task_defs.mmlu_category_of(subject)
    if task in task_defs.LOCAL_TASKS:
        return "task family", task_defs.LOCAL_TASKS.get(task).family
    return "task family", "other"


def is_two_way(task: str, records: list[SampleRecord]) -> bool:
    return bool(records) and all(len(s.scores) == 2 for s in records)


def category_rows(
    ref: dict[str, list[SampleRecord]], quant: dict[str, list[SampleRecord]] | None = None
) -> list[dict[str, Any]]:
    """Accuracy per MMLU category and per task family (pooled over items, as the harness's
    size-weighted group accuracy), with its change when ``quant`` is given."""
    pooled: dict[tuple[str, str], tuple[list[SampleRecord], list[SampleRecord]]] = {}
    for task, recs in ref.items():
        slot = pooled.setdefault(group_of(task), ([], []))
        slot[0].extend(recs)
        if quant is not None:
            slot[1].extend(quant[task])
    rows = []
    for (kind, group), (r, q) in sorted(pooled.items()):
        row: dict[str, Any] = {"kind": kind, "group": group, "n": len(r), "acc_ref": accuracy(r)}
        if quant is not None:
            row["acc_quant"] = accuracy(q)
            row["delta"] = row["acc_quant"] - row["acc_ref"]
        rows.append(row)
    return rows


def compare_runs(ref: TaskRun, quant: TaskRun) -> dict[str, Any]:
    """Per-task comparisons, pooled MMLU, and the category table; both runs must hold the same
    tasks and samples and come from the same tokenizer."""
    check_same_runs(ref, quant)
    per_task = {
        task: compare_samples(
            recs, quant.samples[task], task=task, two_way=is_two_way(task, recs)
        ).to_dict()
        for task, recs in sorted(ref.samples.items())
    }
    positive = ref.info.get("positive_label", {})
    for task, row in per_task.items():
        if row["fp_fn"] is not None:  # which answer counts as positive, stated with the counts
            row["fp_fn"]["positive"] = positive.get(task, "choice 2")
    mmlu = [t for t in ref.samples if group_of(t)[0] == "MMLU category"]
    if mmlu:
        pooled_r = [s for i, t in enumerate(mmlu) for s in _keyed(ref.samples[t], i)]
        pooled_q = [s for i, t in enumerate(mmlu) for s in _keyed(quant.samples[t], i)]
        per_task[task_defs.MMLU + " (all subjects)"] = compare_samples(
            pooled_r, pooled_q, task=task_defs.MMLU
        ).to_dict()
    return {
        "tasks": per_task,
        "categories": category_rows(ref.samples, quant.samples),
    }


def _keyed(records: list[SampleRecord], index: int) -> list[SampleRecord]:
    """Records renumbered so that ids stay distinct when subjects are pooled."""
    from dataclasses import replace

    return [replace(s, doc_id=index * 10**9 + s.doc_id) for s in records]


def check_same_runs(ref: TaskRun, quant: TaskRun) -> None:
    tok_r, tok_q = ref.info.get("tokenizer"), quant.info.get("tokenizer")
    if tok_r != tok_q:
        raise DataError(
            f"the reference and quantized runs used different tokenizers ({tok_r} and {tok_q}); "
            "per-sample comparison needs the same tokenizer"
        )
    if set(ref.samples) != set(quant.samples):
        only_r = sorted(set(ref.samples) - set(quant.samples))
        only_q = sorted(set(quant.samples) - set(ref.samples))
        raise DataError(
            f"the runs cover different tasks (only in the reference: {only_r}; only in the "
            f"quantized run: {only_q}); evaluate both on the same --tasks"
        )
