"""The harness bridge on a tiny random model, offline: local task definitions load, every
sample is kept, the harness's metrics equal the mean of the per-sample verdicts, and bad task
names get suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.errors import ConfigError, UnknownNameError
from lowbit.evaluation import task_defs
from lowbit.evaluation.harness import TaskConfig, TaskSource, resolve, run_tasks
from tests.helpers.taskdata import MMLU, PIQA, make_task_data

ALL = ("lambada_openai", "hellaswag", "piqa", "winogrande", "arc_easy", "mmlu")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task_data(tmp_path_factory.mktemp("taskdata"))


@pytest.fixture(scope="module")
def run(tiny_llama: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    cache = tmp_path_factory.mktemp("cache")
    calls: list[tuple[int, int]] = []
    cfg = TaskConfig(ALL, limit=None)
    run = run_tasks(
        model,
        tok,
        cfg,
        data_root=data_root,
        cache=cache,
        progress=lambda d, t: calls.append((d, t)),
    )
    run.info["progress_calls"] = calls
    return run


def test_progress_counts_every_request(run) -> None:
    calls = run.info["progress_calls"]
    done, total = calls[-1]
    # one request per choice: piqa 3×2, winogrande 2×2, arc 3+4, hellaswag 2×4, lambada 2, mmlu 2×4
    assert done == total == 6 + 4 + 7 + 8 + 2 + 8
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_every_sample_is_kept_and_metrics_are_their_mean(run) -> None:
    expected = {"piqa": 3, "winogrande": 2, "arc_easy": 2, "hellaswag": 2, "lambada_openai": 2}
    for task, n in expected.items():
        assert len(run.samples[task]) == n
        acc = sum(s.correct for s in run.samples[task]) / n
        assert run.metrics[task]["acc"] == pytest.approx(acc)
    assert {s.gold for s in run.samples["piqa"]} == {lab for _, lab in PIQA}
    assert [len(s.scores) for s in run.samples["arc_easy"]] == [3, 4]
    assert [s.gold for s in run.samples["arc_easy"]] == [0, 1]
    assert [s.gold for s in run.samples["hellaswag"]] == [2, 0]
    assert [s.gold for s in run.samples["winogrande"]] == [0, 1]


def test_mmlu_keeps_subjects_and_categories(run) -> None:
    assert set(MMLU) <= {t.removeprefix("mmlu_") for t in run.samples}
    assert {"mmlu", "mmlu_stem", "mmlu_humanities"} <= set(run.metrics)
    assert run.samples["mmlu_abstract_algebra"][0].gold == 1
    assert task_defs.mmlu_category_of("abstract_algebra") == "stem"
    assert task_defs.mmlu_category_of("world_religions") == "humanities"


def test_info_records_selection_and_tokenizer(run) -> None:
    assert run.info["tasks"]["piqa"] == "local"
    assert run.info["limit"] is None and len(run.info["tokenizer"]) == 16
    assert any(Path(d, "local_piqa.yaml").is_file() for d in run.info["task_dirs"])


def test_local_yaml_includes_the_harness_standard_task(run) -> None:
    import yaml

    (path,) = [Path(d, "local_piqa.yaml") for d in run.info["task_dirs"] if "piqa" in d]
    cfg = yaml.safe_load(path.read_text())
    assert cfg["include"].endswith("piqa/piqa.yaml") and Path(cfg["include"]).is_file()
    assert cfg["dataset_path"] == "json" and cfg["validation_split"] == "validation"


def test_prompts_are_the_standard_tasks(data_root: Path, tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    include = task_defs.write_task_dirs(data_root, tmp_path, ["piqa", "arc_easy", "mmlu"])
    tm = TaskManager(include_path=[str(p) for p in include], include_defaults=False)
    tasks = tm.load(["local_piqa", "local_arc_easy", "local_mmlu_abstract_algebra"])["tasks"]
    by_name = {str(k).split(":")[0] if ":" in str(k) else str(k): v for k, v in tasks.items()}
    piqa = next(v for k, v in by_name.items() if "piqa" in k)
    doc = next(iter(piqa.validation_docs()))
    assert piqa.doc_to_text(doc) == "Question: How to open a jar?\nAnswer:"
    assert piqa.doc_to_choice(doc) == ["Twist the lid.", "Eat the lid."]
    arc = next(v for k, v in by_name.items() if "arc" in k)
    assert arc.doc_to_text(next(iter(arc.test_docs()))) == "Question: What do plants need?\nAnswer:"
    mmlu = next(v for k, v in by_name.items() if "mmlu" in k)
    assert mmlu.doc_to_text(next(iter(mmlu.test_docs()))) == (
        "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )


def test_unknown_local_task_suggests(data_root: Path) -> None:
    cfg = TaskConfig(("piqaa",), source=TaskSource.LOCAL)
    with pytest.raises(UnknownNameError, match="did you mean 'piqa'"):
        resolve(cfg, data_root)


def test_resolution_prefers_local_files(data_root: Path, tmp_path: Path) -> None:
    tasks = resolve(TaskConfig(("piqa", "mmlu_world_religions", "local_arc_easy")), data_root)
    assert [(t.harness_name, t.local) for t in tasks] == [
        ("local_piqa", True), ("local_mmlu_world_religions", True), ("local_arc_easy", True)
    ]  # fmt: skip
    from lowbit.errors import DataError

    with pytest.raises(DataError, match="not under"):
        resolve(TaskConfig(("piqa",), source=TaskSource.LOCAL), tmp_path / "empty")


@pytest.mark.parametrize(
    "kwargs",
    [{"tasks": ()}, {"tasks": ("piqa",), "limit": 0}, {"tasks": ("piqa",), "batch_size": 0}],
)
def test_bad_task_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TaskConfig(**kwargs)


def test_other_names_resolve_to_the_harness_tasks(data_root: Path, monkeypatch) -> None:
    from lowbit.evaluation import task_check

    monkeypatch.setattr(task_check, "hub_unreachable", lambda: None)  # as if the hub answered
    tasks = resolve(TaskConfig(("piqa", "boolq")), data_root)
    assert [(t.harness_name, t.local) for t in tasks] == [("local_piqa", True), ("boolq", False)]
    with pytest.raises(UnknownNameError, match="did you mean 'hellaswag'"):
        resolve(TaskConfig(("helaswag",), source=TaskSource.HUB), data_root)


def test_task_dirs_are_per_task_and_reused(tmp_path: Path) -> None:
    """A data directory holding only PIQA serves PIQA; a second call reuses the conversion."""
    import shutil

    full = make_task_data(tmp_path / "full")
    only = tmp_path / "only"
    shutil.copytree(full / "piqa", only / "piqa")
    (first,) = task_defs.write_task_dirs(only, tmp_path / "cache", ["piqa"])
    stamp = (first / "manifest.json").stat().st_mtime_ns
    (again,) = task_defs.write_task_dirs(only, tmp_path / "cache", ["piqa"])
    assert again == first and (again / "manifest.json").stat().st_mtime_ns == stamp
    (only / "piqa" / "valid-labels.lst").write_text("1\n1\n0\n")
    (changed,) = task_defs.write_task_dirs(only, tmp_path / "cache", ["piqa"])
    assert changed != first  # new data, new conversion


def test_tasks_without_a_per_sample_verdict_are_refused_before_running(tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    from lowbit.evaluation.harness import check_supported

    gen = tmp_path / "gen"
    gen.mkdir()
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "2+2", "a": "4"}\n')
    (gen / "gen.yaml").write_text(
        "task: gen_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\ngeneration_kwargs:\n  until: ['\\n']\n"
        "metric_list:\n  - metric: bleu\n"
    )
    tm = TaskManager(include_path=str(gen), include_defaults=False)
    with pytest.raises(ConfigError, match="'gen_task' .generate_until, metrics .'bleu'"):
        check_supported(tm, ["gen_task"])


def test_standard_suite_is_every_local_task(data_root: Path) -> None:
    tasks = resolve(TaskConfig(("standard",)), data_root)
    names = [t.name for t in tasks]
    assert names == [*task_defs.LOCAL_TASKS.names(), "mmlu"] and "gsm8k" in names
    assert all(t.kind == "local" for t in tasks)
