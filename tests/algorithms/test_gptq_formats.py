"""GPTQ with every weight format, and group-aware reordering (act-order ``group_aware``): the
saved weight dequantizes to exactly the values the sweep rounded to, never worse than RTN, exactly
RTN when the inputs are white, group parameters chosen where each act order says."""

from __future__ import annotations

from functools import cache

import pytest
import torch

import lowbit.algorithms.gptq_grid as grid_module
from lowbit.algorithms import ActOrder, GPTQConfig, gptq_quantize, rtn_quantize
from lowbit.algorithms.gptq import sweep_layout
from lowbit.formats import FORMATS, IntFormat, LUTFormat, PerChannel, PerGroup, PerTensor
from lowbit.formats.clipping import minmax_range
from lowbit.formats.codebook import fit_table

ACT_ORDERS = [pytest.param(a, id=a.value) for a in ActOrder]
# (format, granularity); 48 does not divide 128, so NF4 has a short last group
FORMAT_CASES = [
    pytest.param(FORMATS.get("fp4_e2m1")(), PerGroup(32), id="fp4-g32"),
    pytest.param(FORMATS.get("fp8_e4m3")(), PerChannel(), id="fp8e4m3-channel"),
    pytest.param(FORMATS.get("fp6_e3m2")(), PerTensor(), id="fp6e3m2-tensor"),
    pytest.param(FORMATS.get("nf4")(), PerGroup(48), id="nf4-g48"),
    pytest.param(FORMATS.get("mxfp4")(), PerGroup(32), id="mxfp4"),
    pytest.param(FORMATS.get("mxint8")(), PerGroup(32), id="mxint8"),
    pytest.param(FORMATS.get("nvfp4")(), PerGroup(16), id="nvfp4"),
    pytest.param(LUTFormat(3), PerChannel(), id="lut3-channel"),
    pytest.param(LUTFormat(2), PerTensor(), id="lut2-tensor"),
]


@cache
def _problem(seed: int, out_f: int = 48, in_f: int = 128, skew: float = 0.5):
    """W (out, in), correlated inputs X (n, in) of unequal column scales (log-normal with
    ``skew``), H = XᵀX / n. Cached: callers must not modify them."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    n = 4 * in_f
    X = torch.randn(n, 16, generator=g) @ torch.randn(16, in_f, generator=g)
    X = (X + 0.5 * torch.randn(n, in_f, generator=g)) * torch.exp(
        skew * torch.randn(in_f, generator=g)
    )
    return W, X, X.T @ X / n


def _output_error(X: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor) -> float:
    return float(((X.double() @ (W.double() - W_hat.double()).T) ** 2).sum())


@pytest.mark.parametrize("act_order", ACT_ORDERS)
@pytest.mark.parametrize(("fmt", "granularity"), FORMAT_CASES)
def test_saved_weight_is_what_the_sweep_rounded_to(fmt, granularity, act_order, monkeypatch):
    """Record every column value the sweep compared against; ``dequantize()`` of the saved
    codes and parameters gives exactly those, at the original column of each step."""
    computed: list[torch.Tensor] = []
    original = grid_module.FormatGrid.column

    def recording(self, w, g):
        q, value = original(self, w, g)
        computed.append(value.clone())
        return q, value

    monkeypatch.setattr(grid_module.FormatGrid, "column", recording)
    W, X, H = _problem(0)
    result = gptq_quantize(W, H, fmt, granularity, GPTQConfig(act_order=act_order))
    qw = result.weight
    layout = sweep_layout(torch.diag(H), granularity, act_order)
    order = torch.arange(W.shape[1]) if layout.order is None else layout.order
    assert torch.equal(qw.dequantize()[:, order], torch.stack(computed, dim=1))
    assert torch.isfinite(qw.dequantize()).all()

    rtn = rtn_quantize(W, fmt, granularity)
    assert _output_error(X, W, qw.dequantize()) < 0.5 * _output_error(X, W, rtn.dequantize())
    assert qw.scale.dtype == rtn.scale.dtype and qw.codes.dtype == rtn.codes.dtype
    saves_perm = act_order is ActOrder.GROUP and isinstance(granularity, PerGroup)
    assert (qw.perm is not None) == saves_perm
    extra = 32 / W.shape[0] if saves_perm else 0.0
    assert qw.bits_per_weight() == pytest.approx(rtn.bits_per_weight() + extra, rel=1e-12)


@pytest.mark.parametrize("act_order", ACT_ORDERS)
@pytest.mark.parametrize(("fmt", "granularity"), FORMAT_CASES)
def test_white_inputs_give_exactly_rtn(fmt, granularity, act_order):
    """With H = I nothing can be compensated: each column rounds to the nearest value of RTN's
    grid (LUT: GPTQ's tables, weighted by a flat diagonal, are RTN's tables)."""
    W, _, _ = _problem(1)
    cfg = GPTQConfig(act_order=act_order)
    qw = gptq_quantize(W, torch.eye(W.shape[1]), fmt, granularity, cfg).weight
    rtn = rtn_quantize(W, fmt, granularity)
    assert torch.equal(qw.dequantize(), rtn.dequantize())
    assert torch.equal(qw.scale.float(), rtn.scale.float())


@pytest.mark.parametrize(
    ("fmt", "granularity"), [c for c in FORMAT_CASES if isinstance(c.values[1], PerGroup)]
)
def test_static_keeps_rtns_parameters_and_dynamic_orders_choose_their_own(fmt, granularity):
    W, _, H = _problem(2)
    rtn = rtn_quantize(W, fmt, granularity)
    static = gptq_quantize(W, H, fmt, granularity, GPTQConfig(act_order=ActOrder.STATIC)).weight
    assert torch.equal(static.scale.float(), rtn.scale.float())
    assert not torch.equal(static.codes, rtn.codes)
    for act_order in (ActOrder.OFF, ActOrder.GROUP_AWARE):
        cfg = GPTQConfig(act_order=act_order)
        dynamic = gptq_quantize(W, H, fmt, granularity, cfg).weight
        if fmt.name != "mxint8":  # MXINT8's power-of-two scales rarely move on these weights
            assert not torch.equal(dynamic.scale.float(), rtn.scale.float())
        assert dynamic.perm is None


@pytest.mark.parametrize("act_order", ACT_ORDERS)
def test_nvfp4_tensor_scale_is_chosen_up_front(act_order):
    W, _, H = _problem(3)
    fmt = FORMATS.get("nvfp4")()
    qw = gptq_quantize(W, H, fmt, PerGroup(16), GPTQConfig(act_order=act_order)).weight
    assert float(qw.tensor_scale) == float(W.abs().amax() / (448 * 6))


def test_lut_tables_are_fitted_up_front_weighted_by_the_hessian_diagonal():
    W, _, H = _problem(4)
    fmt = LUTFormat(3)
    qw = gptq_quantize(W, H, fmt, PerChannel(), GPTQConfig()).weight
    lo, hi = minmax_range(W, PerChannel())
    weights = torch.diag(H).expand_as(W)
    table = fit_table(W, lo, hi, 3, fmt.iterations, torch.float16, weights)
    assert torch.equal(qw.scale, table.half())
    unweighted = rtn_quantize(W, fmt, PerChannel())
    assert not torch.equal(qw.scale, unweighted.scale)


def test_mxint8_never_uses_code_minus_128():
    """The MX encoder clamps INT8 elements to ±127; GPTQ's grid stops there too."""
    W, _, H = _problem(5)
    qw = gptq_quantize(
        W * 100, H, FORMATS.get("mxint8")(), PerGroup(32), GPTQConfig(act_order="off")
    ).weight
    assert int(qw.codes.min()) >= -127


