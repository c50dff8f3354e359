"""`lowbit quantize --format/--clipping`: any registered format from the command line, saved
and evaluated; bad names get suggestions and write nothing."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_commands import lowbit

EVAL = ("--eval-text", "builtin:python-docs", "--windows", "2", "--ctx", "64")
CALIB = ("--calib-windows", "4", "--ctx", "64")


@pytest.mark.parametrize(
    ("args", "bits"),
    [
        (("--format", "nf4", "--group-size", "32", "--algorithm", "rtn", "--clipping", "mse"),
         4 + 16 / 32),
        (("--format", "mxfp4", "--group-size", "32", "--algorithm", "gptq"), 4 + 8 / 32),
        (("--format", "lut", "--bits", "3", "--granularity", "channel",
          "--algorithm", "squeezellm"), None),
        # 64-wide rows: Q4_K falls back to Q5_0 (5.5 bits per weight), as llama.cpp does
        (("--format", "q4_k", "--group-size", "256", "--algorithm", "gptq"), 5.5),
    ],
)  # fmt: skip
def test_formats_from_the_command_line(tiny_llama, tmp_path, args, bits):
    calib = () if "rtn" in args else CALIB  # RTN refuses calibration options (it would ignore them)
    run = lowbit("quantize", str(tiny_llama), "-o", "q", *args, *calib, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "q.result.json").read_text())["result"]
    if bits is not None:
        assert result["bits_per_weight_linear"] == pytest.approx(bits)
    run = lowbit("eval", "q", *EVAL, "-o", "e.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    kl = json.loads((tmp_path / "e.json").read_text())["results"]["model"]["kl"]["mean"]
    assert 0 < kl < 1


def test_bad_format_or_clipping_writes_nothing(tiny_llama, tmp_path):
    run = lowbit("quantize", str(tiny_llama), "-o", "q", "--format", "nf5", cwd=tmp_path)
    assert run.returncode == 2 and "did you mean 'nf4'" in run.stderr
    run = lowbit("quantize", str(tiny_llama), "-o", "q", "--clipping", "mse", "--algorithm",
                 "gptq", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2 and "applies to RTN" in run.stderr
    assert not (tmp_path / "q").exists()
