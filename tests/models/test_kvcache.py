"""KV-cache fake quantization through transformers' attention interface: exact pass-through
when off, small and monotonic errors when on, hand-checked granularities, clear refusals."""

from __future__ import annotations

import pytest
import torch

from lowbit import api
from lowbit.algorithms.activation_specs import KVCacheSpec, KVGranularity
from lowbit.errors import ConfigError
from lowbit.formats import FP8_E4M3, IntFormat
from lowbit.models.kvcache import attach_kv_quant, quantize_kv
from lowbit.plan import Plan
from tests.helpers.tiny import make_tiny_model


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def _ids(handle):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, handle.config.vocab_size, (2, 64), generator=g)


@pytest.fixture(params=["llama", "qwen3"])
def rope_model(request, tiny_root):
    return make_tiny_model(tiny_root, request.param)


def test_unquantized_plan_without_kv_leaves_logits_unchanged(rope_model):
    handle = api.load(str(rope_model))
    from lowbit.models.quantize import quantize_model

    qm = quantize_model(handle, Plan(None), None)  # api.quantize refuses a plan doing nothing
    ids = _ids(handle)
    assert torch.equal(
        _logits(api.fake_quant_model(handle, qm), ids), _logits(handle.load_model(), ids)
    )


def _kv_error(handle, spec, ids, ref):
    model = attach_kv_quant(handle.load_model(), spec)
    return float((_logits(model, ids) - ref).abs().max())


def test_kv_errors_small_and_monotonic(rope_model):
    handle = api.load(str(rope_model))
    ids = _ids(handle)
    ref = _logits(handle.load_model(), ids)
    scale = float(ref.abs().max())
    err = {
        name: _kv_error(handle, KVCacheSpec(fmt, g, g), ids, ref)
        for name, fmt, g in [
            ("int8", IntFormat(8), KVGranularity.PER_TOKEN),
            ("int4", IntFormat(4), KVGranularity.PER_TOKEN),
            ("fp8", FP8_E4M3, KVGranularity.PER_TOKEN),
            ("int8-head", IntFormat(8), KVGranularity.PER_HEAD),
            ("int4-head", IntFormat(4), KVGranularity.PER_HEAD),
        ]
    }
    assert 0 < err["int8"] < 0.02 * scale
    assert err["int8"] < err["int4"]
    assert err["int8-head"] < err["int4-head"]
    assert err["int8-head"] <= err["int8"] * 1.5  # finer scales are not worse (up to noise)
    assert 0 < err["fp8"] < err["int4"]


def test_kv_plan_evaluates_and_reloads(rope_model, tmp_path):
    handle = api.load(str(rope_model))
    plan = Plan(
        None, kv_cache=KVCacheSpec(IntFormat(4, symmetric=False), "per_channel", "per_token")
    )
    qm = api.quantize(handle, plan, None)
    ids = _ids(handle)
    a = _logits(api.fake_quant_model(handle, qm), ids)
    assert not torch.equal(a, _logits(handle.load_model(), ids))
    model, _ = api.load_for_tasks(str(api.save(qm, tmp_path / "q", {})), api.runtime())
    assert torch.equal(a, _logits(model, ids))


def test_granularities_by_hand():
    x = torch.zeros(1, 2, 3, 4)  # (batch, heads, seq, head_dim)
    x[0, 0, :, 0] = torch.tensor([127.0, 1.0, 2.0])
    x[0, 1, :, 1] = torch.tensor([0.3, 0.5, 254.0])
    fmt = IntFormat(8)
    head = quantize_kv(x, fmt, KVGranularity.PER_HEAD)
    assert torch.equal(head, x)  # one non-zero per (token, head) row: each is its own absmax
    token = quantize_kv(x, fmt, KVGranularity.PER_TOKEN)
    assert float(token[0, 1, 2, 1]) == 254.0  # token 2: s = 2 shared by both heads
    assert float(token[0, 0, 2, 0]) == 2.0
    assert float(token[0, 1, 0, 1]) == 0.0  # token 0: s = 1 → 0.3 rounds to 0
    channel = quantize_kv(x, fmt, KVGranularity.PER_CHANNEL)
    assert float(channel[0, 1, 0, 1]) == 0.0  # channel 1 of head 1: s = 2 over the sequence
    assert float(channel[0, 0, 1, 0]) == 1.0  # channel 0 of head 0: s = 1


def test_unsupported_architecture_refused(tiny_root):
    handle = api.load(str(make_tiny_model(tiny_root, "opt")))
    spec = KVCacheSpec(IntFormat(8))
    with pytest.raises(ConfigError, match="'opt' .*remove kv_cache"):
        attach_kv_quant(handle.load_model(), spec)
    with pytest.raises(ConfigError, match="not supported for architecture 'opt'"):
        api.quantize(handle, Plan(None, kv_cache=spec), None)
