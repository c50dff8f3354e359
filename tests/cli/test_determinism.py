"""Determinism (issue 18): the same command twice gives bit-identical codes, scales and
figures, and every result records the content hash of what it produced."""

from __future__ import annotations

import json

from lowbit._io import tensors_sha256
from tests.cli.test_commands import lowbit

GPTQ = ("--algorithm", "gptq", "--bits", "4", "--group-size", "32", "--calib-windows", "4",
        "--ctx", "48")  # fmt: skip


def _hashes(path) -> dict[str, str]:
    return json.loads(path.read_text())["content_sha256"]


def test_gptq_twice_gives_identical_hashes(tiny_llama, tmp_path, corpus):
    ca = str(corpus[1])
    for name in ("a", "b"):
        run = lowbit("quantize", str(tiny_llama), "-o", name, *GPTQ, "--calib-text", ca,
                     cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
    a, b = _hashes(tmp_path / "a.result.json"), _hashes(tmp_path / "b.result.json")
    assert a == b and set(a) == {"figures", "tensors"}
    assert a["tensors"] == tensors_sha256(tmp_path / "a")  # the hash is of the tensors written
    run = lowbit("quantize", str(tiny_llama), "-o", "c", *GPTQ, "--calib-text", ca, "--seed",
                 "1", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    c = _hashes(tmp_path / "c.result.json")
    assert c["tensors"] != a["tensors"]  # other calibration windows: other codes
    for name in ("a", "b"):  # the same command twice (the second reads the cached reference)
        run = lowbit("eval", "a", "--eval-text", str(corpus[0]), "--windows", "2", "--ctx",
                     "48", "-o", f"{name}.eval.json", cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
    ea, eb = (json.loads((tmp_path / f"{n}.eval.json").read_text()) for n in ("a", "b"))
    assert ea["content_sha256"] == eb["content_sha256"]
    assert ea["results"]["model"]["perplexity"] == eb["results"]["model"]["perplexity"]
