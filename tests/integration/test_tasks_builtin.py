"""Tasks on the real built-in model and the real task files: lowbit's bridge (in-memory model)
gives the same per-sample verdicts and log-likelihoods as the harness run directly on the
model's directory with lowbit's task files; a quantized model's comparison is consistent."""

from __future__ import annotations

import pytest

from lowbit import api
from lowbit.evaluation.harness import TaskConfig
from tests.conftest import require_builtin_model, require_shared_data

pytestmark = pytest.mark.integration
TASKS = ("lambada_openai", "hellaswag", "piqa", "winogrande", "arc_challenge", "mmlu_anatomy")


@pytest.fixture(scope="module")
def handle():
    require_shared_data()
    require_builtin_model()
    return api.load("smollm2-135m")


@pytest.fixture(scope="module")
def reference_run(handle):
    return api.evaluate_tasks(handle.load_model(), handle, TaskConfig(TASKS, limit=4))


def test_bridge_equals_the_harness_run_directly(handle, reference_run):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lowbit.evaluation.samples import record_from_harness

    direct = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(handle.path), "dtype": "float32", "device": "cpu"},
        tasks=[f"local_{t}" for t in TASKS],
        task_manager=TaskManager(
            include_path=reference_run.info["task_dirs"], include_defaults=False
        ),
        limit=4,
        log_samples=True,
        bootstrap_iters=0,
        batch_size=16,
    )
    for name, recs in direct["samples"].items():
        task = name.removeprefix("local_")
        ours = reference_run.samples[task]
        theirs = [record_from_harness(s) for s in sorted(recs, key=lambda s: s["doc_id"])]
        assert [s.doc_hash for s in ours] == [s.doc_hash for s in theirs]
        assert [s.correct for s in ours] == [s.correct for s in theirs], task
        for a, b in zip(ours, theirs, strict=True):
            assert a.scores == pytest.approx(b.scores, abs=1e-3), task
        assert reference_run.metrics[task]["acc"] == direct["results"][name]["acc,none"]


def test_runs_are_deterministic_and_quantization_moves_scores(handle, reference_run):
    from lowbit.plan import uniform_plan

    again = api.evaluate_tasks(handle.load_model(), handle, TaskConfig(TASKS, limit=4))
    same = api.compare_task_runs(reference_run, again)
    assert all(c["flip_rate"] == 0 and c["error_jaccard"] == 1.0 for c in same["tasks"].values())
    for task, recs in reference_run.samples.items():
        assert [s.scores for s in recs] == [s.scores for s in again.samples[task]], task
    spec = api.spec_from_options(3, 64, True, "rtn")
    qm = api.quantize(handle, uniform_plan(spec), None)
    quant = api.evaluate_tasks(api.fake_quant_model(handle, qm), handle, TaskConfig(TASKS, limit=4))
    out = api.compare_task_runs(reference_run, quant)
    assert set(out["tasks"]) >= set(TASKS)
    # 3-bit RTN of this fragile model moves every log-likelihood
    for task in TASKS:
        moved = [
            max(abs(x - y) for x, y in zip(a.scores, b.scores, strict=True))
            for a, b in zip(reference_run.samples[task], quant.samples[task], strict=True)
        ]
        assert min(moved) > 1e-3, task
