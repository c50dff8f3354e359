"""``lowbit inspect`` and ``lowbit ls architectures``: what discovery found, and each stage's
support with the reason for every refusal."""

from __future__ import annotations

import json
import shutil

from lowbit.api.inspect import PROVEN, STAGES
from tests.cli.test_commands import lowbit
from tests.helpers.tiny import make_tiny_model


def test_inspect_a_mixture_of_experts_with_dense_first_blocks(tiny_root, tmp_path):
    path = make_tiny_model(tiny_root, "deepseek_v3")
    run = lowbit("inspect", str(path), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["origin"] == "discovered" and found["blocks"] == 3
    dense, moe = found["kinds"]
    assert dense["blocks"] == [0] and moe["blocks"] == [1, 2]
    assert moe["routers"] == ["mlp.gate"] and moe["experts"] == ["mlp.experts"]
    assert "mlp.experts.7.down_proj" in [n for g in moe["groups"] for n in g]
    assert "multi-head latent attention" in moe["traits"]
    assert found["stages"]["gguf"].startswith("no: ")
    assert set(found["stages"]) == set(STAGES)


def test_inspect_reads_a_config_without_weights(tiny_root, tmp_path):
    src = make_tiny_model(tiny_root, "gemma2")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    run = lowbit("inspect", str(tmp_path / "config.json"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "(1 + w)" in run.stdout and "pre_feedforward_layernorm" in run.stdout


def test_inspect_names_a_bad_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    run = lowbit("inspect", str(tmp_path / "config.json"), cwd=tmp_path)
    assert run.returncode == 2 and "config.json" in run.stderr


def test_ls_architectures_is_a_table_of_families_and_stages(tmp_path):
    run = lowbit("ls", "architectures", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for family in PROVEN:
        assert family in run.stdout
    assert "gguf: the GGUF writer maps" in run.stdout  # each refusal with its reason
