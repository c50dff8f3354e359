"""The CLI end to end on a tiny offline model: results with provenance, clear errors, exit code
2 and nothing written on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def lowbit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``lowbit ARGS`` run in ``cwd`` by the console entry point, in this process (importing
    torch and transformers once for the whole suite rather than once a command); exit code,
    stdout and stderr as a subprocess would give them (an uncaught exception: code 1 and its
    traceback). ``lowbit_process`` runs the real ``python -m lowbit.cli.main``."""
    import contextlib
    import io
    import os
    import traceback

    from lowbit.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    argv, here, code = sys.argv, os.getcwd(), 0
    sys.argv = ["lowbit", *args]
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        os.chdir(here)
    return subprocess.CompletedProcess(["lowbit", *args], code, out.getvalue(), err.getvalue())


def lowbit_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lowbit.cli.main", *args], cwd=cwd, capture_output=True, text=True
    )


def test_quantize_then_eval(tiny_llama, tmp_path, corpus):
    ev, ca = corpus
    out = tmp_path / "q"
    run = lowbit(
        "quantize",
        str(tiny_llama),
        "-o",
        str(out),
        "--bits",
        "4",
        "--group-size",
        "48",
        "--calib-text",
        str(ca),
        "--calib-windows",
        "8",
        "--ctx",
        "64",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "q.result.json").read_text())
    assert result["lowbit_version"] and result["model"]["fingerprint"]
    assert result["data"]["calibration"]["windows"] == 8
    assert result["config"]["plan"]["default"]["granularity"] == {"type": "group", "size": 48}
    # in=64 layers: 2 groups of 48/16 columns; down_proj (in=96): 2 groups of 48
    in64, in96 = (64 + 32 + 32 + 64 + 96 + 96) * 64, 64 * 96
    expected = (in64 * (4 + 2 * 16 / 64) + in96 * (4 + 2 * 16 / 96)) / (in64 + in96)
    assert result["result"]["bits_per_weight_linear"] == pytest.approx(expected)
    assert result["result"]["bits_per_weight_model"] > result["result"]["bits_per_weight_linear"]
    assert "model.embed_tokens.weight" in result["result"]["full_precision"]
    assert result["machine"]["cpus"] >= 1 and "timings_s" in result
    run = lowbit_process(  # the real entry point, in its own process
        "eval",
        str(out),
        "--eval-text",
        str(ev),
        "--ctx",
        "64",
        "--windows",
        "4",
        "-o",
        str(tmp_path / "e.json"),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    res = json.loads((tmp_path / "e.json").read_text())["results"]
    assert res["model"]["kl"]["mean"] > 0
    assert res["reference"]["perplexity"] > 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["quantize", "/no/such/model", "-o", "o"], "not found"),
        (["quantize", "{model}", "-o", "o", "--bits", "9"], "from 2 to 8"),
        (["quantize", "{model}", "-o", "o", "--group-size", "-4"], "group size"),
        (["quantize", "{model}", "-o", "o", "--group-size", "0"], "group size"),
        (["quantize", "{model}", "-o", "o", "--act-order", "desc"], "act"),
        (
            ["quantize", "{model}", "-o", "o", "--calib-text", "{short}", "--ctx", "64"],
            "shorter than one window",
        ),
        (["quantize", "{model}", "-o", "o", "--algorithm", "gptqq"], "did you mean 'gptq'"),
        (
            ["eval", "{model}", "--ctx", "4096", "--eval-text", "{eval}", "-o", "e.json"],
            "longer than",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tiny_llama, tmp_path, corpus, args, message):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    before = set(tmp_path.iterdir())
    subs = {"{model}": str(tiny_llama), "{short}": str(short), "{eval}": str(corpus[0])}
    run = lowbit(*[subs.get(a, a) for a in args], cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert set(tmp_path.iterdir()) == before


def test_existing_output_is_refused_before_any_work(tiny_llama, tmp_path):
    (tmp_path / "o").mkdir()
    run = lowbit("quantize", str(tiny_llama), "-o", "o", "--algorithm", "rtn", cwd=tmp_path)
    assert run.returncode == 2 and "--overwrite" in run.stderr


def test_ls_reads_the_registries(tmp_path):
    run = lowbit_process("ls", "architectures", cwd=tmp_path)
    assert run.returncode == 0 and "qwen3" in run.stdout
    run = lowbit("ls", "models", cwd=tmp_path)
    assert "smollm2-135m" in run.stdout


def test_run_compares_four_models(tiny_llama, tmp_path, corpus):
    ev, ca = corpus
    run = lowbit(
        "run",
        str(tiny_llama),
        "--eval-text",
        str(ev),
        "--calib-text",
        str(ca),
        "--ctx",
        "64",
        "--windows",
        "3",
        "--calib-windows",
        "4",
        "-o",
        "r.json",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    names = [row["name"] for row in result["rows"]]
    assert names == ["original (fp32)", "RTN W4 g64", "GPTQ W4 g64", "GPTQ W3 g64"]
    assert result["rows"][0]["kl_mean"] is None
    assert all(row["kl_mean"] > 0 for row in result["rows"][1:])
    assert result["data"]["calibration"]["fingerprint"] != result["data"]["eval"]["fingerprint"]
    assert "torch" in result["libraries"]


def test_calibrating_on_the_evaluation_text_is_refused(tiny_llama, tmp_path, corpus):
    ev, _ = corpus
    run = lowbit(
        "run",
        str(tiny_llama),
        "--eval-text",
        str(ev),
        "--calib-text",
        str(ev),
        "--ctx",
        "64",
        "-o",
        "r.json",
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "is the evaluation text" in run.stderr
    assert not (tmp_path / "r.json").exists()


def test_non_utf8_text_is_named(tiny_llama, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café ".encode("latin-1") * 1000)
    run = lowbit(
        "eval",
        str(tiny_llama),
        "--eval-text",
        str(bad),
        "--ctx",
        "64",
        "-o",
        "e.json",
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "not UTF-8" in run.stderr and str(bad) in run.stderr


def test_a_damaged_saved_model_is_named(tiny_llama, tmp_path, corpus):
    out = tmp_path / "q"
    run = lowbit("quantize", str(tiny_llama), "-o", str(out), "--algorithm", "rtn", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shard = sorted(out.glob("blocks-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    run = lowbit(
        "eval", str(out), "--eval-text", str(corpus[0]), "--ctx", "64", "-o", "e.json", cwd=tmp_path
    )
    assert run.returncode == 2 and "truncated" in run.stderr
    (out / "lowbit.json").write_text("{not json")
    run = lowbit(
        "eval", str(out), "--eval-text", str(corpus[0]), "--ctx", "64", "-o", "e.json", cwd=tmp_path
    )
    assert run.returncode == 2 and "lowbit.json" in run.stderr


def test_a_malformed_plan_file_is_named(tiny_llama, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("lowbit_plan_version: 1\nrules: [{spec: null}]\n")
    run = lowbit("quantize", str(tiny_llama), "-o", "o", "--plan", str(plan), cwd=tmp_path)
    assert run.returncode == 2 and "target" in run.stderr
    plan.write_text("lowbit_plan_version: [1\n")
    run = lowbit("quantize", str(tiny_llama), "-o", "o", "--plan", str(plan), cwd=tmp_path)
    assert run.returncode == 2 and "not valid JSON/YAML" in run.stderr
