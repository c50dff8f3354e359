"""SqueezeLLM and GPTQ in non-integer formats end to end on the tiny Llama: quantized block by
block with calibration, saved, reloaded with identical logits, sparse outliers included."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import ActOrder, GPTQConfig, RTNConfig, SqueezeLLMConfig
from lowbit.formats import LUTFormat, MXFormat, NF4Format, NVFP4Format, PerChannel, PerGroup
from lowbit.models.fakequant import apply_weights
from lowbit.models.quantize import PipelineConfig, quantize_model
from lowbit.models.saving import load_quantized, save_quantized
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, uniform_plan

SPECS = [
    LayerSpec(LUTFormat(3), PerChannel(), SqueezeLLMConfig(outlier_fraction=0.01)),
    LayerSpec(NF4Format(), PerGroup(16), GPTQConfig(act_order=ActOrder.GROUP_AWARE)),
    LayerSpec(MXFormat("fp4_e2m1"), PerGroup(32), GPTQConfig(act_order=ActOrder.GROUP)),
    LayerSpec(NVFP4Format(), PerGroup(16), GPTQConfig(act_order=ActOrder.OFF)),
    LayerSpec(LUTFormat(3), PerChannel(), GPTQConfig()),
]


def _calib(handle, n=8, ctx=32):
    torch.manual_seed(0)
    return torch.randint(0, handle.config.vocab_size, (n, ctx))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_save_load_identical_logits(tiny_llama, tmp_path, spec):
    handle = resolve_model(str(tiny_llama))
    ids = _calib(handle)
    qm = quantize_model(handle, uniform_plan(spec), ids, pipeline=PipelineConfig(chunk_size=4))
    evaluated = apply_weights(handle.load_model(), qm.weights)
    model, weights, _ = load_quantized(save_quantized(qm, tmp_path / "q", {"test": True}))
    with torch.inference_mode():
        assert torch.equal(evaluated(input_ids=ids).logits, model(input_ids=ids).logits)
    for name, qw in qm.weights.items():
        assert torch.equal(weights[name].dequantize(), qw.dequantize())
        assert weights[name].n_bits() == qw.n_bits()
        out_f, in_f = qw.shape
        assert qw.bits_per_weight() == pytest.approx(spec.bits_per_weight(out_f, in_f), rel=1e-12)
        if isinstance(spec.algorithm, SqueezeLLMConfig):
            assert qw.outliers is not None
            assert qw.outliers[0].numel() == spec.algorithm.outlier_count(out_f * in_f)
            assert torch.equal(weights[name].outliers[0], qw.outliers[0])


def test_squeezellm_beats_rtn_lut_on_the_model_output(tiny_llama):
    """Measured on the calibration windows: the last hidden state's error under SqueezeLLM
    (Hessian-weighted tables, 1% outliers) is below RTN with the same 3-bit tables."""
    handle = resolve_model(str(tiny_llama))
    ids = _calib(handle, n=16, ctx=48)
    reference = handle.load_model()
    with torch.inference_mode():
        ref = reference(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    errors = {}
    for name, algo in (
        ("rtn", RTNConfig()),
        ("squeezellm", SqueezeLLMConfig(outlier_fraction=0.01)),
    ):
        qm = quantize_model(handle, uniform_plan(LayerSpec(LUTFormat(3), PerChannel(), algo)), ids)
        model = apply_weights(handle.load_model(), qm.weights)
        with torch.inference_mode():
            out = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        errors[name] = float((out - ref).pow(2).mean())
    assert errors["squeezellm"] < errors["rtn"]
