"""`lowbit eval --tasks` and `lowbit compare` end to end on a tiny model with local task files:
one JSON result and an HTML report; mismatched runs and unknown tasks write nothing."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_commands import lowbit
from tests.helpers.taskdata import make_task_data

TASKS = ("--tasks", "piqa,winogrande,arc_easy,mmlu", "--batch-size", "4")


@pytest.fixture()
def env(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_DATA_DIR", str(make_task_data(tmp_path / "data")))
    run = lowbit("quantize", str(tiny_llama), "-o", "q", "--bits", "3", "--group-size", "32",
                 "--algorithm", "rtn", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return tmp_path


def test_eval_tasks_then_compare_results(env, tiny_llama):
    run = lowbit("eval", str(tiny_llama), *TASKS, "-o", "ref.json", cwd=env)
    assert run.returncode == 0, run.stderr
    run = lowbit("eval", "q", *TASKS, "-o", "q.json", cwd=env)
    assert run.returncode == 0, run.stderr
    ref = json.loads((env / "ref.json").read_text())
    assert "results" not in ref  # no text unless asked for, with --tasks
    assert len(ref["tasks"]["samples"]["piqa"]) == 3
    assert {r["group"] for r in ref["categories"]} >= {"stem", "humanities", "commonsense"}
    run = lowbit("compare", "ref.json", "q.json", "-o", "cmp.json", cwd=env)
    assert run.returncode == 0, run.stderr
    out = json.loads((env / "cmp.json").read_text())
    piqa = out["comparison"]["tasks"]["piqa"]
    ref_ok = [s["correct"] for s in out["runs"]["reference"]["samples"]["piqa"]]
    q_ok = [s["correct"] for s in out["runs"]["quantized"]["samples"]["piqa"]]
    assert piqa["flips_to_wrong"] == sum(a and not b for a, b in zip(ref_ok, q_ok, strict=True))
    assert piqa["fp_fn"] is not None and out["comparison"]["tasks"]["arc_easy"]["fp_fn"] is None
    ref_fp_fn, q_fp_fn = piqa["fp_fn"]["reference"], piqa["fp_fn"]["quantized"]
    assert piqa["fp_fn"]["positive"] == "choice 2"  # PIQA's two solutions differ per item
    if ref_fp_fn["ratio"] is not None and q_fp_fn["ratio"] is not None:
        assert piqa["fp_fn"]["ratio_change"] == q_fp_fn["ratio"] - ref_fp_fn["ratio"]
    cell = f"{ref_fp_fn['fp']}/{ref_fp_fn['fn']}"
    assert "positive class: piqa: choice 2" in " ".join(run.stderr.split())  # console table
    assert cell in run.stderr
    assert "mmlu (all subjects)" in out["comparison"]["tasks"]
    assert (env / "cmp.html").read_text().count("<svg") >= 2


def test_compare_models_directly_with_kl(env, tiny_llama):
    args = ("--eval-text", "builtin:python-docs", "--windows", "2", "--ctx", "64")
    run = lowbit("compare", str(tiny_llama), "q", "--tasks", "piqa", *args, "-o", "c.json",
                 cwd=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads((env / "c.json").read_text())
    kl = out["text"]["quantized"]["kl"]
    assert 0 <= kl["median"] <= kl["p90"] <= kl["p99"] <= kl["max"]
    hist = out["text"]["quantized"]["kl_histogram"]
    assert sum(hist["counts"]) == out["text"]["quantized"]["tokens"]
    assert out["comparison"]["tasks"]["piqa"]["n"] == 3


def test_mismatched_runs_and_unknown_tasks_write_nothing(env, tiny_llama):
    assert lowbit("eval", str(tiny_llama), "--tasks", "piqa", "--limit", "2", "-o", "a.json",
                  cwd=env).returncode == 0  # fmt: skip
    assert lowbit("eval", "q", "--tasks", "piqa", "-o", "b.json", cwd=env).returncode == 0
    run = lowbit("compare", "a.json", "b.json", "-o", "bad.json", cwd=env)
    assert run.returncode == 2 and "same --limit" in run.stderr
    assert not (env / "bad.json").exists() and not (env / "bad.html").exists()
    run = lowbit("eval", "q", "--tasks", "piqa,arc_esay", "--task-source", "local", "-o", "x.json",
                 cwd=env)  # fmt: skip
    assert run.returncode == 2 and "did you mean 'arc_easy'" in run.stderr
    assert not (env / "x.json").exists()
