"""A model larger than the memory a process may use is quantized and evaluated inside a hard
cgroup memory limit, block by block; and a budget below one block's needs is refused up front,
saying how much one block needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CAP = 700 * 2**20  # the whole model alone (327 MB in fp32) plus the interpreter would not fit


def _cgroup() -> Path | None:
    """A fresh cgroup v1 memory group, when this machine lets us make one (root)."""
    if not (CGROUP_V1 / "cgroup.procs").is_file() or not os.access(CGROUP_V1, os.W_OK):
        return None
    group = CGROUP_V1 / f"lowbit-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(CAP))
    except OSError:
        return None
    return group


def _run_capped(group: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = f'echo $$ > {group}/cgroup.procs && exec "$0" -m lowbit.cli.main "$@"'
    return subprocess.run(
        ["sh", "-c", script, sys.executable, *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def big_tiny(tiny_root: Path) -> Path:
    """A random Llama whose fp32 weights (327 MB) do not fit beside the interpreter under the
    cap, saved as bf16 shards (164 MB on disk), with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from tests.helpers.tiny import VOCAB, _tokenizer_dir, make_tiny_model

    out = tiny_root / "capped"
    if (out / "config.json").is_file():
        return out
    make_tiny_model(tiny_root, "llama")  # the tokenizer
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=24,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="100MB")
    AutoTokenizer.from_pretrained(_tokenizer_dir(tiny_root)).save_pretrained(out)
    return out


def test_quantize_and_evaluate_under_a_hard_memory_cap(big_tiny, tmp_path):
    group = _cgroup()
    if group is None:
        pytest.skip("needs a writable cgroup v1 memory controller (root) to impose a hard cap")
    from lowbit.evaluation.text import BuiltinText, load_text

    text = tmp_path / "text.txt"
    text.write_text(load_text(BuiltinText("python-docs", "calib"))[:20_000])
    try:
        run = _run_capped(
            group,
            *("quantize", str(big_tiny), "-o", "q", "--algorithm", "gptq", "--bits", "4"),
            *("--group-size", "64", "--calib-text", str(text), "--calib-windows", "2"),
            *("--ctx", "64"),
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        run = _run_capped(
            group,
            *("eval", "q", "--eval-text", str(text), "--windows", "2", "--ctx", "64"),
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        assert int((group / "memory.failcnt").read_text()) >= 0
    finally:
        group.rmdir()
    assert peak <= CAP  # the cgroup's own peak: everything charged to it, page cache included
    quantized = json.loads((tmp_path / "q.result.json").read_text())
    assert quantized["result"]["execution"]["runtime"]["memory_source"].startswith("cgroup")
    # the whole model in fp32 (24 blocks × 3.4 M parameters × 4 bytes = 327 MB) beside the
    # interpreter, torch and transformers (about 450 MB) would not fit under the cap
    blocks = quantized["result"]["execution"]["needs"]["weights"] * 24
    assert blocks > CAP - 450 * 2**20
    result = json.loads((tmp_path / "lowbit-eval.json").read_text())["results"]
    assert result["model"]["kl"]["mean"] > 0 and result["reference"]["perplexity"] > 1


def test_a_budget_below_one_block_is_refused_with_its_needs(big_tiny, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "lowbit.cli.main", "quantize", str(big_tiny), "-o", "q"]
        + ["--algorithm", "gptq", "--calib-windows", "2", "--ctx", "32", "--max-memory", "20MB"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "needs about" in run.stderr and "for one block" in run.stderr
    assert "weights" in run.stderr and "--max-memory" in run.stderr
    assert "Traceback" not in run.stderr
    assert not list(tmp_path.iterdir())  # nothing written
