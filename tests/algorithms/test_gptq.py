"""GPTQ: never worse than RTN on the layer output, exactly RTN when the inputs are white, and its
saved codes, scales and permutation dequantize to exactly what its sweep computed."""

from __future__ import annotations

from functools import cache

import pytest
import torch

import lowbit.algorithms.gptq as gptq_module
from lowbit.algorithms import ActOrder, GPTQConfig, gptq_quantize, rtn_quantize
from lowbit.formats import IntFormat, PerChannel, PerGroup, PerTensor

ACT_ORDERS = [pytest.param(a, id=a.value) for a in ActOrder]
SYMMETRIC = [pytest.param(True, id="sym"), pytest.param(False, id="asym")]
# (granularity, out_features, in_features, block_size)
CASES = [
    pytest.param(PerChannel(), 48, 64, 128, id="channel-48x64"),
    pytest.param(PerTensor(), 32, 64, 16, id="tensor-32x64-block16"),
    pytest.param(PerGroup(32), 64, 128, 128, id="g32-64x128"),
    pytest.param(PerGroup(48), 32, 128, 32, id="g48-32x128-block32"),  # 48 does not divide 128
    pytest.param(PerGroup(100), 96, 192, 128, id="g100-96x192"),  # nor does 100 divide 192
]


@cache
def _problem(seed: int, out_f: int, in_f: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W (out, in), inputs X (n, in) with strongly correlated columns of unequal scales, and
    H = XᵀX / n. Cached: callers must not modify them."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    n = 2 * in_f
    X = torch.randn(n, 8, generator=g) @ torch.randn(8, in_f, generator=g)  # rank-8 structure
    X = X + 0.3 * torch.randn(n, in_f, generator=g)
    X = X * torch.exp(0.5 * torch.randn(in_f, generator=g))
    return W, X, X.T @ X / n


def _output_error(X: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """‖XWᵀ − XŴᵀ‖² in float64."""
    return float(((X.double() @ (W.double() - W_hat.double()).T) ** 2).sum())


@pytest.mark.parametrize("act_order", ACT_ORDERS)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize(("granularity", "out_f", "in_f", "block_size"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_never_worse_than_rtn_on_the_layer_output(
    seed, granularity, out_f, in_f, block_size, symmetric, bits, act_order
):
    W, X, H = _problem(seed, out_f, in_f)
    fmt = IntFormat(bits, symmetric)
    result = gptq_quantize(
        W, H, fmt, granularity, GPTQConfig(block_size=block_size, act_order=act_order)
    )
    qw = result.weight
    rtn_error = _output_error(X, W, rtn_quantize(W, fmt, granularity).dequantize())
    gptq_error = _output_error(X, W, qw.dequantize())
    assert gptq_error < rtn_error
    assert qw.shape == (out_f, in_f)
    assert int(qw.codes.min()) >= fmt.qmin and int(qw.codes.max()) <= fmt.qmax
    assert result.damp == 0.01 and result.loss > 0


@pytest.mark.parametrize("act_order", ACT_ORDERS)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize(("granularity", "out_f", "in_f", "block_size"), CASES)
def test_white_inputs_give_exactly_rtn(
    granularity, out_f, in_f, block_size, symmetric, bits, act_order
):
    """With H = I nothing can be compensated: every column rounds to nearest on RTN's grid."""
    W, _, _ = _problem(2, out_f, in_f)
    fmt = IntFormat(bits, symmetric)
    cfg = GPTQConfig(block_size=block_size, act_order=act_order)
    qw = gptq_quantize(W, torch.eye(in_f), fmt, granularity, cfg).weight
    rtn = rtn_quantize(W, fmt, granularity)
    assert torch.equal(qw.dequantize(), rtn.dequantize())
    assert torch.equal(qw.scale, rtn.scale)


def _sweep_order(H: torch.Tensor, act_order: ActOrder, granularity=None) -> torch.Tensor:
    if act_order is ActOrder.OFF:
        return torch.arange(H.shape[0])
    d = torch.diag(H)
    if act_order is ActOrder.GROUP_AWARE and isinstance(granularity, PerGroup):
        groups = list(torch.arange(H.shape[0]).split(granularity.size))
        groups.sort(key=lambda cols: -float(d[cols].sum()))  # sort() is stable
        return torch.cat(
            [cols[torch.argsort(d[cols], descending=True, stable=True)] for cols in groups]
        )
    return torch.argsort(d, descending=True, stable=True)


@pytest.mark.parametrize("act_order", ACT_ORDERS)
@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize(("granularity", "out_f", "in_f", "block_size"), CASES)
def test_saved_weight_is_what_the_sweep_computed(
    granularity, out_f, in_f, block_size, symmetric, act_order, monkeypatch
):
    """Record the dequantized column the sweep compares against at each step; the saved codes,
    scales, zero points and permutation must give back exactly those values, at the original
    column each step worked on."""
    computed: list[torch.Tensor] = []
    original = gptq_module.codes_to_values

    def recording(q, scale, zero):
        values = original(q, scale, zero)
        computed.append(values.clone())
        return values

    monkeypatch.setattr(gptq_module, "codes_to_values", recording)
    W, _, H = _problem(3, out_f, in_f)
    cfg = GPTQConfig(block_size=block_size, act_order=act_order)
    qw = gptq_quantize(W, H, IntFormat(3, symmetric), granularity, cfg).weight

    order = _sweep_order(H, act_order, granularity)
    assert not torch.equal(order, torch.arange(in_f)) or act_order is ActOrder.OFF
    sweep = torch.stack(computed, dim=1)  # (out, in): step k worked on original column order[k]
    assert sweep.shape == (out_f, in_f)
    assert torch.equal(qw.dequantize()[:, order], sweep)


@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize(
    ("granularity", "out_f", "in_f", "block_size"),
    [c for c in CASES if isinstance(c.values[0], PerGroup)],
)
def test_group_act_order_saves_the_permutation(granularity, out_f, in_f, block_size, symmetric):
    """Storage column j is original column perm[j]; its group is j // size (groups are formed in
    sweep order); reconstruct Ŵ independently by gathering, not scattering."""
    W, _, H = _problem(4, out_f, in_f)
    fmt = IntFormat(3, symmetric)
    cfg = GPTQConfig(block_size=block_size, act_order=ActOrder.GROUP)
    qw = gptq_quantize(W, H, fmt, granularity, cfg).weight

    perm = qw.perm
    assert perm is not None
    assert torch.equal(perm, torch.argsort(torch.diag(H), descending=True, stable=True))
    assert torch.equal(torch.sort(perm).values, torch.arange(in_f))
    assert qw.scale.shape == (out_f, granularity.groups(in_f))

    storage_group = torch.arange(in_f) // granularity.size
    zero = 0.0 if qw.zero is None else qw.zero.float()[:, storage_group]
    in_storage_order = (qw.codes.float() - zero) * qw.scale.float()[:, storage_group]
    position = torch.argsort(perm)  # original column c sits at storage column position[c]
    assert torch.equal(qw.dequantize(), in_storage_order[:, position])

    expected_bits = fmt.bits_per_weight(in_f, granularity, out_f) + 32 / out_f
    assert qw.bits_per_weight() == pytest.approx(expected_bits, rel=1e-12)


@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize(
    ("granularity", "out_f", "in_f", "block_size"),
    [c for c in CASES if isinstance(c.values[0], PerGroup)],
)
def test_static_act_order_keeps_rtn_groups_and_no_permutation(
    granularity, out_f, in_f, block_size, symmetric
):
    W, _, H = _problem(5, out_f, in_f)
    fmt = IntFormat(3, symmetric)
    cfg = GPTQConfig(block_size=block_size, act_order=ActOrder.STATIC)
    qw = gptq_quantize(W, H, fmt, granularity, cfg).weight
    rtn = rtn_quantize(W, fmt, granularity)
    assert qw.perm is None
    assert torch.equal(qw.scale, rtn.scale)  # scales chosen up front on the original weight
    if qw.zero is not None:
        assert torch.equal(qw.zero, rtn.zero)
    assert not torch.equal(qw.codes, rtn.codes)  # ... but the codes were chosen by GPTQ
    assert qw.bits_per_weight() == fmt.bits_per_weight(in_f, granularity, out_f)


@pytest.mark.parametrize("act_order", ACT_ORDERS)
@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize(
    "granularity", [PerChannel(), PerGroup(16), PerGroup(24)], ids=["channel", "g16", "g24"]
)
def test_dead_inputs_give_zero_weights(granularity, symmetric, act_order):
    """Columns whose input is always zero (H_ii = 0) are set to exactly zero, and the live
    columns are still quantized well."""
    g = torch.Generator().manual_seed(6)
    W = torch.randn(16, 64, generator=g)
    X = torch.randn(256, 64, generator=g)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[[0, 5, 17, 40, 63]] = True
    X[:, dead] = 0.0
    H = X.T @ X / 256
    fmt = IntFormat(4, symmetric)
    qw = gptq_quantize(W, H, fmt, granularity, GPTQConfig(act_order=act_order)).weight
    W_hat = qw.dequantize()
    assert torch.equal(W_hat[:, dead], torch.zeros(16, int(dead.sum())))
    assert torch.isfinite(W_hat).all()
    assert int(qw.codes.min()) >= fmt.qmin and int(qw.codes.max()) <= fmt.qmax
    rtn_error = _output_error(X, W, rtn_quantize(W, fmt, granularity).dequantize())
    assert _output_error(X, W, W_hat) <= rtn_error


def test_inputs_are_not_modified():
    W, _, H = _problem(0, 48, 64)
    W0, H0 = W.clone(), H.clone()
    gptq_quantize(W, H, IntFormat(3), PerGroup(16), GPTQConfig(act_order=ActOrder.GROUP))
    assert torch.equal(W, W0) and torch.equal(H, H0)


def test_a_format_gptq_cannot_handle_is_refused_by_name():
    from dataclasses import dataclass

    from lowbit.errors import ConfigError

    @dataclass(frozen=True)
    class Ternary:
        name = "ternary"
        bits = 2

    W = torch.randn(4, 32)
    with pytest.raises(
        ConfigError, match="algorithm 'gptq' does not support format 'ternary'.*rtn"
    ):
        gptq_quantize(W, torch.eye(32), Ternary(), PerGroup(16), GPTQConfig())
