"""AWQ on tensors: scales, the α search, the clip search, and the gain over RTN on a layer
whose inputs have outlier channels."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import (
    AWQConfig,
    ScaleTarget,
    awq_quantize,
    rtn_quantize,
    search_clip,
    search_scales,
)
from lowbit.algorithms.awq import awq_scales, group_output_errors, output_error
from lowbit.errors import ConfigError
from lowbit.formats import (
    FloatFormat,
    IntFormat,
    MXFormat,
    NF4Format,
    NVFP4Format,
    PerChannel,
    PerGroup,
    PerTensor,
)
from lowbit.formats.clipping import minmax_range

FORMATS = [
    pytest.param(IntFormat(3), PerGroup(32), id="int3-g32"),
    pytest.param(IntFormat(4), PerGroup(32), id="int4-g32"),
    pytest.param(IntFormat(4, symmetric=False), PerChannel(), id="int4-asym-channel"),
    pytest.param(FloatFormat(2, 1), PerGroup(32), id="fp4-g32"),
    pytest.param(NF4Format(), PerGroup(64), id="nf4-g64"),
    pytest.param(MXFormat("fp4_e2m1"), PerGroup(32), id="mxfp4"),
    pytest.param(NVFP4Format(), PerGroup(16), id="nvfp4"),
    pytest.param(FloatFormat(4, 3), PerTensor(), id="fp8-tensor"),
]


def _layer(seed: int = 0, out_f: int = 128, in_f: int = 256, n: int = 2048):
    """W (out, in) and inputs X (n, in) in which 4 of ``in_f`` channels are 50× larger."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g) * 0.05
    X = torch.randn(n, in_f, generator=g) * (0.5 + torch.rand(in_f, generator=g))
    X[:, torch.randperm(in_f, generator=g)[:4]] *= 50.0
    return W, X


def _stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return X.abs().mean(0), X.T @ X / X.shape[0]


