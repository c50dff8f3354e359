"""`lowbit eval --tasks` with tasks of one's own (--include-path, a YAML file) on a tiny model;
bad tasks exit with code 2 before any model is loaded, and nothing is written."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_commands import lowbit
from tests.evaluation.test_user_tasks import write_task


def test_include_path_task_and_yaml_file(tiny_llama, tmp_path) -> None:
    write_task(tmp_path / "mine")
    run = lowbit("eval", str(tiny_llama), "--include-path", "mine", "--tasks", "my_yesno",
                 "-o", "out.json", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads((tmp_path / "out.json").read_text())["tasks"]
    assert len(out["samples"]["my_yesno"]) == 4 and out["info"]["tasks"] == {"my_yesno": "user"}
    assert out["info"]["include_paths"] == ["mine"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tasks", "no_such_task"), "no_such_task"),
        (("--tasks", "piqa", "--limit", "0"), "--limit must be a positive"),
        (("--tasks", "mine/yesno.yaml"), "line 8"),
        (("--include-path", "absent", "--tasks", "x"), "--include-path absent: no such"),
    ],
    ids=["unknown", "limit-0", "missing-field", "include-path"],
)
def test_bad_tasks_fail_before_the_model_loads(tmp_path, monkeypatch, args, message) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_task(tmp_path / "mine", field="claim")
    # the model does not exist: a task error proves the tasks were checked first
    run = lowbit("eval", str(tmp_path / "no-model"), *args, "-o", "out.json", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out.json").exists()
