"""The task cache: an original model's task results are computed once per task set, read back
equal sample by sample without loading the model again, and run anew when anything they depend
on changes; a damaged or foreign cache file is an error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit import api
from lowbit.errors import ArtefactError
from lowbit.evaluation.harness import TaskConfig
from lowbit.runtime import HOST, RuntimeConfig
from lowbit.workflows.tasks import tasks_of

from .test_user_tasks import write_task


def _never_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded although its task results were cached")


def test_reference_runs_once_per_task_set(tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tasks"
    write_task(folder)
    cfg = TaskConfig(("my_yesno",), include_paths=(str(folder),))
    rt = api.runtime(RuntimeConfig(HOST.type, "float32"))
    handle = api.load(str(tiny_llama))
    first = tasks_of("reference", str(tiny_llama), handle, cfg, rt, False)
    assert "cache" not in first.info

    with monkeypatch.context() as m:
        m.setattr(api, "load_for_tasks", _never_loaded)
        second = tasks_of("reference", str(tiny_llama), handle, cfg, rt, False)
    assert second.info["cache"].endswith(".json")
    assert second.metrics == first.metrics
    assert {t: [s.to_dict() for s in r] for t, r in second.samples.items()} == {
        t: [s.to_dict() for s in r] for t, r in first.samples.items()
    }

    # what the numbers depend on changes: a new key, so the tasks run again
    for changed in (
        TaskConfig(("my_yesno",), include_paths=(str(folder),), limit=2),
        TaskConfig(("my_yesno",), include_paths=(str(folder),), batch_size=4),
    ):
        run, key = api.cached_task_run(str(tiny_llama), handle, changed, rt)
        assert key is not None and run is None
    (folder / "facts.jsonl").write_text('{"statement": "Ice is warm.", "answer": "no"}\n')
    assert api.cached_task_run(str(tiny_llama), handle, cfg, rt)[0] is None  # the data changed


def test_damaged_and_foreign_cache_files_are_named(tiny_llama: Path, tmp_path: Path,
                                                   monkeypatch) -> None:  # fmt: skip
    from lowbit.evaluation import taskcache
    from lowbit.evaluation.task_results import TaskRun

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tasks"
    write_task(folder)
    cfg = TaskConfig(("my_yesno",), include_paths=(str(folder),))
    rt = api.runtime(RuntimeConfig(HOST.type, "float32"))
    handle = api.load(str(tiny_llama))
    _, key = api.cached_task_run(str(tiny_llama), handle, cfg, rt)
    path = api.store_task_run(key, TaskRun({"my_yesno": {"acc": 0.5}}, {"my_yesno": []}, {}))
    assert api.cached_task_run(str(tiny_llama), handle, cfg, rt)[0].metrics["my_yesno"] == {
        "acc": 0.5
    }
    data = json.loads(path.read_text())
    data["key"]["dtype"] = "bfloat16"  # a file that answers another key
    path.write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match=r"another run \(fields differ: dtype\).*delete it"):
        taskcache.load(path, key)
    path.write_text(path.read_text()[:40])
    with pytest.raises(ArtefactError, match=r"damaged cached task result.*delete it"):
        api.cached_task_run(str(tiny_llama), handle, cfg, rt)
