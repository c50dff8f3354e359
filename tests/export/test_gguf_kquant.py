"""GGUF export of k-quant plans on a tiny Llama whose down projection is 256 wide (true Q4_K,
Q5_K, Q6_K super-blocks) and whose other linears are 64 wide (they fall back by name): every
written tensor, read back by gguf's reader and dequantizer, is the weight lowbit evaluated;
transformers' GGUF loader gives the same logits; each fallback is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from lowbit import api
from lowbit.algorithms import GPTQConfig, RTNConfig
from lowbit.errors import ExportError
from lowbit.export.gguf_blocks import permute_rows
from lowbit.formats import GGMLFormat, PerGroup
from lowbit.plan import LayerSpec, uniform_plan
from tests.export.shared import logits_of, quantized
from tests.helpers.tiny import VOCAB, config_for, save_tiny_model

FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
HF_TO_GGUF = {
    "self_attn.q_proj": ("attn_q", 4),
    "self_attn.k_proj": ("attn_k", 2),
    "self_attn.v_proj": ("attn_v", None),
    "self_attn.o_proj": ("attn_output", None),
    "mlp.gate_proj": ("ffn_gate", None),
    "mlp.up_proj": ("ffn_up", None),
    "mlp.down_proj": ("ffn_down", None),
}


@pytest.fixture(scope="module")
def wide_llama(tiny_root: Path) -> Path:
    """The tiny Llama with one block and a 256-wide MLP."""
    config = config_for("llama")
    config.intermediate_size, config.num_hidden_layers = 256, 1
    return save_tiny_model(tiny_root, "llama-ffn256", config)


def _plan(kind: str, algorithm=None):
    return uniform_plan(LayerSpec(GGMLFormat(kind), PerGroup(256), algorithm or RTNConfig()))


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


@pytest.mark.parametrize("kind", ["q4_k", "q5_k", "q6_k"])
def test_each_tensor_reads_back_as_evaluated(wide_llama, tmp_path, kind):
    qm, model, _ = quantized(wide_llama, _plan(kind))
    report = api.export(qm, model, "gguf", tmp_path / "m.gguf")
    asked, fallback = kind.upper(), FALLBACK[kind.upper()]
    expected = {n: (asked if n.endswith("down_proj") else fallback) for n in qm.weights}
    assert report.layers == expected
    assert report.max_weight_error == 0.0
    assert any(f"6 layer(s) asked as {asked} were written as {fallback}" in n for n in report.notes)
    tensors = {t.name: t for t in GGUFReader(tmp_path / "m.gguf").tensors}
    for hf, (name, heads) in HF_TO_GGUF.items():
        t = tensors[f"blk.0.{name}.weight"]
        assert t.tensor_type.name == expected[f"model.layers.0.{hf}"]
        want = qm.weights[f"model.layers.0.{hf}"].dequantize().numpy()
        want = permute_rows(want, heads) if heads else want
        assert np.array_equal(dequantize(t.data, t.tensor_type), want), hf


def test_gptq_q4_k_loads_with_identical_logits(wide_llama, tmp_path):
    calib = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    qm, model, ref = quantized(wide_llama, _plan("q4_k", GPTQConfig()), calib)
    assert qm.weights["model.layers.0.mlp.down_proj"].fmt == GGMLFormat("q4_k")
    report = api.export(qm, model, "gguf", tmp_path / "m.gguf")
    assert report.max_weight_error == 0.0
    assert torch.equal(logits_of(_load_gguf(tmp_path / "m.gguf")), ref)


def test_act_order_group_is_refused_by_name(wide_llama, tmp_path):
    from lowbit.algorithms import ActOrder

    calib = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(2))
    qm, model, _ = quantized(wide_llama, _plan("q6_k", GPTQConfig(act_order=ActOrder.GROUP)), calib)
    with pytest.raises(ExportError, match="mlp.down_proj: GPTQ act-order 'group'"):
        api.export(qm, model, "gguf", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_saved_and_loaded_with_each_fallback_kept(wide_llama, tmp_path):
    """The saved model stores each layer's own type (fallbacks included) and loads bit-exact."""
    qm, _, _ = quantized(wide_llama, _plan("q5_k"))
    api.save(qm, tmp_path / "saved", {})
    back, _ = api.load_saved(tmp_path / "saved")
    for name, qw in qm.weights.items():
        loaded = back.weights[name]
        assert loaded.fmt == qw.fmt and loaded.granularity == qw.granularity
        assert torch.equal(loaded.dequantize(), qw.dequantize()), name
    assert back.weights["model.layers.0.mlp.up_proj"].fmt == GGMLFormat("q5_1")
