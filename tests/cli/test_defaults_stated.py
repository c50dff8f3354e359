"""No silent fallbacks (issue 18): a default that replaces a missing input (the built-in text
for calibration or evaluation, the reference of a saved model) is stated in the console output
and recorded in the result."""

from __future__ import annotations

import json

from tests.cli.test_commands import lowbit

FAST = ("--calib-windows", "2", "--ctx", "32")


def test_the_default_calibration_text_is_stated_and_recorded(tiny_llama, tmp_path, corpus):
    run = lowbit("quantize", str(tiny_llama), "-o", "q", *FAST, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = " ".join(run.stderr.split())
    assert "note: no --calib-text given: calibrated on the default text builtin:python-docs" in out
    calib = json.loads((tmp_path / "q.result.json").read_text())["data"]["calibration"]
    assert calib["source_given"] is False and "no --calib-text given" in calib["default_note"]
    run = lowbit("quantize", str(tiny_llama), "-o", "q2", *FAST, "--calib-text", str(corpus[1]),
                 cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "note:" not in run.stderr
    calib = json.loads((tmp_path / "q2.result.json").read_text())["data"]["calibration"]
    assert calib["source_given"] is True and "default_note" not in calib
    run = lowbit("eval", "q", "--windows", "2", "--ctx", "32", "-o", "e.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = " ".join(run.stderr.split())
    assert "no --eval-text given: evaluated on the default text" in out
    assert f"no --reference given: KL divergence against {tiny_llama}" in out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["data"]["eval"]["source_given"] is False
    assert result["config"]["reference_used"].endswith("(default: the model q was quantized from)")
