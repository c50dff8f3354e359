"""Floating-point elements: value tables equal the OCP MX v1.0 spec, FP8 rounding is bit-exact
against torch's own casts, FP6/FP4 rounding equals a brute-force nearest-even search, and the
scaled format stores what it evaluates."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import (
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    FloatFormat,
    PerChannel,
    PerGroup,
    PerTensor,
    quantize_weight,
)

# OCP Microscaling Formats (MX) v1.0, section 5.3: every non-negative value, code order
SPEC_FP4_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
SPEC_FP6_E2M3 = [
    0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875,  # subnormals: M/8
    1.0, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875,
    2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75,
    4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5,
]  # fmt: skip
SPEC_FP6_E3M2 = [
    0.0, 0.0625, 0.125, 0.1875,  # subnormals: M/4 · 2^-2
    0.25, 0.3125, 0.375, 0.4375, 0.5, 0.625, 0.75, 0.875,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5,
    4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 14.0,
    16.0, 20.0, 24.0, 28.0,
]  # fmt: skip

ALL = [FP8_E4M3, FP8_E5M2, FP6_E3M2, FP6_E2M3, FP4_E2M1]
TORCH_FP8 = [
    pytest.param(FP8_E4M3, torch.float8_e4m3fn, id="e4m3"),
    pytest.param(FP8_E5M2, torch.float8_e5m2, id="e5m2"),
]


@pytest.mark.parametrize(
    ("fmt", "spec"),
    [(FP4_E2M1, SPEC_FP4_E2M1), (FP6_E2M3, SPEC_FP6_E2M3), (FP6_E3M2, SPEC_FP6_E3M2)],
    ids=["fp4_e2m1", "fp6_e2m3", "fp6_e3m2"],
)
def test_value_tables_equal_the_mx_spec(fmt, spec):
    values = fmt.values()
    half = len(spec)
    assert values.numel() == 2 * half
    assert values[:half].tolist() == spec
    assert values[half:].tolist() == [-v for v in spec]  # sign bit on top
    assert torch.signbit(values[half])  # code 100…0 is -0


@pytest.mark.parametrize(
    ("fmt", "name", "bits", "max_value", "emax", "min_subnormal"),
    [
        (FP8_E4M3, "fp8_e4m3", 8, 448.0, 8, 2.0**-9),
        (FP8_E5M2, "fp8_e5m2", 8, 57344.0, 15, 2.0**-16),
        (FP6_E3M2, "fp6_e3m2", 6, 28.0, 4, 2.0**-4),
        (FP6_E2M3, "fp6_e2m3", 6, 7.5, 2, 2.0**-3),
        (FP4_E2M1, "fp4_e2m1", 4, 6.0, 2, 0.5),
    ],
)
def test_format_constants(fmt, name, bits, max_value, emax, min_subnormal):
    assert (fmt.name, fmt.bits, fmt.max_value, fmt.emax) == (name, bits, max_value, emax)
    assert fmt.min_subnormal == min_subnormal


@pytest.mark.parametrize(("fmt", "dtype"), TORCH_FP8)
def test_fp8_value_table_equals_torch(fmt, dtype):
    ours = fmt.values()
    theirs = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    finite = ~torch.isnan(ours)
    assert torch.equal(ours[finite], theirs[finite])


def test_special_codes():
    e4m3, e5m2 = FP8_E4M3.values(), FP8_E5M2.values()
    assert torch.isnan(e4m3).nonzero().flatten().tolist() == [0x7F, 0xFF]  # S.1111.111 only
    assert not torch.isinf(e4m3).any()
    assert e5m2[0x7C] == math.inf and e5m2[0xFC] == -math.inf
    assert torch.isnan(e5m2).nonzero().flatten().tolist() == [0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF]
    for fmt in (FP6_E3M2, FP6_E2M3, FP4_E2M1):
        assert torch.isfinite(fmt.values()).all()


def _edge_values(fmt: FloatFormat) -> torch.Tensor:
    """Every grid value, every midpoint (ties), points just off the midpoints, subnormals and
    values near and beyond the largest finite value, with both signs."""
    grid = fmt.values()[: 2 ** (fmt.bits - 1)]
    grid = grid[torch.isfinite(grid)]
    mids = (grid[1:] + grid[:-1]) / 2
    up, down = torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1)
    tiny = torch.tensor([fmt.min_subnormal * k for k in (0.25, 0.5, 0.75, 1.5, 2.5)])
    top = torch.tensor([fmt.max_value * k for k in (0.999, 1.0, 1.01, 1.5, 10.0)])
    x = torch.cat([grid, mids, up, down, tiny, top, torch.tensor([1e-30, 3.0e38])])
    return torch.cat([x, -x])


@pytest.mark.parametrize(("fmt", "dtype"), TORCH_FP8)
def test_fp8_rounding_is_bit_exact_with_torch_on_edge_values(fmt, dtype):
    """torch's cast rounds to nearest even; beyond the largest finite value it gives NaN or inf,
    so the reference is the cast of the saturated input."""
    x = _edge_values(fmt)
    reference = x.clamp(-fmt.max_value, fmt.max_value).to(dtype)
    assert torch.equal(fmt.to_codes(x), reference.view(torch.uint8))
    assert torch.equal(fmt.round(x), reference.float())


@pytest.mark.parametrize("scale", [1e-4, 1.0, 100.0, 3e4])
@pytest.mark.parametrize(("fmt", "dtype"), TORCH_FP8)
def test_fp8_rounding_is_bit_exact_with_torch_on_random_values(fmt, dtype, scale):
    g = torch.Generator().manual_seed(int(scale * 7) + fmt.bits)
    x = torch.randn(200_000, generator=g) * scale
    x = x * torch.exp2(torch.randint(-12, 12, x.shape, generator=g).float())
    reference = x.clamp(-fmt.max_value, fmt.max_value).to(dtype)
    assert torch.equal(fmt.to_codes(x), reference.view(torch.uint8))


def _brute_force_round(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Nearest code by exhaustive search; ties go to the even code (even mantissa)."""
    table = fmt.values()[: 2 ** (fmt.bits - 1)].double()
    dist = (x.double().abs()[:, None].clamp(max=fmt.max_value) - table[None, :]).abs()
    best = dist.min(dim=1, keepdim=True).values
    candidates = dist == best
    even = candidates & (torch.arange(table.numel()) % 2 == 0)
    code = torch.where(even.any(dim=1), even.int().argmax(dim=1), candidates.int().argmax(dim=1))
    return torch.copysign(table[code].float(), x)


