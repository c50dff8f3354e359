"""Tasks of one's own on a tiny model, offline: a YAML in a temporary include path (or given
as a file) reading a local JSONL runs end to end through the harness; bad task files fail
before anything runs, naming the file, field or line; hub tasks fail at once without a hub."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lowbit.errors import ConfigError, DataError, UnknownNameError
from lowbit.evaluation.harness import TaskConfig, prepare, resolve, run_tasks

DOCS = [
    {"statement": "Snow is cold.", "answer": "yes"},
    {"statement": "Fire is cold.", "answer": "no"},
    {"statement": "Fish can fly to the moon.", "answer": "no"},
    {"statement": "Birds have feathers.", "answer": "yes"},
]
YESNO = """task: my_yesno
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Statement: {{{{{field}}}}}\\nTrue? Answer:"
doc_to_choice: ["no", "yes"]
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def write_task(folder: Path, *, data: str | None = None, field: str = "statement") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "facts.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    path = folder / "yesno.yaml"
    path.write_text(YESNO.format(data=data or jsonl, field=field))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_llama: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def test_include_path_task_runs_end_to_end(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    folder = tmp_path / "my_tasks"
    write_task(folder)
    cfg = TaskConfig(("my_yesno",), include_paths=(str(folder),))
    run = run_tasks(model, tok, cfg, data_root=tmp_path, cache=tmp_path / "cache")
    recs = run.samples["my_yesno"]
    assert [r.gold for r in recs] == [1, 0, 0, 1]  # the target's text mapped onto the choices
    assert all(len(r.scores) == 2 for r in recs)
    assert [r.correct for r in recs] == [r.pred == r.gold for r in recs]
    assert run.metrics["my_yesno"]["acc"] == pytest.approx(sum(r.correct for r in recs) / 4)
    assert run.info["tasks"] == {"my_yesno": "user"}
    assert run.info["positive_label"] == {"my_yesno": "'yes' (choice 2)"}
    # the same file given directly to --tasks gives the same verdicts and scores
    direct = run_tasks(
        model, tok, TaskConfig((str(folder / "yesno.yaml"),)), data_root=tmp_path,
        cache=tmp_path / "cache",
    )  # fmt: skip
    assert [r.scores for r in direct.samples["my_yesno"]] == [r.scores for r in recs]


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    path = write_task(tmp_path / "t", data=str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(DataError, match=r"my_yesno.*nowhere\.jsonl' not found"):
        resolve(TaskConfig((str(path),)), tmp_path)


def test_template_with_a_missing_field_is_named_by_line(tmp_path: Path) -> None:
    path = write_task(tmp_path / "t", field="claim")
    with pytest.raises(DataError, match=r"doc_to_text \(.*yesno\.yaml line 8\) refers.*'claim'"):
        prepare(TaskConfig((str(path),)), tmp_path, tmp_path / "cache")


def test_generation_task_without_stop_sequences_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"q": "2+2", "a": "4"}\n')
    path = tmp_path / "gen.yaml"
    path.write_text(
        "task: gen_nostop\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetric_list:\n  - metric: exact_match\n"
    )
    with pytest.raises(ConfigError, match="'gen_nostop'.*needs stop sequences"):
        prepare(TaskConfig((str(path),)), tmp_path, tmp_path / "cache")


def test_bad_task_names_and_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such task file"):
        resolve(TaskConfig((str(tmp_path / "absent.yaml"),)), tmp_path)
    with pytest.raises(DataError, match="no such directory"):
        TaskConfig(("x",), include_paths=(str(tmp_path / "absent"),))
    folder = tmp_path / "mine"
    write_task(folder)
    with pytest.raises((UnknownNameError, DataError), match="did you mean 'my_yesno'"):
        resolve(TaskConfig(("my_yesn",), include_paths=(str(folder),)), tmp_path)
    with pytest.raises(ConfigError, match="--max-gen-toks"):
        TaskConfig(("x",), max_gen_toks=0)


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline", "unreachable"],
)
def test_hub_tasks_fail_at_once_without_a_hub(tmp_path: Path, monkeypatch, env) -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import lm_eval.tasks  # noqa: F401  # the import's own seconds are not the hub's

    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"'boolq'.*hub is not available.*dataset_path: json"):
        resolve(TaskConfig(("piqa", "boolq")), tmp_path)
    hub_data = write_task(tmp_path / "t", data="x.jsonl")
    hub_data.write_text(hub_data.read_text().replace("dataset_path: json", "dataset_path: a/b"))
    with pytest.raises(DataError, match=r"hub, which is not available.*my_yesno \(a/b\)"):
        resolve(TaskConfig((str(hub_data),)), tmp_path)
    assert time.perf_counter() - t0 < 5.0
