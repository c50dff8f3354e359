"""QuantizedWeight: dequantization (with and without a column permutation) and stored bits."""

from __future__ import annotations

import pytest
import torch

from lowbit.formats import (
    IntFormat,
    PerChannel,
    PerGroup,
    PerTensor,
    QuantizedWeight,
    describe_scheme,
)
from lowbit.formats.tensor import PERM_BITS


def _random_weight(fmt, granularity, out_f, in_f, seed=0, perm=False) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    n_groups = 1 if isinstance(granularity, PerTensor) else granularity.groups(in_f)
    rows = 1 if isinstance(granularity, PerTensor) else out_f
    codes = torch.randint(fmt.qmin, fmt.qmax + 1, (out_f, in_f), generator=g, dtype=torch.int16)
    scale = (0.01 + torch.rand(rows, n_groups, generator=g)).to(fmt.torch_scale_dtype)
    zero = None
    if not fmt.symmetric:
        zero = torch.randint(0, fmt.qmax + 1, (rows, n_groups), generator=g, dtype=torch.int16)
    return QuantizedWeight(
        codes, scale, zero, fmt, granularity, torch.randperm(in_f, generator=g) if perm else None
    )


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("perm", [False, True])
def test_dequantize_by_hand(symmetric, perm):
    """Storage column j holds original column perm[j], with the parameters of group j // size."""
    fmt = IntFormat(3, symmetric)
    qw = _random_weight(fmt, PerGroup(5), 4, 13, seed=1, perm=perm)
    W = qw.dequantize()
    assert W.dtype == torch.float32 and W.shape == (4, 13) == qw.shape
    group = torch.arange(13) // 5
    z = 0.0 if qw.zero is None else qw.zero[:, group].float()
    in_storage_order = (qw.codes.float() - z) * qw.scale[:, group].float()
    order = qw.perm if perm else torch.arange(13)
    assert torch.equal(W[:, order], in_storage_order)
    if perm:
        assert not torch.equal(W, in_storage_order)


def test_dequantize_per_tensor_uses_one_scale():
    qw = _random_weight(IntFormat(4, False), PerTensor(), 3, 7, seed=2)
    expected = (qw.codes.float() - float(qw.zero)) * float(qw.scale)
    assert torch.equal(qw.dequantize(), expected)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    ("granularity", "out_f", "in_f"),
    [
        (PerTensor(), 16, 64),
        (PerChannel(), 16, 64),
        (PerGroup(32), 16, 64),
        (PerGroup(128), 8, 576),  # five groups, the last 64 wide
        (PerGroup(48), 6, 128),
    ],
)
def test_bits_per_weight_matches_the_format(granularity, out_f, in_f, symmetric):
    fmt = IntFormat(4, symmetric)
    qw = _random_weight(fmt, granularity, out_f, in_f)
    expected = fmt.bits_per_weight(in_f, granularity, out_f)
    assert qw.bits_per_weight() == pytest.approx(expected, rel=1e-12)
    permuted = _random_weight(fmt, granularity, out_f, in_f, perm=True)
    assert permuted.bits_per_weight() == pytest.approx(expected + 32 / out_f, rel=1e-12)


@pytest.mark.parametrize(
    ("fmt", "granularity", "out_f", "in_f", "perm", "n_bits"),
    [
        (IntFormat(4), PerGroup(64), 8, 128, False, 8 * 128 * 4 + 16 * 16),
        (IntFormat(4, False), PerGroup(64), 8, 128, False, 8 * 128 * 4 + 16 * 20),
        (IntFormat(4, False), PerGroup(64), 8, 128, True, 8 * 128 * 4 + 16 * 20 + 32 * 128),
        (IntFormat(2), PerChannel(), 3, 10, False, 3 * 10 * 2 + 3 * 16),
        (IntFormat(8, False), PerTensor(), 3, 10, False, 3 * 10 * 8 + 24),
    ],
)
def test_n_bits(fmt, granularity, out_f, in_f, perm, n_bits):
    assert _random_weight(fmt, granularity, out_f, in_f, perm=perm).n_bits() == n_bits
    assert PERM_BITS == 32


