"""Static activation thresholds: min-max is the absmax, the percentile is torch.quantile's to
within a bin, MSE and KL pick what brute-force references pick."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.algorithms.activation_ranges import (
    KLRange,
    MinMaxRange,
    MSERange,
    PercentileRange,
    abs_histogram,
    calibration_from_dict,
    kl_threshold,
    mse_threshold,
    threshold,
)
from lowbit.errors import ConfigError
from lowbit.formats import FP8_E4M3, IntFormat
from lowbit.formats.activation import fake_quantize_symmetric

INT8 = IntFormat(8)


def _heavy_tailed(n: int = 200_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[:20] *= 40.0  # a few outliers, as in LLM activations
    return x


def _stats(x: torch.Tensor, bins: int = 2048) -> tuple[float, torch.Tensor, torch.Tensor]:
    absmax = float(x.abs().max())
    counts = abs_histogram(x, absmax, bins)
    return absmax, counts, torch.linspace(0.0, absmax, bins + 1, dtype=torch.float64)


def test_minmax_is_absmax():
    x = _heavy_tailed()
    absmax, _, _ = _stats(x)
    assert threshold(MinMaxRange(), INT8, absmax, None) == float(x.abs().max())


def test_histogram_counts_every_value():
    x = _heavy_tailed()
    _, counts, _ = _stats(x)
    assert float(counts.sum()) == x.numel()


@pytest.mark.parametrize("percent", [99.0, 99.9, 99.99])
def test_percentile_matches_torch_quantile_within_a_bin(percent):
    x = _heavy_tailed()
    absmax, counts, edges = _stats(x)
    t = threshold(PercentileRange(percent), INT8, absmax, counts)
    ref = float(torch.quantile(x.abs(), percent / 100))
    assert abs(t - ref) <= float(edges[1])  # one bin width


def _mse_brute(counts, edges, fmt, start_bin):
    """Loop over every candidate edge, error of the bin centres, keep the last minimum."""
    centres = (edges[:-1] + edges[1:]) / 2
    best, best_t = math.inf, None
    for i in range(start_bin, len(counts) + 1):
        t = float(edges[i])
        scale = torch.tensor(t / (127.0 if fmt is INT8 else fmt.max_value))
        q = fake_quantize_symmetric(centres.float(), scale, fmt).double()
        err = float(((q - centres) ** 2 * counts).sum())
        if err <= best:
            best, best_t = err, t
    return best_t


@pytest.mark.parametrize("fmt", [INT8, FP8_E4M3], ids=["int8", "fp8"])
def test_mse_matches_brute_force(fmt):
    absmax, counts, edges = _stats(_heavy_tailed(), bins=512)
    t = mse_threshold(counts, edges, fmt, start_bin=32)
    assert t == _mse_brute(counts, edges, fmt, 32)
    if fmt is INT8:
        assert t < absmax  # clipping the outliers pays off


def _kl_brute_int(counts: torch.Tensor, edges: torch.Tensor, bits: int, start_bin: int) -> float:
    """TensorRT's loop, written out plainly (no bins[0] hack): P = bins[:i] with the tail in its
    last bin; Q = bins[:i] merged into 2^(bits-1) equal runs, spread over non-empty bins."""
    n_levels = 2 ** (bits - 1)
    bins = counts.tolist()
    best, best_i = math.inf, None
    for i in range(start_bin, len(bins) + 1):
        p = bins[:i]
        p[-1] += sum(bins[i:])
        level = [j * n_levels // i for j in range(i)]
        mass, nnz = [0.0] * n_levels, [0] * n_levels
        for j in range(i):
            mass[level[j]] += bins[j]
            nnz[level[j]] += bins[j] > 0
        q = [mass[level[j]] / nnz[level[j]] if bins[j] > 0 else 0.0 for j in range(i)]
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for pj, qj in zip(p, q, strict=True):
            if pj > 0:
                kl = math.inf if qj == 0 else kl + pj / sp * math.log((pj / sp) / (qj / sq))
        if kl <= best:
            best, best_i = kl, i
    return float(edges[best_i])


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_matches_brute_force_tensorrt_loop(seed):
    _, counts, edges = _stats(_heavy_tailed(seed=seed), bins=256)
    t = kl_threshold(counts, edges, INT8, start_bin=128)
    assert t == _kl_brute_int(counts, edges, 8, 128)


def test_kl_clips_outliers_and_keeps_uniform_data():
    absmax, counts, _ = _stats(_heavy_tailed(), bins=2048)
    assert threshold(KLRange(), INT8, absmax, counts) < 0.5 * absmax
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    absmax, counts, _ = _stats(u)
    assert threshold(KLRange(), INT8, absmax, counts) > 0.9 * absmax


def test_kl_for_fp8_is_a_histogram_edge_below_absmax():
    absmax, counts, edges = _stats(_heavy_tailed(), bins=2048)
    t = threshold(KLRange(stride=4), FP8_E4M3, absmax, counts)
    assert 0 < t <= absmax
    assert bool(torch.isclose(edges, torch.tensor(t, dtype=torch.float64)).any())


def test_unknown_method_suggests():
    with pytest.raises(ConfigError, match="did you mean 'percentile'"):
        calibration_from_dict({"method": "percentil"})


@pytest.mark.parametrize(
    "data",
    [
        {"method": "percentile", "percent": 30},
        {"method": "kl", "stride": 0},
        {"method": "mse", "x": 1},
    ],
)
def test_bad_calibration_fields(data):
    with pytest.raises(ConfigError):
        calibration_from_dict(data)


@pytest.mark.parametrize("cal", [MinMaxRange(), PercentileRange(99.9), MSERange(64, 2), KLRange()])
def test_calibration_round_trip(cal):
    assert calibration_from_dict(cal.to_dict()) == cal
