"""SqueezeLLM: sensitivity-weighted per-row tables plus sparse fp16 outliers; the outliers
lower the error, are counted at 48 bits each, and survive packing exactly."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from lowbit.algorithms import SqueezeLLMConfig, squeezellm_quantize
from lowbit.algorithms.squeezellm import dense_range, select_outliers
from lowbit.errors import ConfigError
from lowbit.formats import FORMATS, LUTFormat, PerChannel, PerGroup, PerTensor, quantize_weight
from lowbit.formats.packing import pack_weight, unpack_weight
from lowbit.plan import LayerSpec


@cache
def _layer(seed: int, out_f: int = 64, in_f: int = 256):
    """Heavy-tailed W (Student t, 3 d.o.f.), inputs X with log-normal column scales, and the
    Hessian diagonal E[x²] (in,). Cached: callers must not modify them."""
    g = torch.Generator().manual_seed(seed)
    chi2 = torch.randn(3, out_f, in_f, generator=g).pow(2).mean(dim=0)
    W = torch.randn(out_f, in_f, generator=g) / chi2.sqrt()
    X = torch.randn(4 * in_f, in_f, generator=g) * torch.exp(torch.randn(in_f, generator=g))
    return W, X, X.pow(2).mean(dim=0)


def _weighted_error(W, W_hat, d):
    return float(((W - W_hat) ** 2 * d).sum())


def _output_error(X, W, W_hat):
    return float(((X.double() @ (W - W_hat).double().T) ** 2).sum())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_outliers_lower_the_error(seed, bits):
    W, X, d = _layer(seed)
    errors = {}
    for fraction in (0.0, 0.0045):
        cfg = SqueezeLLMConfig(outlier_fraction=fraction)
        W_hat = squeezellm_quantize(W, d, LUTFormat(bits), PerChannel(), cfg).dequantize()
        errors[fraction] = (_weighted_error(W, W_hat, d), _output_error(X, W, W_hat))
    assert errors[0.0045][0] <= errors[0.0][0]
    assert errors[0.0045][1] <= errors[0.0][1]


@pytest.mark.parametrize("seed", [0, 1])
def test_hessian_sensitivity_beats_plain_kmeans_and_rtn(seed):
    """On its own objective Σ E[x_c²]·(w - ŵ)², which is the layer's output error when the
    inputs are uncorrelated, and on the measured output error."""
    W, X, d = _layer(seed)
    fmt, cfg = LUTFormat(3), SqueezeLLMConfig(outlier_fraction=0.0)
    weighted = squeezellm_quantize(W, d, fmt, PerChannel(), cfg).dequantize()
    plain = squeezellm_quantize(
        W, d, fmt, PerChannel(), SqueezeLLMConfig(outlier_fraction=0.0, sensitivity="uniform")
    ).dequantize()
    rtn = quantize_weight(W, fmt, PerChannel()).dequantize()
    assert _weighted_error(W, weighted, d) < 0.9 * _weighted_error(W, plain, d)
    assert _weighted_error(W, plain, d) < _weighted_error(W, rtn, d)
    assert _output_error(X, W, weighted) < _output_error(X, W, plain)


def test_outliers_are_the_largest_weights_kept_exactly_in_fp16():
    W, _, d = _layer(2)
    cfg = SqueezeLLMConfig(outlier_fraction=0.01)
    qw = squeezellm_quantize(W, d, LUTFormat(3), PerChannel(), cfg)
    index, values = qw.outliers
    assert index.dtype == torch.int32 and values.dtype == torch.float16
    assert index.numel() == round(0.01 * W.numel())
    threshold = W.abs().reshape(-1)[index.long()].min()
    kept = torch.zeros(W.numel(), dtype=torch.bool)
    kept[index.long()] = True
    assert (W.abs().reshape(-1)[~kept] <= threshold).all()
    W_hat = qw.dequantize().reshape(-1)
    assert torch.equal(W_hat[index.long()], W.reshape(-1)[index.long()].half().float())
    # the tables span the dense part only
    lo, hi = dense_range(W, index.long())
    assert (qw.scale.float().amax(dim=1, keepdim=True) <= hi.half().float() + 1e-3).all()
    assert (qw.scale.float().amin(dim=1, keepdim=True) >= lo.half().float() - 1e-3).all()


def test_select_outliers_by_hand():
    W = torch.tensor([[0.1, -5.0, 0.3], [2.0, 0.0, -2.0]])
    assert select_outliers(W, 3).tolist() == [1, 3, 5]
    assert select_outliers(W, 0).numel() == 0


@pytest.mark.parametrize(
    ("granularity", "bits", "out_f", "in_f", "fraction", "bpw"),
    [
        # 3-bit codes + a 8-entry fp16 table per row + ⌊0.0045·16384⌉ = 74 outliers at 48 bits
        (PerChannel(), 3, 64, 256, 0.0045, 3 + 8 * 16 / 256 + 74 * 48 / 16384),
        (PerChannel(), 4, 32, 128, 0.0, 4 + 16 * 16 / 128),
        # per tensor: one 4-entry table; ⌊0.01·4096⌉ = 41 outliers
        (PerTensor(), 2, 32, 128, 0.01, 2 + 4 * 16 / 4096 + 41 * 48 / 4096),
    ],
)
def test_bits_per_weight_by_hand(granularity, bits, out_f, in_f, fraction, bpw):
    W, _, d = _layer(3, out_f, in_f)
    cfg = SqueezeLLMConfig(outlier_fraction=fraction)
    qw = squeezellm_quantize(W, d, LUTFormat(bits), granularity, cfg)
    assert qw.bits_per_weight() == pytest.approx(bpw, rel=1e-12)
    spec = LayerSpec(LUTFormat(bits), granularity, cfg)
    assert spec.bits_per_weight(out_f, in_f) == pytest.approx(bpw, rel=1e-12)


@pytest.mark.parametrize("granularity", [PerChannel(), PerTensor()], ids=["channel", "tensor"])
def test_packing_round_trips_outliers_exactly(granularity):
    W, _, d = _layer(4)
    qw = squeezellm_quantize(W, d, LUTFormat(3), granularity, SqueezeLLMConfig())
    packed = pack_weight(qw)
    assert packed["outlier_index"].dtype == torch.int32
    assert packed["outlier_value"].dtype == torch.float16
    back = unpack_weight(packed, qw.fmt, granularity, qw.shape)
    assert torch.equal(back.dequantize(), qw.dequantize())
    assert back.n_bits() == qw.n_bits()


def test_inputs_are_not_modified_and_results_are_deterministic():
    W, _, d = _layer(5)
    W0, d0 = W.clone(), d.clone()
    a = squeezellm_quantize(W, d, LUTFormat(3), PerChannel(), SqueezeLLMConfig())
    b = squeezellm_quantize(W, d, LUTFormat(3), PerChannel(), SqueezeLLMConfig())
    assert torch.equal(W, W0) and torch.equal(d, d0)
    assert torch.equal(a.dequantize(), b.dequantize())


@pytest.mark.parametrize("name", ["nf4", "mxfp4", "int"])
def test_non_lut_formats_are_refused_by_name(name):
    fmt = FORMATS.get(name)(4) if name == "int" else FORMATS.get(name)()
    with pytest.raises(
        ConfigError, match=f"algorithm 'squeezellm' does not support format '{fmt.name}'.*lut"
    ):
        squeezellm_quantize(torch.randn(4, 32), None, fmt, PerGroup(32), SqueezeLLMConfig())
    with pytest.raises(ConfigError, match="'squeezellm' does not support"):
        LayerSpec(fmt, PerGroup(32), SqueezeLLMConfig())


def test_lut_groups_are_refused():
    with pytest.raises(ConfigError, match="per-channel"):
        squeezellm_quantize(torch.randn(4, 32), None, LUTFormat(3), PerGroup(8), SqueezeLLMConfig())