# --- group-aware reordering ------------------------------------------------------------------


def test_group_aware_order_by_hand():
    """Groups of 2 over 5 columns (the last has one); group sums 3, 9, 4 → groups 1, 2, 0; inside
    each group by decreasing diagonal."""
    diag = torch.tensor([1.0, 2.0, 4.0, 5.0, 4.0])
    layout = sweep_layout(diag, PerGroup(2), ActOrder.GROUP_AWARE)
    assert layout.order.tolist() == [3, 2, 4, 1, 0]
    assert layout.group_of == [1, 1, 2, 0, 0]
    assert layout.starts == {0: 2, 2: 1, 3: 2}
    assert not layout.saves_perm


@pytest.mark.parametrize("granularity", [PerGroup(32), PerGroup(48)], ids=["g32", "g48"])
@pytest.mark.parametrize("fmt", [IntFormat(3), IntFormat(4, False), FORMATS.get("nf4")()])
def test_group_aware_stores_no_permutation_and_beats_rtn(fmt, granularity):
    W, X, H = _problem(6)
    qw = gptq_quantize(W, H, fmt, granularity, GPTQConfig(act_order="group_aware")).weight
    rtn = rtn_quantize(W, fmt, granularity)
    assert qw.perm is None
    assert qw.bits_per_weight() == rtn.bits_per_weight()
    assert _output_error(X, W, qw.dequantize()) <= _output_error(X, W, rtn.dequantize())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fmt", [IntFormat(3), FORMATS.get("mxfp4")()], ids=["int3", "mxfp4"])
def test_group_aware_beats_natural_order_on_a_skewed_hessian(fmt, seed):
    """Input columns whose scales spread over e^±3: quantizing the heavy groups first leaves
    the light ones to absorb the error (measured: 0.15 to 0.56 of act-order off's error)."""
    W, X, H = _problem(10 + seed, 64, 128, skew=1.5)
    errors = {
        a: _output_error(
            X,
            W,
            gptq_quantize(W, H, fmt, PerGroup(32), GPTQConfig(act_order=a)).weight.dequantize(),
        )
        for a in (ActOrder.OFF, ActOrder.GROUP_AWARE)
    }
    assert errors[ActOrder.GROUP_AWARE] < 0.7 * errors[ActOrder.OFF]


def test_group_aware_weights_are_exported_as_plain_groups():
    """No permutation is stored, so neither exporter refuses it: INT4 g32 maps onto Q4_0."""
    from lowbit.export.ct_writers import problem as _unsupported
    from lowbit.export.gguf_file import gguf_type_name

    W, _, H = _problem(7, 16, 128)
    cfg = GPTQConfig(act_order=ActOrder.GROUP_AWARE)
    qw = gptq_quantize(W, H, IntFormat(4), PerGroup(32), cfg).weight
    assert gguf_type_name(qw) == "Q4_0"
    assert _unsupported(qw) is None
    grouped = gptq_quantize(W, H, IntFormat(4), PerGroup(32), GPTQConfig(act_order="group")).weight
    assert gguf_type_name(grouped) is None and "permutation" in _unsupported(grouped)
