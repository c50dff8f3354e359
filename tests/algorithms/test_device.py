"""Every algorithm makes its tensors on its input's device (so it runs unchanged on CUDA), and
gives bit for bit what it gives outside the check (``tests/helpers/device.py`` for the trick)."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from lowbit.algorithms import (
    ActOrder,
    AWQConfig,
    ChannelStats,
    GPTQConfig,
    HessianAccumulator,
    ScaleTarget,
    SqueezeLLMConfig,
    awq_quantize,
    gptq_quantize,
    rtn_quantize,
    search_clip,
    search_scales,
    smoothquant_scales,
    squeezellm_quantize,
    weight_absmax,
)
from lowbit.algorithms import activation_ranges as ar
from lowbit.algorithms.gptq import _inverse_cholesky
from lowbit.formats import (
    FP8_E4M3,
    FP8_E5M2,
    IntFormat,
    LUTFormat,
    MinMax,
    MSEClip,
    Percentile,
    PerChannel,
    PerTensor,
)
from tests.helpers.device import (
    assert_same_weight,
    factories_on_meta,
    registered_formats,
)

FORMATS = registered_formats()
CLIPPINGS = [pytest.param(c, id=type(c).__name__) for c in (MinMax(), Percentile(99.0), MSEClip(4))]
ACT_ORDERS = [pytest.param(a, id=a.value) for a in ActOrder]
CPU = torch.device("cpu")


@cache
def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W (8, 64) with an outlier, inputs X (96, 64) of unequal channel scales, H = XᵀX / n."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 64, generator=g)
    W[2, 5] = 5.0
    X = torch.randn(96, 64, generator=g) * torch.exp(0.5 * torch.randn(64, generator=g))
    return W, X, X.T @ X / X.shape[0]


@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize(("fmt", "granularity"), FORMATS)
def test_rtn(fmt, granularity, clipping):
    W, _, _ = _problem()
    with factories_on_meta():
        qw = rtn_quantize(W, fmt, granularity, clipping)
        W_hat = qw.dequantize()
    assert_same_weight(qw, rtn_quantize(W, fmt, granularity, clipping))
    assert W_hat.device == CPU and torch.equal(W_hat, qw.dequantize())


@pytest.mark.parametrize("act_order", ACT_ORDERS)
@pytest.mark.parametrize(("fmt", "granularity"), FORMATS)
def test_gptq(fmt, granularity, act_order):
    W, _, H = _problem()
    cfg = GPTQConfig(act_order=act_order, block_size=32)
    with factories_on_meta():
        result = gptq_quantize(W, H, fmt, granularity, cfg)
        result.weight.dequantize()
    again = gptq_quantize(W, H, fmt, granularity, cfg)
    assert_same_weight(result.weight, again.weight)
    assert (result.loss, result.damp) == (again.loss, again.damp)


def test_gptq_cholesky_falls_back_to_float64_on_the_device(monkeypatch):
    """An fp32 factorisation reported as failed is redone in float64 on H's device."""
    _, _, H = _problem()
    expected, _ = _inverse_cholesky(lambda: H.double(), 0.01)
    cholesky = torch.linalg.cholesky_ex
    dtypes = []

    def fp32_fails(A, **kwargs):
        L, info = cholesky(A, **kwargs)
        dtypes.append(A.dtype)
        return L, info + 1 if A.dtype == torch.float32 else info

    monkeypatch.setattr(torch.linalg, "cholesky_ex", fp32_fails)
    with factories_on_meta():
        U, damp = _inverse_cholesky(H.clone, 0.01)
    assert dtypes == [torch.float32, torch.float64] and damp == 0.01
    assert U.device == CPU and U.dtype == torch.float32
    torch.testing.assert_close(U, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("fmt", "granularity"), [p for p in FORMATS if p.id != "lut3"])
def test_awq(fmt, granularity):
    W, X, H = _problem()
    targets = [ScaleTarget(W, fmt, granularity), ScaleTarget(2 * W[:3], fmt, granularity)]
    cfg = AWQConfig(grid=4, n_clip_grid=4)

    def run():
        found = search_scales(X.abs().mean(0), H, targets, grid=4)
        ratio = search_clip(W, H, fmt, granularity, [1.0, 0.9, 0.7])
        return found, ratio, awq_quantize(W * found.scales, H, fmt, granularity, cfg)

    with factories_on_meta():
        found, ratio, qw = run()
    found_ref, ratio_ref, qw_ref = run()
    assert found.scales.device == ratio.device == CPU
    assert torch.equal(found.scales, found_ref.scales) and found.losses == found_ref.losses
    assert torch.equal(ratio, ratio_ref)
    assert_same_weight(qw, qw_ref)


