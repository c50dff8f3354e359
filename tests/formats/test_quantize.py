"""Quantizing with any format: more bits never give a larger error, bad weights are refused
with their name, and the integer min-max path is the one RTN always had."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import DataError
from lowbit.formats import (
    FORMATS,
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    IntFormat,
    LUTFormat,
    PerChannel,
    PerGroup,
    choose_qparams,
    group_index,
    quantize_weight,
)
from lowbit.formats.integer import quantize_to_codes


def _mse(W, fmt, granularity) -> float:
    return float(((W - quantize_weight(W, fmt, granularity).dequantize()) ** 2).mean())


def _weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 256, generator=g) * torch.exp(torch.randn(32, 1, generator=g))


@pytest.mark.parametrize(
    ("ladder", "granularity"),
    [
        ([IntFormat(2), IntFormat(3), IntFormat(4), IntFormat(6), IntFormat(8)], PerGroup(64)),
        ([FP4_E2M1, FP6_E3M2, FP8_E4M3], PerGroup(64)),
        ([FP4_E2M1, FP6_E3M2, FP8_E4M3], PerChannel()),
        ([FP4_E2M1, FP6_E2M3], PerGroup(64)),
        ([FORMATS.get(n)() for n in ("mxfp4", "mxfp6_e3m2", "mxfp8", "mxint8")], PerGroup(32)),
        ([FORMATS.get(n)() for n in ("mxfp4", "mxfp6")], PerGroup(32)),
        ([LUTFormat(2), LUTFormat(3), LUTFormat(4)], PerChannel()),
    ],
    ids=["int", "fp-g64", "fp-channel", "fp4-e2m3", "mx", "mxfp4-mxfp6", "lut"],
)
def test_more_bits_never_give_a_larger_error(ladder, granularity):
    """More mantissa bits are what count under a per-group scale: FP6 E2M3 and FP8 E4M3 both
    have 3 (the FP8's extra exponent bit only widens a range the scale already covers), so
    E2M3 is compared with FP4 and E3M2 (2 mantissa bits) sits between FP4 and FP8."""
    W = _weight()
    errors = [_mse(W, fmt, granularity) for fmt in ladder]
    assert errors == sorted(errors, reverse=True)


def test_four_bit_formats_rank_as_expected_on_gaussian_weights():
    """Smaller blocks help: NVFP4 (16, fp8 scales) beats MXFP4 (32, power-of-two scales)."""
    W = _weight(1)
    nvfp4 = _mse(W, FORMATS.get("nvfp4")(), PerGroup(16))
    mxfp4 = _mse(W, FORMATS.get("mxfp4")(), PerGroup(32))
    assert nvfp4 < mxfp4


@pytest.mark.parametrize("granularity", [PerChannel(), PerGroup(40)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_integer_minmax_is_the_original_path(granularity, symmetric):
    """choose_qparams + quantize_to_codes, as RTN did before formats were generalized."""
    W = _weight(2)
    fmt = IntFormat(3, symmetric)
    g_idx = group_index(256, granularity)
    scale, zero = choose_qparams(W, fmt, g_idx, granularity.groups(256))
    codes = quantize_to_codes(W, scale[:, g_idx], None if zero is None else zero[:, g_idx], fmt)
    qw = quantize_weight(W, fmt, granularity)
    assert torch.equal(qw.codes, codes.to(fmt.code_dtype))
    assert torch.equal(qw.scale, scale.half())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["int", "fp4_e2m1", "nf4", "mxfp4", "nvfp4", "lut"])
def test_nan_or_inf_weights_name_the_tensor(bad, name):
    W = torch.randn(4, 32)
    W[2, 5] = bad
    fmt = FORMATS.get(name)(4) if name in ("int", "lut") else FORMATS.get(name)()
    gran = {"mxfp4": PerGroup(32), "nvfp4": PerGroup(16), "lut": PerChannel()}.get(
        name, PerGroup(16)
    )
    with pytest.raises(DataError, match=r"'layers\.0\.q_proj' has 1 NaN or infinite.*\[2, 5\]"):
        quantize_weight(W, fmt, gran, name="layers.0.q_proj")


def test_bfloat16_weights_are_quantized_in_fp32():
    W = _weight(3)
    fmt = FORMATS.get("mxfp4")()
    a = quantize_weight(W.bfloat16(), fmt, PerGroup(32))
    b = quantize_weight(W.bfloat16().float(), fmt, PerGroup(32))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
