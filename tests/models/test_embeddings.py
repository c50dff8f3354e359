"""Quantized embedding and output head: tied pairs quantized together or untied on request
(and counted honestly), contradictory specs refused, saved models reload identical logits."""

from __future__ import annotations

import pytest
import torch

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, PerChannel, PerGroup, quantize_weight
from lowbit.models.footprint import stored_bits
from lowbit.plan import LayerSpec, Plan
from tests.helpers.tiny import make_tiny_model

E8 = LayerSpec(IntFormat(8), PerChannel(), RTNConfig())
E4 = LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())
VOCAB, HIDDEN = 320, 64


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def _ids():
    return torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))


def _fp32_bits(handle) -> int:
    return sum(bits for _, _, bits in stored_bits(handle))


def test_tied_pair_quantized_together(tiny_llama, tmp_path):
    handle = api.load(str(tiny_llama))
    qm = api.quantize(handle, Plan(None, embedding=E4, head=E4), None)
    assert list(qm.weights) == ["model.embed_tokens"] and not qm.untied_head
    E = handle.load_model().model.embed_tokens.weight.detach()
    expected = quantize_weight(E, E4.fmt, E4.granularity)
    assert torch.equal(qm.weights["model.embed_tokens"].codes, expected.codes)
    model = api.fake_quant_model(handle, qm)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one tensor
    assert torch.equal(model.lm_head.weight, expected.dequantize())
    fp = api.footprint(handle, qm)
    saved = VOCAB * HIDDEN * 32 - expected.n_bits()
    assert fp.size_bytes == (_fp32_bits(handle) - saved + 7) // 8
    reloaded, _ = api.load_for_tasks(str(api.save(qm, tmp_path / "q", {})), api.runtime())
    assert torch.equal(_logits(model, _ids()), _logits(reloaded, _ids()))


@pytest.mark.parametrize(
    "plan",
    [Plan(None, embedding=E8), Plan(None, head=E8), Plan(None, embedding=E8, head=E4)],
    ids=["embedding-only", "head-only", "different"],
)
def test_tied_contradictions_refused(tiny_llama, plan):
    handle = api.load(str(tiny_llama))
    with pytest.raises(ConfigError, match="ties its embedding and output head.*untie_embeddings"):
        api.quantize(handle, plan, None)


@pytest.mark.parametrize("head", [E4, None], ids=["head-int4", "head-kept"])
def test_untied_head_counted_and_reloaded(tiny_llama, tmp_path, head):
    handle = api.load(str(tiny_llama))
    plan = Plan(None, embedding=E8, head=head, untie_embeddings=True)
    qm = api.quantize(handle, plan, None)
    assert qm.untied_head
    model = api.fake_quant_model(handle, qm)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    E = handle.load_model().model.embed_tokens.weight.detach()
    emb = quantize_weight(E, E8.fmt, E8.granularity)
    head_bits = (
        VOCAB * HIDDEN * 32 if head is None else quantize_weight(E, E4.fmt, E4.granularity).n_bits()
    )
    fp = api.footprint(handle, qm)
    assert (
        fp.size_bytes
        == (_fp32_bits(handle) - VOCAB * HIDDEN * 32 + emb.n_bits() + head_bits + 7) // 8
    )
    assert fp.parameters == sum(n for _, n, _ in stored_bits(handle)) + VOCAB * HIDDEN
    assert ("lm_head.weight" in fp.full_precision) == (head is None)
    reloaded, _ = api.load_for_tasks(str(api.save(qm, tmp_path / "q", {})), api.runtime())
    assert not reloaded.config.tie_word_embeddings
    assert torch.equal(_logits(model, _ids()), _logits(reloaded, _ids()))
    if head is None:
        assert torch.equal(reloaded.lm_head.weight, E)


def test_untied_model_head_quantized(tiny_root, tmp_path):
    handle = api.load(str(make_tiny_model(tiny_root, "qwen3")))
    qm = api.quantize(handle, Plan(None, head=E4), None)
    assert list(qm.weights) == ["lm_head"] and not qm.untied_head
    model = api.fake_quant_model(handle, qm)
    ref = handle.load_model()
    assert torch.equal(model.model.embed_tokens.weight, ref.model.embed_tokens.weight)
    assert not torch.equal(model.lm_head.weight, ref.lm_head.weight)
    fp = api.footprint(handle, qm)
    assert (
        fp.size_bytes
        == (_fp32_bits(handle) - VOCAB * HIDDEN * 32 + qm.weights["lm_head"].n_bits() + 7) // 8
    )
    reloaded, _ = api.load_for_tasks(str(api.save(qm, tmp_path / "q", {})), api.runtime())
    assert torch.equal(_logits(model, _ids()), _logits(reloaded, _ids()))
