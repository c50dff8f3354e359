"""Integer formats: the min-max grid (exact on grid values, within half a step elsewhere), its
storable scales, and the bits-per-weight arithmetic."""

from __future__ import annotations

import re

import pytest
import torch

from lowbit.algorithms import rtn_quantize
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, PerChannel, PerGroup, PerTensor, choose_qparams, group_index
from lowbit.formats.integer import codes_to_values, quantize_to_codes

BITS = [2, 3, 4, 5, 6, 7, 8]
# (out, in) shapes with each granularity; 40 does not divide 96 (last group 16 wide)
GRANULARITIES = [
    pytest.param(PerTensor(), id="tensor"),
    pytest.param(PerChannel(), id="channel"),
    pytest.param(PerGroup(32), id="g32"),
    pytest.param(PerGroup(40), id="g40"),
]
OUT, IN = 12, 96


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _column_scale(qw) -> torch.Tensor:
    """The stored scale of every weight (out, in), in fp32."""
    g_idx = group_index(qw.shape[1], qw.granularity)
    return qw.scale.float()[:, g_idx].expand(qw.shape)


def _error_bound(W: torch.Tensor, qw) -> torch.Tensor:
    """|W − Ŵ| bound per weight: half a step, except (extreme rule) weights on the side opposite
    to their group's extreme beyond the last code there, clipped by less than one step."""
    s = _column_scale(qw)
    half = s.abs() / 2 * (1 + 1e-6) + 1e-12
    if qw.zero is not None:
        return half
    opposite = (W / s) > qw.fmt.qmax + 0.5  # on the code side +qmax, beyond it
    return torch.where(opposite, 2 * half, half)


def _mixed_weight(seed: int) -> torch.Tensor:
    """Rows drawn from different distributions: normal, all-positive, all-negative, outliers."""
    g = _gen(seed)
    W = torch.randn(OUT, IN, generator=g)
    W[1:4] = torch.rand(3, IN, generator=g)
    W[4:6] = -torch.rand(2, IN, generator=g) * 0.01
    W[6:9] *= torch.exp(2 * torch.randn(3, IN, generator=g))
    W[9] *= 1e-3
    return W


def _mse(W: torch.Tensor, fmt: IntFormat, granularity) -> float:
    return float(((W - rtn_quantize(W, fmt, granularity).dequantize()) ** 2).mean())


# --- the format itself ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
def test_code_ranges(bits):
    sym, asym = IntFormat(bits, True), IntFormat(bits, False)
    assert (sym.qmin, sym.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert (asym.qmin, asym.qmax) == (0, 2**bits - 1)
    assert sym.qmax - sym.qmin == asym.qmax - asym.qmin == 2**bits - 1
    assert (sym.name, asym.name) == (f"int{bits}", f"uint{bits}")
    assert (sym.zero_bits, asym.zero_bits) == (0, bits)


@pytest.mark.parametrize(
    ("scale_dtype", "scale_bits"), [("float16", 16), ("bfloat16", 16), ("float32", 32)]
)
def test_scale_bits(scale_dtype, scale_bits):
    assert IntFormat(4, scale_dtype=scale_dtype).scale_bits == scale_bits


@pytest.mark.parametrize("bits", [1, 9, 0, -4, True, 4.0])
def test_invalid_bits_name_the_value(bits):
    with pytest.raises(ConfigError, match=re.escape(f"got {bits!r}")):
        IntFormat(bits)


def test_invalid_scale_dtype_names_the_value():
    with pytest.raises(ConfigError, match="'float8'"):
        IntFormat(4, scale_dtype="float8")


# --- bits per weight ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "granularity", "in_features", "out_features", "expected"),
    [
        (IntFormat(4), PerGroup(64), 4096, 1, 4.25),
        (IntFormat(4, symmetric=False), PerGroup(64), 4096, 1, 4 + 20 / 64),
        (IntFormat(4, symmetric=False), PerGroup(64), 4096, 1, 4.3125),
        (IntFormat(4), PerGroup(128), 4096, 1, 4.125),
        (IntFormat(3, symmetric=False), PerGroup(128), 4096, 1, 3 + 19 / 128),
        (IntFormat(4), PerChannel(), 576, 1536, 4 + 16 / 576),
        (IntFormat(8, symmetric=False), PerChannel(), 1024, 7, 8 + 24 / 1024),
        (IntFormat(4), PerTensor(), 64, 32, 4 + 16 / (64 * 32)),
        (IntFormat(4, scale_dtype="float32"), PerGroup(32), 256, 1, 5.0),
        (IntFormat(2, scale_dtype="bfloat16"), PerGroup(16), 256, 1, 3.0),
    ],
)
def test_bits_per_weight_arithmetic(fmt, granularity, in_features, out_features, expected):
    assert fmt.bits_per_weight(in_features, granularity, out_features) == expected


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_bits_per_weight_non_dividing_groups(bits, symmetric):
    fmt = IntFormat(bits, symmetric)
    zero_bits = 0 if symmetric else bits
    assert fmt.bits_per_weight(576, PerGroup(128)) == bits + 5 * (16 + zero_bits) / 576


