"""Generation tasks through the harness on a tiny model, offline: the text of each sample is
what a bare greedy ``generate`` gives for its prompt (cut at the first stop sequence), the
verdicts are the harness's exact match of the extracted answer, the harness's metric is their
mean, and two runs compare per sample; GSM8K's local task is the harness's standard one,
5-shot from the train file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lowbit.evaluation import task_defs
from lowbit.evaluation.compare import compare_runs
from lowbit.evaluation.harness import TaskConfig, run_tasks
from tests.helpers.taskdata import GSM8K_TEST, GSM8K_TRAIN, make_task_data

QUESTIONS = ["one two", "three four five", "six"]
STOP = ["\n", "."]
MAX_NEW = 6


def gen_task(folder: Path, answers: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "qa.jsonl"
    data.write_text(
        "".join(
            json.dumps({"q": q, "a": a}) + "\n" for q, a in zip(QUESTIONS, answers, strict=True)
        )
    )
    path = folder / "echo.yaml"
    path.write_text(
        "task: echo\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: 'Say: {{q}}'\ndoc_to_target: '{{a}}'\n"
        f"generation_kwargs:\n  until: {json.dumps(STOP)}\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return path


@pytest.fixture(scope="module")
def tiny(tiny_llama: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def bare_greedy(model, tok, prompt: str) -> str:
    """Greedy decoding by transformers alone, cut at the first stop sequence."""
    import torch

    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0)
    text = tok.decode(out[0, ids.shape[1] :])
    cut = min([text.find(s) for s in STOP if s in text] or [len(text)])
    return text[:cut]


def test_generated_text_and_verdicts_match_the_harness(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    cfg = TaskConfig((str(gen_task(tmp_path / "a", ["x", "y", "z"])),), max_gen_toks=MAX_NEW)
    first = run_tasks(model, tok, cfg, data_root=tmp_path, cache=tmp_path / "c")
    recs = first.samples["echo"]
    assert [r.generated for r in recs] == [bare_greedy(model, tok, f"Say: {q}") for q in QUESTIONS]
    assert all(r.scores == () and r.extracted == r.generated for r in recs)  # no filter
    assert sum(bool(r.generated) for r in recs) >= 2  # real text, not empty answers
    # answers equal to the first and third generations: the harness's exact match says so
    answers = [recs[0].generated, "no such answer", recs[2].generated]
    cfg = TaskConfig((str(gen_task(tmp_path / "b", answers)),), max_gen_toks=MAX_NEW)
    second = run_tasks(model, tok, cfg, data_root=tmp_path, cache=tmp_path / "c")
    assert [r.correct for r in second.samples["echo"]] == [True, False, True]
    assert second.metrics["echo"]["exact_match"] == pytest.approx(2 / 3)
    assert second.info["max_gen_toks"] == MAX_NEW


def test_gsm8k_is_the_standard_task_five_shot_from_train(tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    root = make_task_data(tmp_path / "data")
    include = task_defs.write_task_dirs(root, tmp_path / "cache", ["gsm8k"])
    manager = TaskManager(include_path=[str(p) for p in include], include_defaults=False)
    task = manager.load(["local_gsm8k"])["tasks"]["local_gsm8k"]
    assert (
        task.get_config("num_fewshot") == 5 and task.get_config("output_type") == "generate_until"
    )
    assert [d["question"] for d in task.fewshot_docs()] == [d["question"] for d in GSM8K_TRAIN]
    task.set_fewshot_seed(1234)
    doc = task.test_docs()[0]
    context = task.fewshot_context(doc, 5)
    assert context.count("Question: Tom has") == 5  # five train examples, none from test
    assert context.endswith(f"Question: {GSM8K_TEST[0]['question']}\nAnswer:")


def test_gsm8k_records_and_per_sample_comparison(tiny, tmp_path: Path) -> None:
    import copy

    import torch

    model, tok = tiny
    root = make_task_data(tmp_path / "data")
    cfg = TaskConfig(("gsm8k",), max_gen_toks=MAX_NEW, batch_size=2)
    ref = run_tasks(model, tok, cfg, data_root=root, cache=tmp_path / "c")
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    quant = run_tasks(other, tok, cfg, data_root=root, cache=tmp_path / "c")
    recs = ref.samples["gsm8k"]
    assert len(recs) == 2 and ref.info["verdict_filter"] == {"gsm8k": "strict-match"}
    for r in recs:  # the strict filter's answer: the number after '#### ', else '[invalid]'
        found = re.findall(r"#### (\-?[0-9\.\,]+)", r.generated or "")
        assert r.extracted == (found[0] if found else "[invalid]")
    assert ref.metrics["gsm8k"]["exact_match,strict-match"] == sum(r.correct for r in recs) / 2
    row = compare_runs(ref, quant)["tasks"]["gsm8k"]
    flips = sum(a.correct != b.correct for a, b in zip(recs, quant.samples["gsm8k"], strict=True))
    assert row["n"] == 2 and row["flips_to_wrong"] + row["flips_to_right"] == flips
    assert row["fp_fn"] is None and all(b["n"] == 0 for b in row["flips_by_margin"])