def _out_err(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """Mean over tokens of the squared output error, from the inputs themselves."""
    return float((X @ (W - W_hat).T).pow(2).sum(1).mean())


def _awq_effective(W, X, fmt, granularity, cfg=None):
    """The weight a model computes with after AWQ: Q(W·diag(s))·diag(1/s)."""
    cfg = cfg or AWQConfig()
    x_mean, H = _stats(X)
    s = search_scales(x_mean, H, [ScaleTarget(W, fmt, granularity)], cfg.grid).scales
    H_scaled = H / torch.outer(s, s)  # the inputs become x / s once 1/s is folded before
    return awq_quantize(W * s, H_scaled, fmt, granularity, cfg).dequantize() / s


@pytest.mark.parametrize(
    ("fmt", "granularity"),
    [
        pytest.param(IntFormat(3), PerGroup(64), id="int3"),
        pytest.param(IntFormat(4), PerGroup(64), id="int4"),
        pytest.param(FloatFormat(2, 1), PerGroup(32), id="fp4"),
        pytest.param(NVFP4Format(), PerGroup(16), id="nvfp4"),
        pytest.param(NF4Format(), PerGroup(64), id="nf4"),
    ],
)
def test_awq_lowers_the_output_error_against_rtn(fmt, granularity):
    """Measured on the inputs themselves (not on AWQ's own objective)."""
    W, X = _layer()
    rtn = _out_err(W, rtn_quantize(W, fmt, granularity).dequantize(), X)
    awq = _out_err(W, _awq_effective(W, X, fmt, granularity), X)
    assert awq < 0.8 * rtn


def test_scales_follow_llm_awq():
    x_mean = torch.tensor([1e-6, 0.5, 2.0, 8.0])
    assert torch.equal(awq_scales(x_mean, 0.0), torch.ones(4))
    s = awq_scales(x_mean, 0.5)
    raw = x_mean.pow(0.5).clamp(min=1e-4)
    torch.testing.assert_close(s, raw / (raw.max() * raw.min()).sqrt())
    assert float(s.max() * s.min()) == pytest.approx(1.0)


def test_output_error_is_the_mean_squared_output_difference():
    W, X = _layer(out_f=16, in_f=48, n=300)
    D = torch.randn_like(W)
    _, H = _stats(X)
    assert float(output_error(D, H)) == pytest.approx(_out_err(D, torch.zeros_like(D), X), rel=1e-4)


@pytest.mark.parametrize("granularity", [PerGroup(16), PerGroup(20), PerChannel(), PerTensor()])
def test_group_errors_are_each_groups_partial_output_error(granularity):
    """Against a brute force: the group's columns alone, through the inputs (70 = 3×20 + 10)."""
    g = torch.Generator().manual_seed(1)
    D, X = torch.randn(6, 70, generator=g), torch.randn(200, 70, generator=g)
    got = group_output_errors(D, X.T @ X / 200, granularity)
    size = granularity.size if isinstance(granularity, PerGroup) else 70
    cols = [slice(a, min(a + size, 70)) for a in range(0, 70, size)]
    want = torch.stack([(X[:, c] @ D[:, c].T).pow(2).mean(0) for c in cols], dim=1)
    if isinstance(granularity, PerTensor):
        want = want.sum().reshape(1, 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("fmt", "granularity"), FORMATS)
def test_alpha_search_is_never_worse_than_rtn_on_its_objective(fmt, granularity, seed):
    W, X = _layer(seed, out_f=32, in_f=128, n=512)
    x_mean, H = _stats(X)
    W2 = torch.randn(16, 128, generator=torch.Generator().manual_seed(seed)) * 0.1
    targets = [ScaleTarget(W, fmt, granularity), ScaleTarget(W2, fmt, granularity)]
    found = search_scales(x_mean, H, targets, grid=10)
    assert len(found.losses) == 10 and found.alpha in [i / 10 for i in range(10)]
    assert found.loss <= found.losses[0]
    assert found.loss == found.losses[round(found.alpha * 10)]
    # α = 0 is plain RTN: its loss is RTN's output error per output element
    rtn = sum(
        output_error(t.W - rtn_quantize(t.W, fmt, granularity).dequantize(), H) for t in targets
    )
    assert found.losses[0] == pytest.approx(float(rtn) / 48, rel=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("fmt", "granularity"), FORMATS)
def test_clip_search_is_never_worse_than_no_clipping_on_its_objective(fmt, granularity, seed):
    W, X = _layer(seed, out_f=32, in_f=128, n=512)
    W[3, 7] = 1.0  # one weight outlier, worth clipping around
    _, H = _stats(X)
    ratio = search_clip(W, H, fmt, granularity, AWQConfig().clip_ratios())
    lo, hi = minmax_range(W, granularity)
    assert ratio.shape == lo.shape
    assert float(ratio.min()) >= 0.55 - 1e-6 and float(ratio.max()) <= 1.0

    def objective(r):
        D = W - fmt.decode(fmt.encode(W, lo * r, hi * r, granularity))
        return float(group_output_errors(D, H, granularity).sum())

    assert objective(ratio) <= objective(1.0)


def test_clip_search_clips_an_outlier_group():
    """A group with one huge weight whose input is tiny: clipping it costs little."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 32, generator=g) * 0.05
    W[0, 5] = 2.0
    X = torch.randn(1000, 32, generator=g)
    X[:, 5] *= 1e-3
    ratio = search_clip(W, X.T @ X / 1000, IntFormat(3), PerGroup(32), AWQConfig().clip_ratios())
    assert float(ratio[0, 0]) == pytest.approx(0.55)


def test_awq_quantize_without_clip_is_plain_rtn():
    W, X = _layer(out_f=8, in_f=64, n=100)
    _, H = _stats(X)
    fmt, gran = IntFormat(4), PerGroup(32)
    want = rtn_quantize(W, fmt, gran).dequantize()
    for cfg, clip, h in (
        (AWQConfig(clip=False), True, H),
        (AWQConfig(), False, H),
        (AWQConfig(), True, None),
    ):
        assert torch.equal(awq_quantize(W, h, fmt, gran, cfg, clip=clip).dequantize(), want)


def test_config_defaults_and_refusals():
    cfg = AWQConfig()
    assert (cfg.grid, cfg.clip, cfg.n_clip_grid, cfg.max_shrink) == (20, True, 20, 0.5)
    assert cfg.needs_calibration and cfg.name == "awq"
    assert cfg.clip_ratios() == pytest.approx([1.0 - i / 20 for i in range(10)])
    for bad in (dict(grid=0), dict(n_clip_grid=1.5), dict(max_shrink=1.0), dict(clip="yes")):
        with pytest.raises(ConfigError, match="AWQ"):
            AWQConfig(**bad)


def test_awq_is_registered():
    from lowbit.algorithms import ALGORITHMS

    assert ALGORITHMS.get("awq") is AWQConfig


@pytest.mark.parametrize(
    "cfg", [AWQConfig(), AWQConfig(grid=8, clip=False, n_clip_grid=10, max_shrink=0.3)]
)
def test_plans_round_trip_awq(cfg):
    from lowbit.plan import LayerSpec, Plan, uniform_plan

    plan = uniform_plan(LayerSpec(NVFP4Format(), PerGroup(16), cfg))
    again = Plan.from_dict(plan.to_dict())
    assert again.default == plan.default and again.needs_calibration()
    assert again.default.describe() == plan.default.describe()
    assert again.default.describe().startswith("AWQ NVFP4 g16")
    assert ("grid=8" in again.default.describe()) == (cfg.grid == 8)  # options show in labels
    bad = {**plan.default.to_dict(), "algorithm": {"name": "awq", "alpha": 0.5}}
    with pytest.raises(ConfigError, match="algorithm.alpha: unknown field in an AWQ algorithm"):
        LayerSpec.from_dict(bad)