# --- choose_qparams: storable min-max scales ----------------------------------------------------


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_scale_is_the_smallest_storable_value_covering_the_range(scale_dtype, symmetric):
    fmt = IntFormat(4, symmetric, scale_dtype)
    W = _mixed_weight(0)
    g_idx = group_index(IN, PerGroup(32))
    scale, zero = choose_qparams(W, fmt, g_idx, 3)
    groups = W.reshape(OUT, 3, 32)
    wmax, wmin = groups.amax(-1), groups.amin(-1)
    if symmetric:  # the extreme rule: |s| = absmax / 8, negative when the extreme is positive
        exact = torch.maximum(wmax.abs(), wmin.abs()) / 8
        assert torch.equal(scale < 0, wmax.abs() > wmin.abs())
        scale = scale.abs()
    else:
        exact = (wmax.clamp(min=0) - wmin.clamp(max=0)) / 15
    dtype = fmt.torch_scale_dtype
    assert scale.dtype == torch.float32 and scale.shape == (OUT, 3)
    assert torch.equal(scale.to(dtype).float(), scale)  # storable exactly
    assert torch.all(scale >= exact)  # rounded up: the min-max range fits the grid
    below = torch.nextafter(scale.to(dtype), torch.zeros((), dtype=dtype)).float()
    assert torch.all(below < exact)  # ... by the least possible amount
    assert (zero is None) == symmetric


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_tiny_groups_keep_their_own_scale(bits, symmetric):
    """A non-zero group whose scale is below fp16's normal range (6.1e-5) is still quantized on
    its own min-max grid (a subnormal scale, fp16 step 2^-24 there), not zeroed."""
    x = torch.linspace(-1e-4, 1e-4, 32)
    W = torch.stack([x, -0.5 * x])
    qw = rtn_quantize(W, IntFormat(bits, symmetric), PerChannel())
    levels = 2**bits - 1
    absmax = torch.tensor([[1e-4], [0.5e-4]])
    # asymmetric: 2·absmax over `levels` steps; symmetric (extreme rule): absmax on code -2^(b-1)
    exact = absmax / 2 ** (bits - 1) if symmetric else 2 * absmax / levels
    scale = qw.scale.float().abs()
    assert torch.all(scale >= exact) and torch.all(scale <= exact + 2**-24)
    assert torch.all((W - qw.dequantize()).abs() <= _error_bound(W, qw))
    assert int((qw.codes != (0 if symmetric else qw.zero)).sum()) > 32  # codes actually used


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_all_zero_group_gets_scale_one_and_dequantizes_to_zero(granularity, symmetric):
    W = torch.randn(OUT, IN, generator=_gen(1))
    W[:, :40] = 0.0  # group 0 of g32 and of g40
    W[3] = 0.0  # a whole row: one per-channel group
    if isinstance(granularity, PerTensor):
        W.zero_()
    qw = rtn_quantize(W, IntFormat(4, symmetric), granularity)
    Wh = qw.dequantize()
    zero_groups = torch.stack(
        [
            (W[:, group_index(IN, granularity) == g] == 0).all(dim=1)
            for g in range(granularity.groups(IN))
        ],
        dim=1,
    )
    if isinstance(granularity, PerTensor):
        zero_groups = zero_groups.all().reshape(1, 1)
    assert zero_groups.any()
    assert torch.all(qw.scale.float()[zero_groups] == 1.0)
    assert torch.all(qw.scale.float()[~zero_groups] < 1.0)
    assert not torch.isnan(Wh).any()
    assert torch.equal(Wh[W == 0], torch.zeros(int((W == 0).sum())))