@pytest.mark.parametrize(
    ("fmt", "granularity", "text"),
    [
        (IntFormat(4), PerGroup(128), "W4 g128 sym"),
        (IntFormat(8, False), PerChannel(), "W8 per-channel asym"),
        (IntFormat(3), PerTensor(), "W3 per-tensor sym"),
    ],
)
def test_describe_scheme(fmt, granularity, text):
    assert describe_scheme(fmt, granularity) == text


@pytest.mark.parametrize(
    ("name", "args", "granularity", "out_f", "in_f", "bpw"),
    [
        ("mxfp4", (), PerGroup(32), 8, 128, 4 + 8 / 32),
        ("mxfp6", (), PerGroup(32), 8, 128, 6 + 8 / 32),
        ("mxfp8", (), PerGroup(32), 8, 128, 8 + 8 / 32),
        ("mxint8", (), PerGroup(32), 8, 128, 8 + 8 / 32),
        ("nvfp4", (), PerGroup(16), 8, 128, 4 + 8 / 16 + 32 / (8 * 128)),
        ("nf4", (), PerGroup(64), 8, 128, 4 + 16 / 64),
        ("nf4", ("float32",), PerGroup(64), 8, 128, 4 + 32 / 64),
        ("fp8_e4m3", (), PerChannel(), 8, 128, 8 + 16 / 128),
        ("fp8_e4m3", (), PerTensor(), 8, 128, 8 + 16 / (8 * 128)),
        ("fp4_e2m1", ("bfloat16",), PerGroup(32), 8, 128, 4 + 16 / 32),
        ("fp6_e3m2", (), PerGroup(48), 8, 128, 6 + 3 * 16 / 128),
        ("lut", (4,), PerChannel(), 8, 128, 4 + 16 * 16 / 128),
    ],
)
def test_bits_per_weight_of_every_format_by_hand(name, args, granularity, out_f, in_f, bpw):
    from lowbit.formats import FORMATS, quantize_weight

    fmt = FORMATS.get(name)(*args)
    assert fmt.bits_per_weight(in_f, granularity, out_f) == pytest.approx(bpw, rel=1e-12)
    qw = quantize_weight(torch.randn(out_f, in_f), fmt, granularity)
    assert qw.bits_per_weight() == pytest.approx(bpw, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "granularity", "text"),
    [
        ("mxfp4", PerGroup(32), "MXFP4 g32"),
        ("nvfp4", PerGroup(16), "NVFP4 g16"),
        ("nf4", PerGroup(64), "NF4 g64"),
        ("fp8_e4m3", PerChannel(), "FP8_E4M3 per-channel"),
    ],
)
def test_describe_scheme_of_other_formats(name, granularity, text):
    from lowbit.formats import FORMATS

    assert describe_scheme(FORMATS.get(name)(), granularity) == text


def test_dequantize_restores_the_permutation_for_any_format():
    from lowbit.formats import FORMATS, quantize_weight

    W = torch.randn(4, 64)
    qw = quantize_weight(W, FORMATS.get("mxfp4")(), PerGroup(32))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    permuted = QuantizedWeight(qw.codes, qw.scale, None, qw.fmt, qw.granularity, perm)
    assert torch.equal(permuted.dequantize()[:, perm], qw.dequantize())


def test_outliers_replace_values_in_the_original_layout_and_cost_48_bits_each():
    """Sparse outliers index the original (unpermuted) layout, row · in + column."""
    from lowbit.formats import IntFormat, PerChannel, QuantizedWeight

    codes = torch.tensor([[1, 2, 3], [-1, 0, 1]], dtype=torch.int8)
    scale = torch.ones(2, 1, dtype=torch.float16)
    perm = torch.tensor([2, 0, 1])  # storage column j is original column perm[j]
    index = torch.tensor([0, 5], dtype=torch.int32)
    values = torch.tensor([7.5, -9.0], dtype=torch.float16)
    qw = QuantizedWeight(
        codes, scale, None, IntFormat(4), PerChannel(), perm, None, (index, values)
    )
    assert qw.dequantize().tolist() == [[7.5, 3.0, 1.0], [0.0, 1.0, -9.0]]
    assert qw.n_bits() == 6 * 4 + 2 * 16 + 32 * 3 + 2 * 48
