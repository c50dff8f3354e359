"""Comparison across tasks: categories pooled by item, MMLU pooled over subjects, and runs from
different tokenizers or task sets refused."""

from __future__ import annotations

import pytest

from lowbit.errors import DataError
from lowbit.evaluation.compare import category_rows, check_same_runs, compare_runs, group_of
from lowbit.evaluation.harness import TaskRun
from lowbit.evaluation.samples import SampleRecord


def recs(verdicts: list[int]) -> list[SampleRecord]:
    return [SampleRecord(i, f"d{i}", f"p{i}", bool(v), (0.0, -1.0, -2.0, -3.0))
            for i, v in enumerate(verdicts)]  # fmt: skip


def run(samples: dict[str, list[SampleRecord]], tokenizer: str = "tok") -> TaskRun:
    return TaskRun({}, samples, {"tokenizer": tokenizer})


def test_groups_come_from_the_harness_and_the_task_families() -> None:
    assert group_of("mmlu_anatomy") == ("MMLU category", "stem")
    assert group_of("mmlu_philosophy") == ("MMLU category", "humanities")
    assert group_of("mmlu_econometrics") == ("MMLU category", "social_sciences")
    assert group_of("mmlu_nutrition") == ("MMLU category", "other")
    assert group_of("piqa") == ("task family", "commonsense")
    assert group_of("boolq") == ("task family", "other")


def test_categories_pool_items_across_subjects() -> None:
    ref = {"mmlu_anatomy": recs([1, 1, 0, 0]), "mmlu_astronomy": recs([1, 0]), "piqa": recs([1])}
    quant = {"mmlu_anatomy": recs([1, 0, 0, 0]), "mmlu_astronomy": recs([1, 1]), "piqa": recs([0])}
    rows = {r["group"]: r for r in category_rows(ref, quant)}
    stem = rows["stem"]  # 6 items: 3 right before, 3 after
    assert (stem["n"], stem["acc_ref"], stem["acc_quant"], stem["delta"]) == (6, 0.5, 0.5, 0.0)
    assert rows["commonsense"]["delta"] == -1.0


def test_mmlu_is_also_compared_pooled_over_subjects() -> None:
    ref = {"mmlu_anatomy": recs([1, 1, 0]), "mmlu_astronomy": recs([1, 0, 0])}
    quant = {"mmlu_anatomy": recs([0, 1, 0]), "mmlu_astronomy": recs([1, 0, 1])}
    out = compare_runs(run(ref), run(quant))
    pooled = out["tasks"]["mmlu (all subjects)"]
    assert (pooled["n"], pooled["flips_to_wrong"], pooled["flips_to_right"]) == (6, 1, 1)
    assert out["tasks"]["mmlu_anatomy"]["flips_to_wrong"] == 1


def test_different_tokenizers_or_tasks_are_refused() -> None:
    a = run({"piqa": recs([1])}, "tok-a")
    with pytest.raises(DataError, match="different tokenizers"):
        check_same_runs(a, run({"piqa": recs([1])}, "tok-b"))
    with pytest.raises(DataError, match="only in the quantized run: \\['arc_easy'\\]"):
        check_same_runs(a, run({"piqa": recs([1]), "arc_easy": recs([0])}, "tok-a"))
