"""Clipping: percentiles by hand, MSE clipping never worse than min-max on its own objective
(per group, every format), min-max identical to the integer path, config round trips."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import (
    FORMATS,
    IntFormat,
    LUTFormat,
    MinMax,
    MSEClip,
    Percentile,
    PerChannel,
    PerGroup,
    PerTensor,
    clipping_from_dict,
    quantize_weight,
)
from lowbit.formats.clipping import group_quantile, percentile_range
from lowbit.formats.scaling import group_sum

CASES = [
    pytest.param(IntFormat(3), PerGroup(32), id="int3-g32"),
    pytest.param(IntFormat(4, False), PerChannel(), id="uint4-channel"),
    pytest.param(IntFormat(4), PerTensor(), id="int4-tensor"),
    pytest.param(FORMATS.get("fp4_e2m1")(), PerGroup(32), id="fp4-g32"),
    pytest.param(FORMATS.get("fp8_e4m3")(), PerChannel(), id="fp8-channel"),
    pytest.param(FORMATS.get("nf4")(), PerGroup(64), id="nf4-g64"),
    pytest.param(FORMATS.get("mxfp4")(), PerGroup(32), id="mxfp4"),
    pytest.param(FORMATS.get("mxint8")(), PerGroup(32), id="mxint8"),
    pytest.param(FORMATS.get("nvfp4")(), PerGroup(16), id="nvfp4"),
    pytest.param(LUTFormat(3, iterations=5), PerChannel(), id="lut3"),
]


def _heavy_tailed(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(16, 128, generator=g)
    W[torch.rand(16, 128, generator=g) < 0.01] *= 12  # a few outliers: clipping pays
    return W


@pytest.mark.parametrize(("fmt", "granularity"), CASES)
def test_mse_clipping_is_never_worse_than_minmax_per_group(fmt, granularity):
    W = _heavy_tailed(1)
    err = {}
    for clip in (MinMax(), MSEClip(steps=10)):
        Wq = quantize_weight(W, fmt, granularity, clip).dequantize()
        err[type(clip)] = group_sum((W - Wq) ** 2, granularity)
    assert (err[MSEClip] <= err[MinMax]).all()
    if not fmt.name.startswith("mx"):  # power-of-two MX scales rarely gain from shrinking
        assert err[MSEClip].sum() < err[MinMax].sum()


def test_mse_clipping_is_the_best_ratio_of_its_grid():
    """A brute force over the same ratios, group by group, finds no smaller error."""
    W = _heavy_tailed(2)[:4, :64]
    fmt, gran, clip = IntFormat(3), PerGroup(32), MSEClip(steps=8, max_shrink=0.4)
    chosen = group_sum((W - quantize_weight(W, fmt, gran, clip).dequantize()) ** 2, gran)
    for ratio in clip.ratios():
        for r in range(4):
            for gi in range(2):
                block = W[r : r + 1, 32 * gi : 32 * (gi + 1)]
                lo, hi = block.min() * ratio, block.max() * ratio
                qw = fmt.encode(block, lo.reshape(1, 1), hi.reshape(1, 1), PerChannel())
                brute = ((block - qw.dequantize()) ** 2).sum()
                assert chosen[r, gi] <= brute * (1 + 1e-6)  # summation order differs


def test_ratios():
    assert MSEClip(steps=4, max_shrink=0.5).ratios() == [1.0, 0.875, 0.75, 0.625, 0.5]


def test_group_quantile_matches_torch_quantile():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(5, 70, generator=g)
    q = 0.9
    got = group_quantile(X, PerGroup(32), q)
    expected = torch.stack(
        [torch.quantile(X[:, a:b], q, dim=1) for a, b in ((0, 32), (32, 64), (64, 70))], dim=1
    )
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    assert torch.allclose(group_quantile(X, PerChannel(), q), torch.quantile(X, q, dim=1)[:, None])
    assert torch.allclose(group_quantile(X, PerTensor(), q), torch.quantile(X.flatten(), q))


def test_percentile_range_by_hand():
    W = torch.arange(1.0, 102.0).reshape(1, 101)  # 1 … 101
    lo, hi = percentile_range(W, PerChannel(), 99.0, symmetric=False)
    assert (lo.item(), hi.item()) == pytest.approx((2.0, 100.0))
    lo, hi = percentile_range(-W, PerChannel(), 99.0, symmetric=True)
    assert (lo.item(), hi.item()) == pytest.approx((-100.0, 100.0))


def test_percentile_clips_the_outlier():
    W = torch.ones(1, 100)
    W[0, 0] = 50.0
    qw = quantize_weight(W, IntFormat(4), PerChannel(), Percentile(98.0))
    # the 98th percentile of |w| (position 0.98·99 = 97.02 of the sorted 100) is 1.0, on the
    # positive side of the group's extreme → scale -1/8 (1.0 on the code -8): the ones are exact
    # and the outlier saturates at them
    assert qw.scale.float().item() == -1 / 8
    assert torch.equal(qw.dequantize(), torch.ones(1, 100))


@pytest.mark.parametrize("clip", [MinMax(), Percentile(99.5), MSEClip(7, 0.3)])
def test_dict_round_trip(clip):
    assert clipping_from_dict(clip.to_dict()) == clip


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Percentile(30.0), "in \\(50, 100\\], got 30.0"),
        (lambda: Percentile(101), "got 101"),
        (lambda: MSEClip(steps=0), "positive integer, got 0"),
        (lambda: MSEClip(max_shrink=1.0), "max_shrink must be in \\(0, 1\\), got 1.0"),
        (lambda: clipping_from_dict({"type": "kl"}), "unknown clipping 'kl'"),
        (lambda: clipping_from_dict({"type": "mse", "grid": 3}), "malformed clipping"),
    ],
)
def test_bad_clipping_configs(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_percentile_keeps_the_range_of_a_sparse_group() -> None:
    """A group that is mostly zeros has a zero percentile range; it keeps its min-max range
    rather than a scale unrelated to the data."""
    from lowbit.formats import IntFormat, PerGroup
    from lowbit.formats.clipping import Percentile
    from lowbit.formats.quantize import quantize_weight

    W = torch.zeros(2, 256)
    W[0, 5] = 50.0  # the 99th percentile of |w| in row 0 is 0
    W[1] = torch.linspace(-1, 1, 256)
    qw = quantize_weight(W, IntFormat(4), PerGroup(256), Percentile(99.0))
    assert float(qw.dequantize()[0, 5]) == pytest.approx(50.0, rel=0.1)


def test_a_scale_beyond_its_dtype_is_an_error() -> None:
    from lowbit.errors import DataError
    from lowbit.formats import IntFormat, PerGroup
    from lowbit.formats.quantize import quantize_weight

    W = torch.full((1, 32), 3e7)
    with pytest.raises(DataError, match="exceeds the largest"):
        quantize_weight(W, IntFormat(4), PerGroup(32))
    wide = quantize_weight(W, IntFormat(4, scale_dtype="float32"), PerGroup(32))
    assert wide.scale.isfinite().all()
