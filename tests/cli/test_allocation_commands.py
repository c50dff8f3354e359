"""sensitivity → plan → quantize → pareto through the CLI on a tiny model; bad input leaves
nothing behind."""

from __future__ import annotations

import json

import pytest

from lowbit.plan import Plan
from tests.cli.test_commands import lowbit

CALIB = ["--calib-windows", "4", "--ctx", "32"]


@pytest.fixture()
def table(tiny_llama, tmp_path, corpus):
    _, ca = corpus
    out = tmp_path / "sens.json"
    run = lowbit(
        "sensitivity",
        str(tiny_llama),
        "--bits",
        "2",
        "--bits",
        "4",
        "--bits",
        "8",
        "--group-size",
        "16",
        "--calib-text",
        str(ca),
        *CALIB,
        "--probe-ctx",
        "16",
        "-o",
        str(out),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    return out


def test_sensitivity_writes_table_csv_and_report(table, tiny_llama):
    data = json.loads(table.read_text())
    assert data["lowbit_sensitivity_version"] == 1
    assert len(data["entries"]) == 2 * 7 * 3
    assert [m["label"] for m in data["menu"]] == [
        "GPTQ W2 g16 sym",
        "GPTQ W4 g16 sym",
        "GPTQ W8 g16 sym",
    ]
    assert len(table.with_suffix(".csv").read_text().splitlines()) == 1 + 2 * 7 * 3
    html = table.with_suffix(".html").read_text()
    assert html.count("<svg") >= 5 and "Rank correlation" in html
    assert not table.with_name("sens.json.partial").exists()


def test_plan_then_quantize_meets_the_budget(table, tiny_llama, tmp_path, corpus):
    _, ca = corpus
    plan = tmp_path / "plan.yaml"
    run = lowbit(
        "plan",
        str(tiny_llama),
        "--table",
        str(table),
        "--avg-bits",
        "4.5",
        "-o",
        str(plan),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    Plan.load(plan)
    run = lowbit(
        "quantize",
        str(tiny_llama),
        "--plan",
        str(plan),
        "--calib-text",
        str(ca),
        *CALIB,
        "-o",
        str(tmp_path / "q"),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "q.result.json").read_text())
    assert result["result"]["bits_per_weight_linear"] <= 4.5


def test_plan_bad_input_writes_nothing(table, tiny_llama, tmp_path):
    cases = [
        (["--avg-bits", "1"], "smallest achievable is 3.0000 bits per weight"),
        (["--max-bytes", "sixty"], "is not a size"),
        (["--avg-bits", "4", "--max-bytes", "1MB"], "exactly one budget"),
        (["--avg-bits", "4", "--pin", "model.layers.0.mlp.down_prj=1"], "did you mean"),
        (["--avg-bits", "4", "--pin", "model.layers.0.mlp.down_proj"], "LAYER=SPEC"),
        (["--avg-bits", "4", "--pin", "model.layers.0.mlp.down_proj=W9"], "not a spec of the menu"),
        (["--avg-bits", "4", "--metric", "mse"], "unknown loss metric"),
    ]
    for args, message in cases:
        out = tmp_path / "bad.yaml"
        run = lowbit(
            "plan", str(tiny_llama), "--table", str(table), *args, "-o", str(out), cwd=tmp_path
        )
        assert run.returncode == 2, (args, run.stderr)
        assert message in run.stderr, (args, run.stderr)
        assert not out.exists()


def test_table_of_another_model_is_refused(table, tiny_root, tmp_path):
    from tests.helpers.tiny import make_tiny_model

    other = make_tiny_model(tiny_root, "qwen3")
    run = lowbit(
        "plan",
        str(other),
        "--table",
        str(table),
        "--avg-bits",
        "4",
        "-o",
        str(tmp_path / "p.yaml"),
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "fingerprint" in run.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_interrupted_sensitivity_resumes(tiny_llama, tmp_path, corpus):
    _, ca = corpus
    args = [
        "sensitivity",
        str(tiny_llama),
        "--bits",
        "4",
        "--group-size",
        "16",
        "--calib-text",
        str(ca),
        *CALIB,
        "--probe-ctx",
        "16",
        "-o",
        str(tmp_path / "s.json"),
    ]
    partial = tmp_path / "s.json.partial"
    partial.write_text(json.dumps({"key": {"other": 1}, "entries": []}))
    run = lowbit(*args, cwd=tmp_path)
    assert run.returncode == 2 and "--resume" in run.stderr
    run = lowbit(*args, "--resume", cwd=tmp_path)
    assert run.returncode == 2 and "another model, menu" in run.stderr
    partial.unlink()
    assert lowbit(*args, cwd=tmp_path).returncode == 0
    assert not (tmp_path / "s.json.partial").exists()


def test_pareto_sweep_and_resume(table, tiny_llama, tmp_path, corpus):
    ev, ca = corpus
    out = tmp_path / "sweep"
    args = [
        "pareto",
        str(tiny_llama),
        "--table",
        str(table),
        "-o",
        str(out),
        "--budget",
        "3.5",
        "--budget",
        "6",
        "--uniform-bits",
        "4",
        "--uniform-group",
        "16",
        "--eval-text",
        str(ev),
        "--windows",
        "3",
        "--calib-text",
        str(ca),
        *CALIB,
    ]
    run = lowbit(*args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads((out / "pareto.json").read_text())
    names = [p["name"] for p in result["points"]]
    assert names[:3] == ["uniform GPTQ W4 g16 sym", "exact 3.5", "llamacpp 3.5"]
    for point in result["points"]:
        if point["budget"] is not None:
            assert point["bits_per_weight_linear"] <= point["budget"] + 1e-9
    assert result["additivity"]["points"] >= 3
    assert (out / "pareto.html").read_text().count("<svg") == 2
    again = lowbit(*args, cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = lowbit(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0 and "already measured" in resumed.stderr
