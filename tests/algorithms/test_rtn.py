"""RTN: every weight goes to the nearest point of its group's min-max grid."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import rtn_quantize
from lowbit.formats import IntFormat, PerChannel, PerGroup, PerTensor, choose_qparams, group_index

GRANULARITIES = [
    pytest.param(PerTensor(), id="tensor"),
    pytest.param(PerChannel(), id="channel"),
    pytest.param(PerGroup(16), id="g16"),
    pytest.param(PerGroup(24), id="g24"),  # does not divide 80
]
SYMMETRIC = [pytest.param(True, id="sym"), pytest.param(False, id="asym")]


def _weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(10, 80, generator=g) * torch.exp(torch.randn(10, 1, generator=g))
    W[2] = W[2].abs()  # one all-positive row
    return W


@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16", "float32"])
def test_layout_and_dtypes(scale_dtype, granularity, symmetric):
    fmt = IntFormat(4, symmetric, scale_dtype)
    qw = rtn_quantize(_weight(), fmt, granularity)
    rows = 1 if isinstance(granularity, PerTensor) else 10
    groups = 1 if isinstance(granularity, PerTensor) else granularity.groups(80)
    assert qw.codes.dtype == fmt.code_dtype and qw.codes.shape == (10, 80)
    assert qw.scale.dtype == fmt.torch_scale_dtype and qw.scale.shape == (rows, groups)
    if symmetric:
        assert qw.zero is None
    else:
        assert qw.zero.dtype == fmt.code_dtype and qw.zero.shape == (rows, groups)
        assert int(qw.zero.min()) >= 0 and int(qw.zero.max()) <= fmt.qmax
    assert qw.perm is None and qw.fmt == fmt and qw.granularity == granularity
    assert int(qw.codes.min()) >= fmt.qmin and int(qw.codes.max()) <= fmt.qmax


@pytest.mark.parametrize("step", [-1, 1])
@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_each_weight_goes_to_the_nearest_grid_point(bits, granularity, symmetric, step):
    """The neighbouring code (one down or one up, inside the range) is never closer."""
    W = _weight(bits)
    qw = rtn_quantize(W, IntFormat(bits, symmetric), granularity)
    g_idx = group_index(80, granularity)
    s = qw.scale.float()[:, g_idx]
    z = 0.0 if qw.zero is None else qw.zero.float()[:, g_idx]
    q = qw.codes.float()
    err = (W - (q - z) * s).abs()
    other = (q + step).clamp(qw.fmt.qmin, qw.fmt.qmax)
    assert torch.all(err <= (W - (other - z) * s).abs() * (1 + 1e-6) + 1e-12)


@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_matches_the_format_primitives(granularity, symmetric):
    W = _weight(1)
    fmt = IntFormat(3, symmetric)
    g_idx = group_index(80, granularity)
    scale, zero = choose_qparams(
        W, fmt, g_idx, granularity.groups(80), per_tensor=isinstance(granularity, PerTensor)
    )
    z = None if zero is None else zero[:, g_idx]
    codes = torch.round(W / scale[:, g_idx])
    if z is not None:
        codes = codes + z
    codes = codes.clamp(fmt.qmin, fmt.qmax)
    qw = rtn_quantize(W, fmt, granularity)
    assert torch.equal(qw.codes.float(), codes)
    assert torch.equal(qw.scale.float(), scale)
    expected = (codes - (0.0 if z is None else z)) * scale[:, g_idx]
    assert torch.equal(qw.dequantize(), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_quantized_as_their_fp32_values(dtype):
    W = _weight(2).to(dtype)
    W0 = W.clone()
    qw = rtn_quantize(W, IntFormat(4), PerGroup(16))
    ref = rtn_quantize(W.float(), IntFormat(4), PerGroup(16))
    assert torch.equal(qw.codes, ref.codes) and torch.equal(qw.scale, ref.scale)
    assert torch.equal(W, W0)


# --- any format, any clipping ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "granularity"),
    [
        ("fp8_e4m3", (), PerChannel()),
        ("fp4_e2m1", (), PerGroup(16)),
        ("nf4", (), PerGroup(16)),
        ("lut", (3,), PerChannel()),
        ("mxfp4", (), PerGroup(32)),
        ("mxint8", (), PerGroup(32)),
        ("nvfp4", (), PerGroup(16)),
    ],
)
def test_rtn_takes_any_format(name, args, granularity):
    from lowbit.formats import FORMATS, quantize_weight

    fmt = FORMATS.get(name)(*args)
    W = _weight()[:, :64]
    qw = rtn_quantize(W, fmt, granularity)
    assert qw.fmt == fmt and qw.shape == (10, 64)
    reference = quantize_weight(W, fmt, granularity)
    assert torch.equal(qw.dequantize(), reference.dequantize())
    rel = float(((W - qw.dequantize()) ** 2).sum() / (W**2).sum())
    assert rel < 0.05  # every 3-bit-or-more format keeps 95% of the energy


def test_rtn_clipping_is_applied():
    from lowbit.formats import MSEClip

    W = _weight(5)
    fmt = IntFormat(3)
    plain = rtn_quantize(W, fmt, PerGroup(16))
    clipped = rtn_quantize(W, fmt, PerGroup(16), MSEClip())
    assert ((W - clipped.dequantize()) ** 2).sum() < ((W - plain.dequantize()) ** 2).sum()


def test_rtn_names_the_layer_with_bad_weights():
    from lowbit.errors import DataError

    W = _weight()
    W[0, 0] = float("nan")
    with pytest.raises(DataError, match="'mlp.down_proj'"):
        rtn_quantize(W, IntFormat(4), PerChannel(), name="mlp.down_proj")
