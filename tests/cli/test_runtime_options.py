"""The runtime options on the command line: bad requests are refused with exit code 2, a clear
message and nothing written; a reference cache is reused, and refused for another text."""

from __future__ import annotations

import pytest
import torch

from tests.cli.test_commands import lowbit


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["quantize", "eval"])
def test_cuda_without_a_gpu_is_refused_before_any_work(tiny_llama, tmp_path, command):
    args = {"quantize": ["-o", "q"], "eval": ["-o", "e.json"], "run": ["-o", "r.json"]}[command]
    run = lowbit(command, str(tiny_llama), *args, "--device", "cuda", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "no CUDA device" in run.stderr and "--device cpu" in run.stderr
    assert "Traceback" not in run.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--dtype", "float8", "unknown dtype 'float8'"),
        ("--device", "tpu", "unknown device 'tpu'"),
        ("--max-memory", "lots", "--max-memory 'lots' is not a size"),
        ("--offload", "disk", "unknown offload"),
    ],
)
def test_malformed_runtime_options_are_named(tiny_llama, tmp_path, option, value, message):
    run = lowbit("quantize", str(tiny_llama), "-o", "q", option, value, cwd=tmp_path)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not list(tmp_path.iterdir())


def test_a_reference_cache_is_reused_and_refused_for_another_text(tiny_llama, tmp_path, corpus):
    ev, ca = corpus
    quantize = ["quantize", str(tiny_llama), "-o", "q", "--algorithm", "rtn"]
    assert lowbit(*quantize, cwd=tmp_path).returncode == 0
    cache = tmp_path / "ref.lbref"
    base = ["eval", "q", "--ctx", "64", "--windows", "3", "--reference-cache", str(cache)]
    run = lowbit(*base, "--eval-text", str(ev), "-o", "a.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert cache.is_file()
    run = lowbit(*base, "--eval-text", str(ev), "-o", "b.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "a.json").is_file() and (tmp_path / "b.json").is_file()
    run = lowbit(*base, "--eval-text", str(ca), "-o", "c.json", cwd=tmp_path)
    assert run.returncode == 2 and "text fingerprint" in run.stderr and str(cache) in run.stderr
    assert not (tmp_path / "c.json").exists()
