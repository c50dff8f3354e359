"""Codebooks: NF4 is bitsandbytes' published table scaled by the group absmax; a LUT's k-means
table is never worse than the uniform grid it starts from, and costs its fp16 table."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import (
    LUTFormat,
    NF4Format,
    PerChannel,
    PerGroup,
    PerTensor,
    quantize_weight,
)
from lowbit.formats.codebook import fit_table, nearest_index, quantile_table, weighted_kmeans

# bitsandbytes.functional.get_4bit_type("nf4") (QLoRA, Dettmers et al. 2023), written out
BNB_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip


def test_nf4_table_is_the_published_one():
    assert NF4Format().values().tolist() == torch.tensor(BNB_NF4).tolist()


def test_nf4_table_follows_qloras_construction():
    """QLoRA builds the levels from normal quantiles at offset 0.9677083 (8 positive, 7
    negative, plus an exact zero), normalized to [-1, 1]."""
    scipy_stats = pytest.importorskip("scipy.stats")
    offset = 0.9677083
    pos = scipy_stats.norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].double().numpy()).tolist()
    neg = (-scipy_stats.norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].double().numpy())).tolist()
    levels = torch.tensor(sorted([*pos, 0.0, *neg]), dtype=torch.float64)
    levels = levels / levels.abs().max()
    assert torch.allclose(levels.float(), torch.tensor(BNB_NF4), atol=1e-6)


def test_nf4_quantization_by_hand():
    W = torch.tensor([[0.0, 1.0, -2.0, 0.5, 0.3, -0.1, 2.0, 1.5]])
    qw = quantize_weight(W, NF4Format(), PerGroup(4))
    assert qw.scale.tolist() == [[2.0, 2.0]]  # absmax per group of 4, exact in fp16
    # w / 2 = 0, .5, -1, .25 | .15, -.05, 1, .75; .5 is nearer .4407 (12) than .5626 (13),
    # -.05 nearer -.0911 (6) than 0 (7), .15 nearer .1609 (9), .75 nearer .7230 (14)
    assert qw.codes.tolist() == [[7, 12, 0, 10, 9, 6, 15, 14]]
    expected = torch.tensor(BNB_NF4)[qw.codes.long()] * 2.0
    assert torch.equal(qw.dequantize(), expected)


def test_nf4_picks_the_nearest_level_everywhere():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 128, generator=g)
    qw = quantize_weight(W, NF4Format(), PerGroup(64))
    levels = torch.tensor(BNB_NF4)
    s = qw.scale.float().repeat_interleave(64, dim=1)
    brute = (W[..., None] / s[..., None] - levels).abs().argmin(dim=-1)
    assert torch.equal(qw.codes.long(), brute)


@pytest.mark.parametrize(
    ("granularity", "out_f", "in_f", "bpw"),
    [
        (PerGroup(64), 4, 128, 4 + 16 / 64),
        (PerChannel(), 4, 128, 4 + 16 / 128),
        (PerTensor(), 4, 128, 4 + 16 / 512),
    ],
)
def test_nf4_bits_per_weight(granularity, out_f, in_f, bpw):
    fmt = NF4Format()
    assert fmt.bits_per_weight(in_f, granularity, out_f) == bpw
    W = torch.randn(out_f, in_f)
    assert quantize_weight(W, fmt, granularity).bits_per_weight() == bpw


def test_nearest_index_per_row_tables():
    table = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 10.0, 20.0]])
    x = torch.tensor([[-0.6, 0.4, 0.5, 3.0], [4.0, 6.0, 15.0, 16.0]])
    assert nearest_index(x, table).tolist() == [[0, 1, 1, 2], [0, 1, 1, 2]]


def _uniform_error(X: torch.Tensor, bits: int) -> torch.Tensor:
    """Σ (x - nearest)² per row for the fp16 uniform grid over [min, max] of the row."""
    lo, hi = X.amin(dim=1, keepdim=True), X.amax(dim=1, keepdim=True)
    grid = (lo + (hi - lo) * torch.linspace(0, 1, 2**bits)).half().float()
    return (X[..., None] - grid[:, None, :]).abs().min(dim=-1).values.pow(2).sum(dim=1)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lut_is_never_worse_than_the_uniform_grid(bits):
    g = torch.Generator().manual_seed(bits)
    W = torch.randn(16, 256, generator=g) * torch.exp(torch.randn(16, 1, generator=g))
    W[3] = torch.rand(256, generator=g) ** 4  # skewed row
    qw = quantize_weight(W, LUTFormat(bits), PerChannel())
    err = (W - qw.dequantize()).pow(2).sum(dim=1)
    uniform = _uniform_error(W, bits)
    assert (err <= uniform * (1 + 1e-6)).all()
    assert err.sum() < 0.9 * uniform.sum()  # k-means gains on Gaussian rows


def test_lut_with_no_iterations_is_the_uniform_grid():
    W = torch.randn(4, 64)
    qw = quantize_weight(W, LUTFormat(3, iterations=0), PerChannel())
    err = (W - qw.dequantize()).pow(2).sum(dim=1)
    assert torch.allclose(err, _uniform_error(W, 3), rtol=1e-6)


def test_lut_table_is_stored_per_row_in_fp16_and_codes_index_it():
    W = torch.randn(5, 40)
    qw = quantize_weight(W, LUTFormat(2), PerChannel())
    assert qw.scale.shape == (5, 4) and qw.scale.dtype == torch.float16
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= 3
    expected = qw.scale.float().gather(1, qw.codes.long())
    assert torch.equal(qw.dequantize(), expected)


def test_lut_per_tensor_keeps_one_table():
    W = torch.randn(5, 40)
    qw = quantize_weight(W, LUTFormat(3), PerTensor())
    assert qw.scale.shape == (1, 8)
    assert torch.equal(qw.dequantize(), qw.scale.float()[0][qw.codes.long()])


def test_fit_table_keeps_the_best_table_per_row():
    X = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.1, 5.0]])
    lo, hi = X.amin(1, keepdim=True), X.amax(1, keepdim=True)
    table = fit_table(X, lo, hi, 1, 10, torch.float32)
    # two levels: k-means splits {0, 0, 0, 1, 1.1} | {5}
    assert torch.allclose(table, torch.tensor([[0.42, 5.0]]))


@pytest.mark.parametrize(
    ("bits", "granularity", "out_f", "in_f", "bpw"),
    [
        (4, PerChannel(), 8, 256, 4 + 16 * 16 / 256),
        (3, PerChannel(), 8, 4096, 3 + 8 * 16 / 4096),
        (2, PerTensor(), 8, 64, 2 + 4 * 16 / 512),
    ],
)
def test_lut_bits_per_weight(bits, granularity, out_f, in_f, bpw):
    fmt = LUTFormat(bits)
    assert fmt.bits_per_weight(in_f, granularity, out_f) == bpw
    qw = quantize_weight(torch.randn(out_f, in_f), fmt, granularity)
    assert qw.bits_per_weight() == bpw


def test_lut_refuses_groups_and_names_the_fix():
    with pytest.raises(ConfigError, match="lut4 keeps one table per output row.*per-channel"):
        quantize_weight(torch.randn(2, 8), LUTFormat(4), PerGroup(4))


@pytest.mark.parametrize("bits", [0, 9, True, 4.0])
def test_lut_bad_bits(bits):
    with pytest.raises(ConfigError, match=f"got {bits!r}"):
        LUTFormat(bits)


# --- weighted k-means (SqueezeLLM's tables) ----------------------------------------------------


def _heavy_rows(seed: int, rows: int = 12, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Student-t rows and log-normal per-column weights, as a layer and its Hessian diagonal."""
    g = torch.Generator().manual_seed(seed)
    chi2 = torch.randn(3, rows, n, generator=g).pow(2).mean(dim=0)  # Student t with 3 d.o.f.
    X = torch.randn(rows, n, generator=g) / chi2.sqrt() * torch.rand(rows, 1, generator=g)
    w = torch.exp(1.5 * torch.randn(1, n, generator=g))
    return X, w


