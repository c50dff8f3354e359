"""Smoothing folded into models: the function is unchanged, AWQ beats RTN end to end, and
the rescaled norms travel with the quantized model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lowbit.algorithms import AWQConfig, RTNConfig, SmoothQuantConfig
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, NVFP4Format, PerGroup
from lowbit.models.arch import ARCHITECTURES
from lowbit.models.fakequant import apply_weights
from lowbit.models.quantize import quantize_model
from lowbit.models.smoothing import fold_scales, load_smoothed, pair_applies
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, uniform_plan


@pytest.fixture(scope="module")
def tiny_llama_outliers(tiny_llama, tmp_path_factory):
    """The tiny Llama with 4 input channels of every block's norms scaled by 30: the few large
    activation channels trained LLMs have and AWQ protects."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    channels = torch.randperm(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[channels[:4]] *= 30.0
    out = tmp_path_factory.mktemp("outliers") / "llama"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(out)
    return out


def _ids(vocab: int, n: int = 8, ctx: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, ctx), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def _kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    p, q = ref.log_softmax(-1), out.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def _fold_random(model, arch, seed: int = 0) -> int:
    """Fold random scales in [0.25, 4] into every applicable pair; returns how many."""
    g = torch.Generator().manual_seed(seed)
    folded = 0
    for block in model.get_submodule(arch.blocks_path):
        for pair in arch.smoothing_pairs:
            if pair_applies(block, pair):
                n = block.get_submodule(pair.linears[0]).weight.shape[1]
                fold_scales(block, pair, 4.0 ** (2 * torch.rand(n, generator=g) - 1))
                folded += 1
    return folded


def _with_outliers(model, arch):
    """Make the tiny model's norms produce outlier channels, as real LLMs do."""
    with torch.no_grad():
        for block in model.get_submodule(arch.blocks_path):
            for pair in arch.smoothing_pairs:
                if not pair.prev_is_linear:
                    block.get_submodule(pair.prev).weight[:3] *= 20.0


def test_folding_scales_leaves_the_model_unchanged(tiny_any):
    handle = resolve_model(str(tiny_any))
    model = handle.load_model()
    ids = _ids(handle.config.vocab_size)
    ref = _logits(model, ids)
    folded = _fold_random(model, handle.arch)
    assert folded >= 3 * handle.config.num_hidden_layers
    torch.testing.assert_close(_logits(model, ids), ref, atol=1e-5, rtol=1e-5)