# --- the grid: exact on grid values, within half a step elsewhere -------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS)
def test_asymmetric_grid_values_round_trip_exactly(bits, granularity):
    """Every group on its own grid, with both extreme codes: min-max finds the same scale and
    zero, and dequantization gives back the same tensor bit for bit."""
    g = _gen(bits)
    levels = 2**bits - 1
    per_tensor = isinstance(granularity, PerTensor)
    n_groups = granularity.groups(IN)
    g_idx = group_index(IN, granularity)
    shape = (1, 1) if per_tensor else (OUT, n_groups)
    scale = (0.01 + 0.09 * torch.rand(shape, generator=g)).half().float()
    zero = torch.randint(0, levels + 1, shape, generator=g).float()
    codes = torch.randint(0, levels + 1, (OUT, IN), generator=g).float()
    if per_tensor:
        codes[0, 0], codes[-1, -1] = 0, levels
    else:
        first = torch.tensor([int((g_idx == k).nonzero()[0]) for k in range(n_groups)])
        last = torch.tensor([int((g_idx == k).nonzero()[-1]) for k in range(n_groups)])
        codes[:, first], codes[:, last] = 0, levels
    cols = slice(None) if per_tensor else g_idx
    W = (codes - zero[:, cols]) * scale[:, cols]

    qw = rtn_quantize(W, IntFormat(bits, symmetric=False), granularity)

    assert torch.equal(qw.scale.float(), scale)
    assert torch.equal(qw.zero.float(), zero)
    assert torch.equal(qw.codes.float(), codes)
    assert torch.equal(qw.dequantize(), W)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS)
def test_half_step_grid_codes_round_trip_exactly(bits, granularity):
    """The half-step rule maps absmax to (2^b - 1)/2 steps, half a step beyond the largest code,
    so a tensor on a grid q·s is recovered code for code, on the grid of its own min-max scale."""
    g = _gen(bits)
    top = 2 ** (bits - 1) - 1
    per_tensor = isinstance(granularity, PerTensor)
    n_groups = granularity.groups(IN)
    g_idx = group_index(IN, granularity)
    shape = (1, 1) if per_tensor else (OUT, n_groups)
    scale = (0.01 + 0.09 * torch.rand(shape, generator=g)).half().float()
    codes = torch.randint(-top, top + 1, (OUT, IN), generator=g).float()
    codes[:, 0] = top  # every group (and row) reaches the largest code, so absmax = top·s
    codes[:, IN - 1] = -top
    if not per_tensor:
        last = torch.tensor([int((g_idx == k).nonzero()[-1]) for k in range(n_groups)])
        codes[:, last] = top
    cols = slice(None) if per_tensor else g_idx
    W = codes * scale[:, cols]

    qw = rtn_quantize(W, IntFormat(bits, scale_rule="half-step"), granularity)

    stored = _column_scale(qw)
    # -top·s lands exactly on the tie -(top + 1/2) when top·s/(top + 1/2) is storable: round half
    # to even then picks qmin = -(top + 1), also half a step away
    tie = (W / stored) == -(top + 0.5)
    expected = torch.where(tie, float(-(top + 1)), codes)
    assert torch.equal(qw.codes.float(), expected)
    assert torch.equal(qw.dequantize(), expected * stored)
    assert torch.all(qw.scale.float() >= scale * top / (top + 0.5))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_codes_round_trip_every_grid_point_with_a_given_scale(bits, symmetric):
    fmt = IntFormat(bits, symmetric)
    q = torch.arange(fmt.qmin, fmt.qmax + 1, dtype=torch.float32)
    s = torch.tensor(0.0137).half().float()
    z = None if symmetric else torch.tensor(float(2 ** (bits - 1) - 1))
    x = codes_to_values(q, s, z)
    assert torch.equal(x, (q - (0 if z is None else z)) * s)
    assert torch.equal(quantize_to_codes(x, s, z, fmt), q)
    # beyond the grid: clamped to the extreme codes
    wide = torch.tensor([-1e6, 1e6])
    assert quantize_to_codes(wide, s, z, fmt).tolist() == [fmt.qmin, fmt.qmax]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS)
