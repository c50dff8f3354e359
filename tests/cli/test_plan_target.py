"""``lowbit sensitivity --format`` and ``lowbit plan --target`` through the CLI on the tiny
Llama: the plan for vLLM exports to compressed-tensors without --allow-unfused; a target that can
write nothing of the menu, and a budget the target's menu cannot reach, are refused with the
reason and nothing is written."""

from __future__ import annotations

import json

import pytest

from lowbit.plan import Plan
from tests.cli.test_commands import lowbit

CALIB = ["--calib-windows", "4", "--ctx", "32", "--probe-ctx", "16"]


@pytest.fixture(scope="module")
def corpus_module(tmp_path_factory):
    """A calibration text (30,000 characters of the built-in Python docs)."""
    from lowbit.evaluation.text import BuiltinText, load_text

    ca = tmp_path_factory.mktemp("corpus") / "calib.txt"
    ca.write_text(load_text(BuiltinText("python-docs", "calib"))[:30_000])
    return None, ca


@pytest.fixture(scope="module")
def table(tiny_llama, tmp_path_factory, corpus_module):
    _, ca = corpus_module
    tmp = tmp_path_factory.mktemp("target")
    out = tmp / "sens.json"
    formats = ("--format", "int", "--format", "nf4", "--format", "mxfp4")
    bits = ("--bits", "2", "--bits", "4", "--bits", "8", "--group-size", "32")
    run = lowbit(
        "sensitivity", str(tiny_llama), *formats, *bits, "--algorithm", "rtn", "--proxies-only",
        "--calib-text", str(ca), *CALIB, "-o", str(out), cwd=tmp,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out


def test_the_menu_holds_the_formats_asked_for(table):
    labels = [m["label"] for m in json.loads(table.read_text())["menu"]]
    assert labels == [
        "RTN W2 g32 sym", "RTN W4 g32 sym", "RTN W8 g32 sym", "RTN NF4 g32", "RTN MXFP4 g32"
    ]  # fmt: skip


def test_plan_for_vllm_exports_without_allow_unfused(table, tiny_llama, tmp_path):
    plan = tmp_path / "plan.yaml"
    args = ("--table", str(table), "--metric", "hessian", "--avg-bits", "6", "--target", "vllm")
    run = lowbit("plan", str(tiny_llama), *args, "-o", str(plan), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "--target vllm drops RTN W2 g32 sym" in run.stderr
    labels = {r.spec.describe() for r in Plan.load(plan).rules} | {
        Plan.load(plan).default.describe()
    }
    assert labels == {"RTN W4 g32 sym", "RTN W8 g32 sym"}
    run = lowbit("quantize", str(tiny_llama), "--plan", str(plan), "-o", "q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    run = lowbit("export", "q", "--to", "compressed-tensors", "-o", "ct", cwd=tmp_path)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--avg-bits", "3", "--target", "vllm"), "smallest achievable is 4.2500 bits per weight"),
        (("--avg-bits", "9", "--target", "vllm"), "largest useful one 8.5000 bits per weight"),
        (("--avg-bits", "5", "--target", "llama"), "unknown deployment target 'llama'"),
    ],
)
def test_plan_bad_target_input_writes_nothing(table, tiny_llama, tmp_path, args, message):
    out = tmp_path / "bad.yaml"
    run = lowbit(
        "plan", str(tiny_llama), "--table", str(table), "--metric", "hessian", *args, "-o",
        str(out), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert message in run.stderr, run.stderr
    assert not out.exists()


def test_a_menu_gguf_cannot_write_names_format_and_target(tiny_llama, tmp_path, corpus_module):
    _, ca = corpus_module
    sens = tmp_path / "nf4.json"
    run = lowbit(
        "sensitivity", str(tiny_llama), "--format", "nf4", "--group-size", "32", "--algorithm",
        "rtn", "--proxies-only", "--calib-text", str(ca), *CALIB, "-o", str(sens), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = tmp_path / "p.yaml"
    run = lowbit(
        "plan", str(tiny_llama), "--table", str(sens), "--metric", "hessian", "--avg-bits",
        "4.25", "--target", "gguf", "-o", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert "target gguf cannot export 1 spec(s)" in run.stderr
    assert "RTN NF4 g32: nf4: not an integer format" in run.stderr
    assert not out.exists()