def test_folding_leaves_phi3_unchanged():
    from transformers import AutoModelForCausalLM, Phi3Config

    config = Phi3Config(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    ids = _ids(320)
    ref = _logits(model, ids)
    assert _fold_random(model, ARCHITECTURES.get("phi3")) == 4
    torch.testing.assert_close(_logits(model, ids), ref, atol=1e-5, rtol=1e-5)


def test_value_to_output_pair_is_skipped_under_grouped_query_attention(tiny_root):
    from tests.helpers.tiny import make_tiny_model

    for family, applies in (("llama", False), ("opt", True)):  # tiny llama: 2 KV heads of 4
        handle = resolve_model(str(make_tiny_model(tiny_root, family)))
        block = handle.load_model().get_submodule(f"{handle.arch.blocks_path}.0")
        value = [p for p in handle.arch.smoothing_pairs if p.prev == "self_attn.v_proj"]
        assert pair_applies(block, value[0]) is applies


def test_smoothquant_leaves_the_model_unchanged_and_flattens_outliers(tiny_any, tmp_path):
    handle = resolve_model(str(tiny_any))
    model = handle.load_model()
    _with_outliers(model, handle.arch)
    model.save_pretrained(tmp_path / "outliers")
    handle.load_tokenizer().save_pretrained(tmp_path / "outliers")
    handle = resolve_model(str(tmp_path / "outliers"))
    ids = _ids(handle.config.vocab_size)
    ref = _logits(model, ids)
    before = _norm_output_absmax(model, handle.arch, ids)
    plan = uniform_plan(None)
    qm = quantize_model(handle, plan, ids, smoothquant=SmoothQuantConfig(0.5))
    changed = dict(qm.smoothed)
    pairs = [p for p in handle.arch.smoothing_pairs if not p.prev_is_linear]
    modules = {m for p in pairs for m in (p.prev, *p.linears)}
    prefix = len(handle.arch.blocks_path) + 1
    assert {k[prefix:].split(".", 1)[1].rsplit(".", 1)[0] for k in changed} == modules
    load_smoothed(model, changed)
    torch.testing.assert_close(_logits(model, ids), ref, atol=1e-4, rtol=1e-4)
    after = _norm_output_absmax(model, handle.arch, ids)
    assert after < before / 3


def _norm_output_absmax(model, arch, ids) -> float:
    """The largest |x| entering the first linear of any norm pair."""
    seen = []
    hooks = [
        block.get_submodule(p.linears[0]).register_forward_pre_hook(
            lambda m, a: seen.append(float(a[0].abs().max()))
        )
        for block in model.get_submodule(arch.blocks_path)
        for p in arch.smoothing_pairs
        if not p.prev_is_linear
    ]
    _logits(model, ids)
    for h in hooks:
        h.remove()
    return max(seen)


@pytest.mark.parametrize(
    ("fmt", "granularity"),
    [
        pytest.param(IntFormat(3), PerGroup(16), id="int3"),
        pytest.param(IntFormat(4), PerGroup(16), id="int4"),
        pytest.param(NVFP4Format(), PerGroup(16), id="nvfp4"),
    ],
)
def test_awq_beats_rtn_end_to_end(tiny_llama_outliers, fmt, granularity):
    """KL divergence to the original model, on held-out windows, with salient input channels
    (AWQ's premise: a random model has none, and there RTN's extreme rule already wins)."""
    handle = resolve_model(str(tiny_llama_outliers))
    calib, held_out = _ids(handle.config.vocab_size, 16, 48), _ids(320, 8, 48, seed=1)
    ref = _logits(handle.load_model(), held_out)
    kl = {}
    for algo in (RTNConfig(), AWQConfig()):
        qm = quantize_model(handle, uniform_plan(LayerSpec(fmt, granularity, algo)), calib)
        model = apply_weights(load_smoothed(handle.load_model(), qm.smoothed), qm.weights)
        kl[algo.name] = _kl(ref, _logits(model, held_out))
    assert kl["awq"] < 0.5 * kl["rtn"]


def test_awq_records_and_saved_model_carry_the_smoothing(tiny_any, tmp_path):
    from lowbit.models.saving import load_quantized, save_quantized

    handle = resolve_model(str(tiny_any))
    plan = uniform_plan(LayerSpec(IntFormat(4), PerGroup(16), AWQConfig(grid=5)))
    qm = quantize_model(handle, plan, _ids(handle.config.vocab_size, 6, 32))
    n_blocks = handle.config.num_hidden_layers
    heads = handle.config.num_attention_heads
    gqa = getattr(handle.config, "num_key_value_heads", heads) != heads
    per_block = len(handle.arch.smoothing_pairs) - gqa
    assert len(qm.smoothing) == n_blocks * per_block
    for rec in qm.smoothing:
        assert rec.loss <= rec.loss_rtn and rec.alpha in [i / 5 for i in range(5)]
    assert all(k.endswith((".weight", ".bias")) for k in qm.smoothed) and qm.smoothed
    ids = _ids(handle.config.vocab_size, 2, 16, seed=3)
    fake = apply_weights(load_smoothed(handle.load_model(), qm.smoothed), qm.weights)
    saved, _, _ = load_quantized(save_quantized(qm, tmp_path / "q", {}))
    torch.testing.assert_close(_logits(saved, ids), _logits(fake, ids), atol=0, rtol=0)


def test_smoothquant_in_the_driver_keeps_an_unquantized_model(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    ids = _ids(handle.config.vocab_size)
    qm = quantize_model(handle, uniform_plan(None), ids, smoothquant=SmoothQuantConfig(0.8))
    assert not qm.weights and qm.smoothed
    model = load_smoothed(handle.load_model(), qm.smoothed)
    torch.testing.assert_close(
        _logits(model, ids), _logits(handle.load_model(), ids), atol=1e-4, rtol=1e-4
    )


def test_awq_on_an_architecture_without_pairs_is_refused(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    block = dataclasses.replace(handle.arch.uniform, smoothing_pairs=())
    bare = dataclasses.replace(handle.arch, name="bare", blocks=(block,) * len(handle.arch.blocks))
    handle = dataclasses.replace(handle, arch=bare)
    plan = uniform_plan(LayerSpec(IntFormat(4), PerGroup(16), AWQConfig()))
    with pytest.raises(ConfigError, match="AWQ needs smoothing pairs.*'bare'.*lowbit inspect"):
        quantize_model(handle, plan, _ids(320))
    with pytest.raises(ConfigError, match="SmoothQuant.*'bare'"):
        quantize_model(handle, uniform_plan(None), _ids(320), smoothquant=SmoothQuantConfig())


def test_awq_without_calibration_is_refused(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    plan = uniform_plan(LayerSpec(IntFormat(4), PerGroup(16), AWQConfig()))
    with pytest.raises(ConfigError, match="awq, which needs calibration"):
        quantize_model(handle, plan, None)
