"""Every family lowbit claims, end to end on a tiny random model built offline from
transformers' own config class: discovered (or hand-written) architecture, RTN and GPTQ (and
AWQ where the blocks have smoothing pairs), the fake-quantized model evaluated against the
original, saved and reloaded with identical logits."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import AWQConfig, GPTQConfig, RTNConfig
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.fakequant import fake_quant
from lowbit.models.footprint import footprint
from lowbit.models.quantize import PipelineConfig, quantize_model
from lowbit.models.saving import load_quantized, save_quantized
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, uniform_plan
from tests.helpers.families import FAMILIES, MOE
from tests.helpers.tiny import make_tiny_model
from tests.helpers.whole_model import whole_model_kl


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_root):
    return request.param, resolve_model(str(make_tiny_model(tiny_root, request.param)))


def _ids(handle, n, ctx, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, handle.config.vocab_size, (n, ctx), generator=gen)


def _plan(algorithm):
    return uniform_plan(LayerSpec(IntFormat(4), PerGroup(16), algorithm))


def test_family_quantizes_evaluates_and_round_trips(family, tmp_path):
    name, handle = family
    assert handle.arch.blocks and not handle.arch.unsupported
    calib, held_out = _ids(handle, 16, 32, 0), _ids(handle, 8, 32, 1)
    reference = handle.load_model()
    kl = {}
    for algo, config in (("rtn", RTNConfig()), ("gptq", GPTQConfig())):
        qm = quantize_model(handle, _plan(config), calib, pipeline=PipelineConfig(chunk_size=4))
        assert set(qm.weights) == set(handle.arch.layer_names())  # every linear, no router
        model = fake_quant(handle.load_model(), qm)
        kl[algo] = whole_model_kl(reference, model, held_out)
    assert 0 < kl["gptq"] < kl["rtn"] < 0.01, (name, kl)  # a misread weight would be far off
    # bits counted honestly whatever the checkpoint's expert layout (per expert, renamed, fused)
    n_bits = sum(qm.weights.n_bits(n) for n in qm.weights)
    numel = sum(qm.weights[n].dequantize().numel() for n in qm.weights)
    assert footprint(handle, qm).bits_per_weight_linear == pytest.approx(n_bits / numel)
    out = save_quantized(qm, tmp_path / "q", {"command": "test"})
    reloaded, _, _ = load_quantized(out)
    with torch.inference_mode():
        a = model(input_ids=held_out, use_cache=False).logits
        b = reloaded(input_ids=held_out, use_cache=False).logits
    assert torch.equal(a, b), name


def test_awq_where_the_blocks_have_smoothing_pairs(family):
    name, handle = family
    pairs = [p for b in handle.arch.blocks for p in b.smoothing_pairs]
    if not pairs:
        pytest.skip(f"{name}: no smoothing pairs (AWQ is refused by name)")
    calib, held_out = _ids(handle, 16, 32, 0), _ids(handle, 8, 32, 1)
    qm = quantize_model(handle, _plan(AWQConfig()), calib)
    assert qm.smoothing and all(torch.isfinite(t).all() for t in qm.smoothed.values())
    kl = whole_model_kl(handle.load_model(), fake_quant(handle.load_model(), qm), held_out)
    assert 0 < kl < 1.0


@pytest.mark.parametrize("name", MOE)
def test_every_expert_is_calibrated_and_routers_are_untouched(name, tiny_root):
    handle = resolve_model(str(make_tiny_model(tiny_root, name)))
    before = {
        n: p.clone()
        for n, p in handle.load_model().named_parameters()
        if "gate." in n or "router." in n
    }
    assert before and not any(
        n.startswith(r) for n in handle.arch.layer_names() for r in handle.arch.routers()
    )
    qm = quantize_model(handle, _plan(GPTQConfig()), _ids(handle, 4, 16, 0))
    experts = qm.execution["experts"]
    assert experts and qm.execution["expert_calibration"]["policy"] == "all"
    total = sum(sum(e["routed_tokens"]) for e in experts.values())
    k = handle.config.num_experts_per_tok
    assert total == len(experts) * 4 * 16 * k  # every token routed to k experts, every block
    for layer in handle.arch.layer_names():
        assert torch.isfinite(qm.weights[layer].dequantize()).all(), layer
    after = dict(fake_quant(handle.load_model(), qm).named_parameters())
    for n, p in before.items():
        assert torch.equal(after[n], p), n
