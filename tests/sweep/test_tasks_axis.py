"""The sweep's tasks axis: a task set of one's own evaluated on every trial through the harness
against the original model's run (taken from the task cache after the first trial), with the
per-task accuracies and flips in the store equal to a direct evaluation of the same model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lowbit import api
from lowbit.errors import ConfigError, LowbitError
from lowbit.evaluation.harness import TaskConfig
from lowbit.runtime import RuntimeConfig
from lowbit.sweep.driver import run_sweep
from lowbit.sweep.executors import LocalExecutor
from lowbit.sweep.grid import expand
from lowbit.sweep.spec import TaskChoice, load_sweep, parse_sweep
from lowbit.sweep.store import open_store
from lowbit.sweep.trial import run_trial
from tests.evaluation.test_user_tasks import write_task


def _sweep(tmp_path: Path, model: Path, tasks: list) -> Path:
    data = {
        "models": [str(model)], "formats": ["int4", "int2"], "group_sizes": [16],
        "texts": [{"source": "builtin:python-docs", "ctx": 32, "windows": 2}],
        "tasks": tasks, "runtime": {"device": "cpu", "dtype": "float32"},
    }  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class _Counting:
    """api.load_for_tasks, counting how often the original model is loaded for tasks."""

    def __init__(self) -> None:
        self.calls, self.real = 0, api.load_for_tasks

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_task_axis_matches_direct_evaluation(tiny_llama, tmp_path, monkeypatch):
    write_task(tmp_path / "mine")
    path = _sweep(tmp_path, tiny_llama, [{"tasks": "my_yesno", "include_paths": ["mine"]}])
    spec = load_sweep(path)
    assert spec.tasks == (TaskChoice(("my_yesno",), include_paths=(str(tmp_path / "mine"),)),)
    counting = _Counting()
    monkeypatch.setattr(api, "load_for_tasks", counting)
    summary = run_sweep(spec, tmp_path / "s.sqlite", LocalExecutor(run_trial))
    assert (summary.trials, summary.done, summary.failed) == (2, 2, {})
    assert counting.calls == 1  # the reference ran once; the second trial read the cache
    store = open_store(tmp_path / "s.sqlite", create=False)
    rows = {t.name: t.metrics for t in store.trials()}
    store.close()
    assert all(" | tasks my_yesno" in name for name in rows)

    # independently: quantize the int2 cell and run the harness on it directly
    name, config = next((n, c) for n, c in expand(spec) if "int2" in n)
    rt = api.runtime(RuntimeConfig("cpu", "float32"))
    handle = api.load(str(tiny_llama))
    cfg = TaskConfig(("my_yesno",), include_paths=(str(tmp_path / "mine"),))
    qm = api.quantize(handle, api.Plan.from_dict(config["plan"]), None, rt=rt)
    quant = api.evaluate_tasks(api.fake_quant_model(handle, qm, rt), handle, cfg)
    ref = api.evaluate_tasks(handle.load_model(rt), handle, cfg)
    got = rows[name]
    assert got["my_yesno:acc"] == quant.metrics["my_yesno"]["acc"]
    assert got["my_yesno:acc_ref"] == ref.metrics["my_yesno"]["acc"]
    verdicts = [
        (r.correct, q.correct)
        for r, q in zip(ref.samples["my_yesno"], quant.samples["my_yesno"], strict=True)
    ]
    assert got["my_yesno:flips_to_wrong"] == sum(r and not q for r, q in verdicts)
    assert got["my_yesno:flips_to_right"] == sum(q and not r for r, q in verdicts)
    assert got["kl_mean"] > 0


def test_no_tasks_keeps_the_old_configurations(tiny_llama, tmp_path):
    spec = parse_sweep({"models": [str(tiny_llama)], "formats": ["int4"]})
    assert all("tasks" not in c for _, c in expand(spec))  # a sweep without tasks: no key


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{"task": "arc_easy"}], r"tasks\[0\]: unknown field 'task'"),
        ([{"tasks": "arc_easy", "limit": 0}], r"tasks\[0\]\.limit: expected a positive"),
        ([{"tasks": []}], r"tasks\[0\]\.tasks: expected task names"),
        ([3], r"tasks\[0\]: expected a task name"),
    ],
)
def test_bad_task_sets_are_named(tasks, message):
    with pytest.raises(ConfigError, match=message):
        parse_sweep({"models": ["m"], "formats": ["int4"], "tasks": tasks})


def test_unknown_task_fails_before_the_store(tiny_llama, tmp_path):
    path = _sweep(tmp_path, tiny_llama, ["no_such_task_xyz"])
    with pytest.raises(LowbitError, match="sweep tasks no_such_task_xyz: .*local tasks"):
        run_sweep(load_sweep(path), tmp_path / "s.sqlite", LocalExecutor(run_trial))
    assert not (tmp_path / "s.sqlite").exists()
