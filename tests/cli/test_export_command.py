"""`lowbit export` end to end on a tiny model: a saved quantized model (or a model and a plan)
becomes a GGUF file or a compressed-tensors directory that `lowbit eval` reads back with the
same perplexity; bad input writes nothing."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_commands import lowbit

EVAL = ("--eval-text", "builtin:python-docs", "--windows", "3", "--ctx", "64")
PLAN_W8 = {
    "lowbit_plan_version": 1,
    "default": {
        "format": {"type": "int", "bits": 8},
        "granularity": {"type": "group", "size": 32},
        "algorithm": {"name": "rtn"},
    },
    "rules": [],
}


@pytest.fixture()
def saved(tiny_llama, tmp_path):
    run = lowbit(
        "quantize",
        str(tiny_llama),
        "-o",
        "q",
        "--bits",
        "4",
        "--group-size",
        "32",
        "--algorithm",
        "rtn",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    return tmp_path / "q"


def _perplexity(path) -> float:
    return json.loads(path.read_text())["results"]["model"]["perplexity"]


def test_exports_evaluate_like_the_saved_model(saved, tiny_llama, tmp_path):
    run = lowbit("eval", "q", *EVAL, "-o", "q.eval.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for target, out in (("gguf", "q.gguf"), ("compressed-tensors", "ct")):
        run = lowbit(
            "export", "q", "--to", target, "-o", out, "--eval-result", "q.eval.json", cwd=tmp_path
        )
        assert run.returncode == 0, run.stderr
        result = json.loads((tmp_path / f"{out}.result.json").read_text())
        assert result["result"]["max_weight_error"] == 0.0
        assert result["config"]["target"] == target
        run = lowbit(
            "eval", out, "--reference", str(tiny_llama), *EVAL, "-o", f"{out}.json", cwd=tmp_path
        )
        assert run.returncode == 0, run.stderr
        assert _perplexity(tmp_path / f"{out}.json") == _perplexity(tmp_path / "q.eval.json")
    assert "perplexity" in (tmp_path / "ct" / "README.md").read_text()


def test_model_with_plan_is_quantized_then_exported(tiny_llama, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN_W8))
    run = lowbit(
        "export", str(tiny_llama), "--plan", "plan.json", "--to", "gguf", "-o", "m.gguf",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Q8_0" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--to", "gguf", "-o", "x.gguf", "--plan", "p.json"), "already quantized"),
        (("--to", "onnx", "-o", "x"), "onnx"),
        (("--to", "gguf", "-o", "x.gguf", "--dtype", "int3"), "int3"),
    ],
)
def test_bad_options_write_nothing(saved, tmp_path, args, message):
    (tmp_path / "p.json").write_text(json.dumps(PLAN_W8))
    before = set(tmp_path.iterdir())
    run = lowbit("export", "q", *args, cwd=tmp_path)
    assert run.returncode == 2 and message in run.stderr
    assert set(tmp_path.iterdir()) == before


def test_model_without_plan_and_existing_output(saved, tiny_llama, tmp_path):
    run = lowbit("export", str(tiny_llama), "--to", "gguf", "-o", "x.gguf", cwd=tmp_path)
    assert run.returncode == 2 and "give --plan" in run.stderr
    (tmp_path / "x.gguf").write_text("mine")
    run = lowbit("export", "q", "--to", "gguf", "-o", "x.gguf", cwd=tmp_path)
    assert run.returncode == 2 and "already exists" in run.stderr
    assert (tmp_path / "x.gguf").read_text() == "mine"


def test_unrepresentable_plan_names_layers(tiny_llama, tmp_path):
    run = lowbit(
        "quantize", str(tiny_llama), "-o", "q64", "--bits", "4", "--group-size", "64",
        "--algorithm", "rtn", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    run = lowbit("export", "q64", "--to", "gguf", "-o", "x.gguf", cwd=tmp_path)
    assert run.returncode == 2 and "model.layers.0.self_attn.q_proj: group 64" in run.stderr
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.result.json").exists()