@pytest.mark.parametrize("fmt", [FP6_E3M2, FP6_E2M3, FP4_E2M1], ids=lambda f: f.name)
def test_fp6_fp4_rounding_equals_brute_force(fmt):
    g = torch.Generator().manual_seed(fmt.bits)
    x = torch.cat([_edge_values(fmt), torch.randn(20_000, generator=g) * fmt.max_value / 2])
    assert torch.equal(fmt.round(x), _brute_force_round(x, fmt))


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0.25, 0.0),  # tie between 0 and 0.5: even code 0
        (0.75, 1.0),  # tie between 0.5 (code 1) and 1.0 (code 2)
        (1.25, 1.0),  # tie between 1.0 (code 2) and 1.5 (code 3)
        (2.5, 2.0),  # tie between 2 (code 4) and 3 (code 5)
        (3.5, 4.0),
        (5.0, 4.0),  # tie between 4 (code 6) and 6 (code 7)
        (5.01, 6.0),
        (100.0, 6.0),  # saturates
        (-0.3, -0.5),
    ],
)
def test_fp4_ties_to_even_by_hand(x, expected):
    assert FP4_E2M1.round(torch.tensor([x])).item() == expected


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_codes_round_trip_through_values(fmt):
    finite = torch.isfinite(fmt.values()).nonzero().flatten()
    codes = finite.to(torch.uint8)
    assert torch.equal(fmt.to_codes(fmt.from_codes(codes)), codes)


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(), PerGroup(24)])
def test_scaled_quantization_by_hand(fmt, granularity):
    """scale = absmax / max_value rounded up to fp16; codes = rounding of w / scale; the largest
    magnitude of each group lands exactly on ±max_value·scale's grid point."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(6, 60, generator=g) * torch.logspace(-3, 1, 6)[:, None]
    qw = quantize_weight(W, fmt, granularity)
    if isinstance(granularity, PerTensor):
        absmax = W.abs().amax().reshape(1, 1)
        cols = torch.zeros(60, dtype=torch.long)
    elif isinstance(granularity, PerChannel):
        absmax = W.abs().amax(dim=1, keepdim=True)
        cols = torch.zeros(60, dtype=torch.long)
    else:
        absmax = torch.stack([W[:, i : i + 24].abs().amax(dim=1) for i in (0, 24, 48)], dim=1)
        cols = torch.arange(60) // 24
    target = absmax / fmt.max_value
    stored = target.half()
    up = torch.nextafter(stored, torch.full_like(stored, math.inf))  # the next fp16 above
    stored = torch.where(stored.float() < target, up, stored)
    assert qw.scale.dtype == torch.float16 and torch.equal(qw.scale, stored)
    s = stored.float()[:, cols]
    assert torch.equal(qw.codes, fmt.to_codes(W / s))
    assert torch.equal(qw.dequantize(), fmt.round(W / s) * s)
    assert (qw.dequantize() - W).abs().max() <= (fmt.max_value * s / 2**fmt.mantissa_bits).max()


@pytest.mark.parametrize(("e", "m"), [(4, 4), (1, 2), (3, 3), (0, 3)])
def test_unknown_element_format_lists_the_known_ones(e, m):
    with pytest.raises(ConfigError, match=rf"E{e}M{m}.*known: E4M3, E5M2, E3M2, E2M3, E2M1"):
        FloatFormat(e, m)


def test_bad_scale_dtype_names_the_format():
    with pytest.raises(ConfigError, match="fp4_e2m1.*'float8'"):
        FloatFormat(2, 1, "float8")
