"""Static activation ranges from calibration statistics: min-max, a percentile, the MSE-optimal
threshold and TensorRT's entropy (KL-divergence) calibration, as pure functions.

Statistics of one tensor's calibration activations are the absolute maximum and a histogram of
|x| with ``bins`` equal bins over [0, absmax] (``counts`` (bins,) float64, ``edges`` (bins + 1,)).
Each method returns a threshold t > 0 (a clipping absmax): the static scale is then
t / max_code(fmt) (see :mod:`lowbit.formats.activation`).

- min-max: t = absmax.
- percentile p: the p-th percentile of |x| read from the histogram (linear inside the bin where
  the cumulative count crosses p/100 · N), so within one bin width of ``torch.quantile``.
- MSE: among the bin edges t_i, i = start_bin … bins, the one minimising
  Σ_j counts_j · (c_j - q_t(c_j))² with c_j the bin centres (pytorch-quantization's method).
- KL (TensorRT's entropy calibration): for each candidate edge i, the reference distribution P
  is counts[:i] with the outlier mass Σ counts[i:] added to its last bin; the quantized one Q
  spreads the mass of counts[:i] that falls on each quantization level evenly over that level's
  non-empty bins; t_i minimises KL(P ‖ Q), ties going to the larger threshold. Integer formats
  use TensorRT's levels: bins[:i] cut into 2^(b-1) equal runs; floating-point formats group the
  bins by the grid value (scaled so that the largest is t_i) their centre rounds to. Unlike
  TensorRT, bin 0 keeps its own count.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.errors import ConfigError
from lowbit.formats.activation import ActivationFormat, fake_quantize_symmetric, max_code
from lowbit.formats.floating import FloatFormat

HIST_BINS = 2048
_CHUNK = 128  # candidate thresholds evaluated at once (a chunk × bins matrix)


@dataclass(frozen=True)
class MinMaxRange:
    """t = the largest |x| seen in calibration."""

    name = "minmax"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name}


@dataclass(frozen=True)
class PercentileRange:
    """t = the ``percent``-th percentile of |x| (99.99 is usual for activations)."""

    percent: float = 99.99
    name = "percentile"

    def __post_init__(self) -> None:
        if not isinstance(self.percent, int | float) or not 50.0 < float(self.percent) <= 100.0:
            raise ConfigError(
                f"activation percentile must be in (50, 100], got {self.percent!r}; "
                "99.99 or 99.999 are usual"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "percent": self.percent}


@dataclass(frozen=True)
class _SearchRange:
    """A threshold searched over the histogram's edges start_bin … bins, every ``stride``."""

    start_bin: int = 128
    stride: int = 1

    def __post_init__(self) -> None:
        for field_name in ("start_bin", "stride"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"activation calibration {field_name} must be a positive integer, got {value!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "start_bin": self.start_bin, "stride": self.stride}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class MSERange(_SearchRange):
    """The histogram edge with the least squared quantization error."""

    name = "mse"


@dataclass(frozen=True)
class KLRange(_SearchRange):
    """TensorRT's entropy calibration: the edge minimising KL(reference ‖ quantized)."""

    name = "kl"


ActCalibration = MinMaxRange | PercentileRange | MSERange | KLRange
CALIBRATIONS: dict[str, type] = {
    "minmax": MinMaxRange,
    "percentile": PercentileRange,
    "mse": MSERange,
    "kl": KLRange,
}


def calibration_from_dict(data: dict[str, Any]) -> ActCalibration:
    """``{"method": "kl", ...}`` → a calibration config; unknown names get a suggestion."""
    method = data.get("method")
    if method not in CALIBRATIONS:
        close = difflib.get_close_matches(str(method), list(CALIBRATIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown activation calibration {method!r}{hint} (known: {', '.join(CALIBRATIONS)})"
        )
    try:
        return CALIBRATIONS[method](**{k: v for k, v in data.items() if k != "method"})
    except TypeError as exc:
        raise ConfigError(f"malformed activation calibration {data!r}: {exc}") from exc


def abs_histogram(x: torch.Tensor, absmax: float, bins: int = HIST_BINS) -> torch.Tensor:
    """Counts (bins,) float64 of |x| in ``bins`` equal bins over [0, absmax] (values above
    absmax, impossible when absmax is the true maximum, go to the last bin)."""
    a = x.detach().abs().float().flatten().clamp(max=absmax)
    return torch.histc(a, bins=bins, min=0.0, max=max(absmax, 1e-30)).double()


def threshold(
    calibration: ActCalibration,
    fmt: ActivationFormat,
    absmax: float,
    counts: torch.Tensor | None,
) -> float:
    """The threshold ``calibration`` picks from the statistics (counts over [0, absmax])."""
    if isinstance(calibration, MinMaxRange) or absmax <= 0:
        return absmax
    if counts is None:
        raise ValueError(f"{calibration.name} calibration needs a histogram")
    edges = torch.linspace(
        0.0, absmax, counts.numel() + 1, dtype=torch.float64, device=counts.device
    )
    if isinstance(calibration, PercentileRange):
        return percentile_threshold(counts, edges, calibration.percent)
    if isinstance(calibration, MSERange):
        return mse_threshold(counts, edges, fmt, calibration.start_bin, calibration.stride)
    return kl_threshold(counts, edges, fmt, calibration.start_bin, calibration.stride)


def percentile_threshold(counts: torch.Tensor, edges: torch.Tensor, percent: float) -> float:
    """The ``percent``-th percentile of the histogrammed values, linear inside its bin."""
    cdf = torch.cumsum(counts, 0)
    target = float(percent) / 100.0 * float(cdf[-1])
    at = torch.tensor(target, dtype=cdf.dtype, device=cdf.device)
    j = min(int(torch.searchsorted(cdf, at)), len(counts) - 1)
    below = float(cdf[j - 1]) if j > 0 else 0.0
    frac = (target - below) / float(counts[j]) if counts[j] > 0 else 1.0
    return float(edges[j] + (edges[j + 1] - edges[j]) * min(max(frac, 0.0), 1.0))


def _candidates(n_bins: int, start_bin: int, stride: int, device: torch.device) -> torch.Tensor:
    return torch.arange(min(start_bin, n_bins), n_bins + 1, stride, device=device)


def mse_threshold(
    counts: torch.Tensor,
    edges: torch.Tensor,
    fmt: ActivationFormat,
    start_bin: int = 128,
    stride: int = 1,
) -> float:
    """The edge t_i (i = start_bin … bins) minimising Σ counts · (c - q_t(c))² over bin centres
    c; ties keep the larger threshold."""
    centres = (edges[:-1] + edges[1:]) / 2
    cand = _candidates(len(counts), start_bin, stride, counts.device)
    errors = []
    for chunk in cand.split(_CHUNK):
        t = edges[chunk].float()[:, None]
        q = fake_quantize_symmetric(centres.float()[None, :], t / max_code(fmt), fmt).double()
        errors.append(((q - centres[None, :]) ** 2 * counts[None, :]).sum(1))
    return float(edges[cand[_last_argmin(torch.cat(errors))]])


def kl_threshold(
    counts: torch.Tensor,
    edges: torch.Tensor,
    fmt: ActivationFormat,
    start_bin: int = 128,
    stride: int = 1,
) -> float:
    """TensorRT's entropy calibration (module docstring): the edge minimising KL(P ‖ Q)."""
    cand = _candidates(len(counts), start_bin, stride, counts.device)
    divergences = torch.cat([_kl_divergences(counts, edges, fmt, c) for c in cand.split(_CHUNK)])
    return float(edges[cand[_last_argmin(divergences)]])


def kl_levels(n_used: torch.Tensor, edges: torch.Tensor, fmt: ActivationFormat) -> torch.Tensor:
    """Quantization level (C, bins) of every bin j for each candidate edge i = ``n_used`` (C,).

    Integers: floor(j · 2^(b-1) / i) (TensorRT's equal runs); floating point: the index of the
    grid magnitude the bin centre rounds to with the grid scaled so that its top is edges[i].
    """
    n_bins = len(edges) - 1
    j = torch.arange(n_bins, device=edges.device)[None, :]
    if not isinstance(fmt, FloatFormat):
        n_levels = 2 ** (fmt.bits - 1)
        return torch.div(j * n_levels, n_used[:, None], rounding_mode="floor")
    centres = ((edges[:-1] + edges[1:]) / 2).float()[None, :]
    scale = edges[n_used].float()[:, None] / fmt.max_value
    rounded = fmt.round(centres / scale)
    grid = fmt.values(edges.device)[: 2 ** (fmt.bits - 1)]
    grid = grid[torch.isfinite(grid)]
    return torch.searchsorted(grid.contiguous(), rounded.contiguous())


def _kl_divergences(
    counts: torch.Tensor, edges: torch.Tensor, fmt: ActivationFormat, n_used: torch.Tensor
) -> torch.Tensor:
    """KL(P_i ‖ Q_i) (C,) for the candidate edges ``n_used`` (C,)."""
    n_bins, device = len(counts), counts.device
    j = torch.arange(n_bins, device=device)[None, :]
    inside = j < n_used[:, None]  # (C, bins)
    kept = torch.where(inside, counts[None, :], 0.0)
    tail = counts.sum() - kept.sum(1)  # outlier mass, folded into the last used bin
    p = kept.clone()
    p[torch.arange(len(n_used), device=device), n_used - 1] += tail
    levels = kl_levels(n_used, edges, fmt).clamp(min=0)
    levels = torch.where(inside, levels, torch.zeros_like(levels))
    nonzero = (kept > 0).double()
    n_levels = int(levels.max()) + 1
    zeros = torch.zeros(len(n_used), n_levels, dtype=torch.float64, device=device)
    mass = zeros.clone().scatter_add_(1, levels, kept)
    nnz = zeros.scatter_add_(1, levels, nonzero)
    q = torch.where(nonzero > 0, mass.gather(1, levels) / nnz.gather(1, levels).clamp(min=1), 0)
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True).clamp(min=1e-300)
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), 0.0)
    return terms.sum(1)


def _last_argmin(values: torch.Tensor) -> int:
    """Index of the minimum, the last one on ties (TensorRT keeps the larger threshold)."""
    values = torch.nan_to_num(values, nan=math.inf)
    best = values.min()
    return int((values == best).nonzero().max())