def test_error_within_half_a_step(bits, granularity, symmetric):
    """|W − Ŵ| ≤ s/2 everywhere, including the half-step rule's +absmax clip at 2^(b-1) − 1."""
    W = _mixed_weight(bits)
    qw = rtn_quantize(W, IntFormat(bits, symmetric, scale_rule="half-step"), granularity)
    s = _column_scale(qw)
    err = (W - qw.dequantize()).abs()
    assert torch.all(err <= s / 2 * (1 + 1e-6) + 1e-12)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS)
def test_half_step_positive_extreme_is_clipped_by_at_most_half_a_step(bits, granularity):
    """+absmax lies (2^b − 1)/2 steps out, beyond the largest code 2^(b-1) − 1: it is clipped
    there, and the scale is rounded up to storage precision, so the clip stays within s/2."""
    g = _gen(100 + bits)
    W = torch.rand(OUT, IN, generator=g) * 2 - 1
    W[:, 0] = 1.0 + torch.rand(OUT, generator=g)  # each row's (and each row's group 0's) absmax
    qw = rtn_quantize(W, IntFormat(bits, scale_rule="half-step"), granularity)
    rows = W[:, 0].argmax().reshape(1) if isinstance(granularity, PerTensor) else slice(None)
    s = _column_scale(qw)[rows, 0]
    clip = (W - qw.dequantize())[rows, 0]
    assert torch.all(qw.codes[rows, 0] == 2 ** (bits - 1) - 1)
    assert torch.all(clip > 0)
    assert torch.all(clip <= s / 2 * (1 + 1e-6))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS)
def test_asymmetric_beats_symmetric_on_positive_weights(bits, granularity):
    """On [0, 1] the symmetric grid wastes its negative half: about 4× the MSE of asymmetric."""
    W = torch.rand(OUT, IN, generator=_gen(200 + bits))
    mse_sym = _mse(W, IntFormat(bits, True), granularity)
    mse_asym = _mse(W, IntFormat(bits, False), granularity)
    assert mse_asym < 0.5 * mse_sym


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS[:-1])
def test_more_bits_never_increase_the_error(bits, granularity, symmetric):
    W = _mixed_weight(7)
    assert _mse(W, IntFormat(bits + 1, symmetric), granularity) < _mse(
        W, IntFormat(bits, symmetric), granularity
    )


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_non_dividing_groups_quantize_the_short_group_on_its_own(bits, symmetric):
    """576 inputs in groups of 128: four full groups and one of 64 with its own parameters."""
    fmt = IntFormat(bits, symmetric)
    W = torch.randn(8, 576, generator=_gen(300 + bits))
    W[:, 512:] *= 0.01  # the short group is much smaller: a shared scale would be far too wide
    qw = rtn_quantize(W, fmt, PerGroup(128))
    assert qw.scale.shape == (8, 5)
    assert qw.codes.shape == (8, 576)
    alone = rtn_quantize(W[:, 512:].contiguous(), fmt, PerChannel())
    assert torch.equal(qw.scale[:, 4:], alone.scale)
    assert torch.equal(qw.codes[:, 512:], alone.codes)
    assert torch.equal(qw.dequantize()[:, 512:], alone.dequantize())
    assert torch.all((W - qw.dequantize()).abs() <= _error_bound(W, qw))
    zero_bits = 0 if symmetric else bits
    assert qw.bits_per_weight() == pytest.approx(bits + 5 * (16 + zero_bits) / 576, rel=1e-12)