def test_weighted_kmeans_by_hand():
    """Points 0, 1, 10 with weights 1, 3, 0 from the table [0, 10]: the first entry moves to
    (0·1 + 1·3) / 4 = 0.75; the second has no weight and stays."""
    X, w = torch.tensor([[0.0, 1.0, 10.0]]), torch.tensor([[1.0, 3.0, 0.0]])
    fit = weighted_kmeans(X, w, torch.tensor([[0.0, 10.0]]), 10, torch.float32, tol=0.0)
    assert fit.table.tolist() == [[0.75, 10.0]]
    assert fit.history == [pytest.approx(3.0), pytest.approx(0.75), pytest.approx(0.75)]
    assert fit.iterations == 2  # the second iteration gains nothing: stop


def test_quantile_start_by_hand():
    X = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    assert quantile_table(X, None, 1).tolist() == [[1.0, 3.0]]
    # all the weight on 4: every quantile is 4
    assert quantile_table(X, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 1).tolist() == [[4.0, 4.0]]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weighted_kmeans_objective_never_rises_and_stops_at_tolerance(bits):
    X, w = _heavy_rows(bits)
    start = quantile_table(X, w, bits).sort(dim=1).values
    fit = weighted_kmeans(X, w, start, 500, torch.float32, tol=1e-4)
    steps = torch.tensor(fit.history, dtype=torch.float64)
    assert (steps[1:] <= steps[:-1] * (1 + 1e-6)).all()  # Lloyd's steps never raise it
    assert fit.iterations < 500
    gains = (steps[:-1] - steps[1:]) / steps[:-1]
    assert gains[-1] <= 1e-4 and (gains[:-1] > 1e-4).all()  # stopped at the first small gain
    assert len(fit.history) == fit.iterations + 1


@pytest.mark.parametrize("init", ["uniform", "quantile"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weighted_table_never_worse_than_the_uniform_grid_on_its_objective(bits, init):
    X, w = _heavy_rows(10 + bits)
    lo, hi = X.amin(1, keepdim=True), X.amax(1, keepdim=True)
    table = fit_table(X, lo, hi, bits, 30, torch.float16, w, 1e-5, init)
    uniform = (lo + (hi - lo) * torch.linspace(0, 1, 2**bits)).half().float()

    def objective(t):
        return ((X - t.gather(1, nearest_index(X, t))) ** 2 * w).sum(dim=1)

    assert (objective(table) <= objective(uniform)).all()
    assert objective(table).sum() < 0.5 * objective(uniform).sum()  # heavy tails: a big gain
    assert torch.equal(table, table.half().float())  # storable in the table dtype


def test_weights_pull_the_table_towards_heavy_points():
    X, w = _heavy_rows(20)
    lo, hi = X.amin(1, keepdim=True), X.amax(1, keepdim=True)
    weighted = fit_table(X, lo, hi, 3, 30, torch.float32, w, 1e-6, "quantile")
    flat = fit_table(X, lo, hi, 3, 30, torch.float32, None, 1e-6, "quantile")

    def objective(t):
        return float(((X - t.gather(1, nearest_index(X, t))) ** 2 * w).sum())

    assert objective(weighted) < objective(flat)
