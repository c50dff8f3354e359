"""bench/gpu.py, the GPU check, on the CPU: ``--tiny`` runs every step end to end and writes
every figure; the recorder keeps going past a failing step and honours the time budget; the
built-in model's GGUF file survives being cut in halves and joined again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench.gpu_steps import data as gpu_data
from bench.gpu_steps.record import Deadline, OverBudget, Recorder
from bench.gpu_steps.speed import datasheet_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--device", "cpu",
         "--out", str(out), "--work", str(tmp_path),
         "--steps", "builtin,llama8b,profile,moe"],  # ranks, tasks: see bench/gpu.py --help
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "gpu-result.json").read_text())
    assert result["mode"] == "tiny" and result["runtime"]["device"] == "cpu"
    assert {"command", "commit", "machine", "runtime", "elapsed_s"} <= set(result)
    steps = result["steps"]
    assert {k: v["status"] for k, v in steps.items()} == {
        "builtin": "ok",
        "llama8b": "ok",
        "profile": "ok",
        "moe": "ok",
    }, {k: v.get("error") for k, v in steps.items()}

    builtin = steps["builtin"]["figures"]
    for side in ("cpu", "device"):
        fig = builtin[side]
        assert fig["kl_mean"] > 0 and fig["perplexity"] > 1 and 0 < fig["top1_agreement"] <= 1
        assert fig["quantize_s"] > 0 and fig["eval_s"] > 0
        assert 4.25 <= fig["bits_per_weight_linear"] < 4.5  # fp16 scales, groups of 64 or less
    assert builtin["device"]["runtime"]["dtype"] == "float32"
    assert builtin["kl_ratio"] == pytest.approx(1.0, rel=1e-6)  # the same run twice
    assert builtin["kl_within_5pct"] is True

    llama = steps["llama8b"]["figures"]
    assert llama["build"]["shards"] == 3 and llama["build"]["dtype"] == "bfloat16"
    assert llama["layers"] == 14 and len(llama["blocks_s"]) == 2
    assert llama["wall_s"] > 0 and llama["peak"]["rss_bytes"] > 0
    assert llama["protocol"]["calibration"]["windows"] == 4
    assert llama["protocol"]["scheme"] == "GPTQ W4 g128 sym"
    assert llama["within_target"] is True and llama["target_s"] == 240

    moe = steps["moe"]["figures"]  # random tiny Qwen3-MoE, experts fused on disk
    assert moe["layers"] == 2 * (4 + 8 * 3) and moe["experts_per_block"] == 8
    assert moe["finite"] is True and len(moe["blocks_s"]) == 2
    assert moe["extrapolated_full_model_s"] > 0 and moe["unrouted_experts"] >= 0

    profile = steps["profile"]["figures"]
    assert profile["hardware_key"] == "h200" and profile["compute"] == "fp32"
    assert profile["measured_s"]["prefill"] > 0 and profile["measured_s"]["decode_step"] > 0
    for name in ("this_device", "datasheet", "datasheet_eager"):
        assert profile[name]["ratio"]["decode_step"] > 0
        assert isinstance(profile["decode_within_10pct"][name], bool)
    assert (out / "profile.json").is_file()
    summary = (out / "gpu-summary.txt").read_text()
    assert "builtin: ok" in summary and "llama8b: ok" in summary and "profile: ok" in summary
    print(f"tiny GPU check: {wall:.1f} s wall")


def test_recorder_goes_on_after_errors_and_keeps_to_the_budget(tmp_path):
    path = tmp_path / "r.json"
    rec = Recorder(path, {"command": "test"}, Deadline(3600))

    def fails(figures):
        figures["partial"] = 1
        raise RuntimeError("boom")

    def over(figures):
        raise OverBudget("spent")

    rec.run("a", fails)
    rec.run("b", lambda f: f.update(x=2))
    rec.run("c", over)
    rec.run("d", lambda f: f.update(y=3), needs_s=1e9)
    steps = json.loads(path.read_text())["steps"]
    assert steps["a"]["status"] == "error" and "RuntimeError: boom" in steps["a"]["error"]
    assert steps["a"]["figures"] == {"partial": 1} and "Traceback" in steps["a"]["traceback"]
    assert steps["b"] == {**steps["b"], "status": "ok", "figures": {"x": 2}}
    assert steps["c"]["status"] == "over budget"
    assert steps["d"]["status"] == "skipped" and "budget" in steps["d"]["note"]
    assert steps["d"]["figures"] == {}


def test_gguf_halves_are_joined_back_bit_for_bit(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(os.urandom(100_003))
    root, stash = tmp_path / "gpu_data", tmp_path / "stash"
    manifest = gpu_data.split_gguf(gguf, root)
    assert [p["size"] for p in manifest["parts"]] == [50_002, 50_001]
    # the first call carries only half 0: it is stashed
    (root / "gguf-1" / "part").rename(tmp_path / "half1")
    assert gpu_data.stash_parts(root, stash) == ["gguf-0/part"]
    with pytest.raises(FileNotFoundError, match="gguf-1/part"):
        gpu_data.join_builtin(root, stash)
    # the second call carries only half 1, and finds half 0 in the stash
    (root / "gguf-0" / "part").unlink()
    (tmp_path / "half1").rename(root / "gguf-1" / "part")
    monkeypatch.setattr(sys, "path", list(sys.path))
    joined = gpu_data.join_builtin(root, stash)
    assert joined.read_bytes() == gguf.read_bytes()
    assert joined.parent.name == gpu_data.PACKAGE and str(joined.parent.parent) in sys.path
    # a damaged half is not used
    (stash / "gguf-1" / "part").write_bytes(b"x" * 50_001)
    (root / "gguf-1" / "part").write_bytes(b"y" * 50_001)
    assert gpu_data.stash_parts(root, stash) == ["gguf-0/part"]


@pytest.mark.parametrize(
    ("name", "key"),
    [("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100-sxm"),
     ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
     ("CPU (2 cores)", "h200")],
)  # fmt: skip
def test_datasheet_entry_by_device_name(name, key):
    from lowbit.perf.hardware import get_hardware

    assert datasheet_key(name) == key
    get_hardware(key)  # a real entry