# --- the extreme scale rule (the default) -------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", BITS)
def test_extreme_rule_puts_each_groups_largest_weight_on_the_lowest_code(bits, granularity):
    """s = m / qmin with m the signed extreme: m has code qmin and is exact up to the scale's
    rounding up to fp16 (relative 2^-10, or fp16's subnormal step 2^-24 per code for tiny
    groups); every other weight is within the error bound."""
    W = _mixed_weight(400 + bits)
    qw = rtn_quantize(W, IntFormat(bits), granularity)
    per_tensor = isinstance(granularity, PerTensor)
    g_idx = torch.zeros(IN, dtype=torch.long) if per_tensor else group_index(IN, granularity)
    groups = [(r, g) for r in range(1 if per_tensor else OUT) for g in range(int(g_idx.max()) + 1)]
    for r, g in groups:
        rows = slice(None) if per_tensor else slice(r, r + 1)
        block = W[rows][:, g_idx == g]
        at = int(block.abs().argmax())
        m = block.flatten()[at]
        code = qw.codes[rows][:, g_idx == g].flatten()[at]
        assert int(code) == qw.fmt.qmin
        assert (
            abs(float(qw.dequantize()[rows][:, g_idx == g].flatten()[at] - m))
            <= abs(float(m)) * 2**-10 + abs(qw.fmt.qmin) * 2**-24
        )
    assert torch.all((W - qw.dequantize()).abs() <= _error_bound(W, qw))


@pytest.mark.parametrize("bits", BITS)
def test_extreme_rule_recovers_a_grid_tensor_exactly(bits):
    """A tensor q·s whose codes reach qmin in every group (s storable, either sign of the
    extreme) comes back code for code with the same |s|."""
    g = _gen(500 + bits)
    fmt = IntFormat(bits)
    scale = (0.01 + 0.09 * torch.rand(OUT, 3, generator=g)).half().float()
    sign = torch.where(torch.rand(OUT, 3, generator=g) < 0.5, -1.0, 1.0)
    codes = torch.randint(fmt.qmin + 1, fmt.qmax + 1, (OUT, IN), generator=g).float()
    codes[:, ::32] = fmt.qmin  # the extreme of every group of 32
    g_idx = group_index(IN, PerGroup(32))
    W = codes * (sign * scale)[:, g_idx]
    qw = rtn_quantize(W, fmt, PerGroup(32))
    assert torch.equal(qw.scale.float(), sign * scale)
    assert torch.equal(qw.codes.float(), codes)
    assert torch.equal(qw.dequantize(), W)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_extreme_rule_has_less_error_than_half_step_on_gaussian_weights(bits):
    """Finer steps (absmax/2^(b-1) against absmax/(2^(b-1) − 1/2)) and no clip of the extreme:
    lower MSE on Gaussian weights in groups of 32."""
    W = torch.randn(256, 512, generator=_gen(600 + bits))
    extreme = _mse(W, IntFormat(bits), PerGroup(32))
    half = _mse(W, IntFormat(bits, scale_rule="half-step"), PerGroup(32))
    assert extreme < half


def test_unknown_scale_rule_is_refused():
    with pytest.raises(ConfigError, match="scale rule 'absmax'.*half-step"):
        IntFormat(4, scale_rule="absmax")