@pytest.mark.parametrize(
    ("granularity", "cfg"),
    [
        pytest.param(PerChannel(), SqueezeLLMConfig(outlier_fraction=0.05), id="outliers"),
        pytest.param(PerChannel(), SqueezeLLMConfig(outlier_fraction=0.0), id="dense"),
        pytest.param(PerTensor(), SqueezeLLMConfig(sensitivity="uniform"), id="tensor-uniform"),
    ],
)
def test_squeezellm(granularity, cfg):
    W, _, H = _problem()
    with factories_on_meta():
        qw = squeezellm_quantize(W, torch.diag(H), LUTFormat(3), granularity, cfg)
        qw.dequantize()
    assert_same_weight(qw, squeezellm_quantize(W, torch.diag(H), LUTFormat(3), granularity, cfg))


def test_smoothquant_scales():
    W, X, _ = _problem()
    with factories_on_meta():
        s = smoothquant_scales(X.abs().amax(0), weight_absmax([W, 3 * W[:2]]), 0.6)
    assert s.device == CPU
    assert torch.equal(s, smoothquant_scales(X.abs().amax(0), weight_absmax([W, 3 * W[:2]]), 0.6))


@cache
def _batches(in_features: int) -> list[torch.Tensor]:
    """bf16, fp16 and fp32 CPU batches (made outside the check: they are its real inputs)."""
    g = torch.Generator().manual_seed(in_features)
    X = torch.randn(30, in_features, generator=g)
    return [X[:10].bfloat16(), X[10:].reshape(2, 10, in_features).half(), X[:3]]


@pytest.mark.parametrize("device", [None, CPU], ids=["lazy", "explicit"])
@pytest.mark.parametrize("in_features", [64, 800], ids=["plain", "blocked"])
def test_hessian_accumulator(in_features, device):
    batches = _batches(in_features)

    def accumulate() -> HessianAccumulator:
        acc = HessianAccumulator(in_features, device=device)
        for X in batches:
            acc.add_batch(X)
        return acc

    with factories_on_meta():
        acc = accumulate()
        H = acc.hessian()
    assert acc.sum.device == H.device == CPU and H.dtype == torch.float32
    assert acc.count == 33 and torch.equal(H, accumulate().hessian())


@pytest.mark.parametrize("device", [None, CPU], ids=["lazy", "explicit"])
def test_channel_stats(device):
    batches = _batches(64)

    def accumulate() -> ChannelStats:
        stats = ChannelStats(64, device=device)
        for X in batches:
            stats.add_batch(X)
        return stats

    with factories_on_meta():
        stats = accumulate()
        mean = stats.abs_mean()
    ref = accumulate()
    assert stats.abs_max.device == mean.device == CPU and stats.abs_max.dtype == torch.float32
    assert torch.equal(mean, ref.abs_mean()) and torch.equal(stats.abs_max, ref.abs_max)


def test_accumulators_before_any_batch_use_the_given_device():
    assert HessianAccumulator(8, device="meta").sum.device.type == "meta"
    assert ChannelStats(8, device="meta").abs_max.device.type == "meta"
    stats = HessianAccumulator(8, device="meta")
    stats.add_batch(torch.randn(3, 8))  # a CPU batch joins the accumulator's device
    assert stats.hessian().device.type == "meta"


CALIBRATIONS = [
    ar.MinMaxRange(),
    ar.PercentileRange(99.9),
    ar.MSERange(start_bin=64, stride=4),
    ar.KLRange(start_bin=64, stride=4),
]


@pytest.mark.parametrize("calibration", CALIBRATIONS, ids=lambda c: c.name)
@pytest.mark.parametrize("fmt", [IntFormat(8), FP8_E4M3, FP8_E5M2], ids=lambda f: f.name)
def test_activation_ranges(fmt, calibration):
    _, X, _ = _problem()
    absmax = float(X.abs().max())
    with factories_on_meta():
        counts = ar.abs_histogram(X, absmax, 256)
        t = ar.threshold(calibration, fmt, absmax, counts)
    assert counts.device == CPU
    assert t == ar.threshold(calibration, fmt, absmax, ar.abs_histogram(X, absmax, 256))
