"""`lowbit perf` and `lowbit profile` end to end on a tiny model; bad input exits 2."""

from __future__ import annotations

import json

from tests.cli.test_commands import lowbit


def test_perf_writes_result_and_report(tiny_llama, tmp_path):
    run = lowbit(
        "perf", str(tiny_llama), "--hw", "a100-40gb", "--tp", "2", "--batch", "4",
        "--prompt", "64", "--gen", "8", "-o", "p.json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "p.json").read_text())
    est = result["estimate"]
    assert est["ttft_s"] > 0 and est["tpot_s"] > 0 and est["fits"]
    assert result["layout"]["tp"] == 2 and result["hardware"]["key"] == "a100-40gb"
    assert {r["name"] for r in est["decode_ops"]} >= {
        "q_proj",
        "attention",
        "all_reduce",
        "lm_head",
    }
    assert result["batch_sweep"][0]["batch"] == 1
    html = (tmp_path / "p.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 3


def test_profile_compares_with_this_machine(tiny_llama, tmp_path):
    run = lowbit(
        "profile", str(tiny_llama), "--prompt", "16", "--gen", "4", "-o", "prof.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "prof.json").read_text())
    assert result["end_to_end"]["decode_step"]["measured_s"] > 0
    assert result["end_to_end"]["prefill"]["predicted_s"] > 0
    assert result["hardware"]["key"] == "this"
    assert (tmp_path / "prof.html").is_file()


def test_perf_bad_input(tiny_llama, tmp_path):
    run = lowbit("perf", str(tiny_llama), "--hw", "h100-sxn", cwd=tmp_path)
    assert run.returncode == 2 and "did you mean 'h100-sxm'" in run.stderr
    run = lowbit("perf", str(tiny_llama), "--tp", "3", cwd=tmp_path)
    assert run.returncode == 2 and "does not divide the 4 attention heads" in run.stderr
    assert not list(tmp_path.glob("*.json"))
