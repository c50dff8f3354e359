"""How the range of each group is chosen before its scale: min-max, a percentile, or the
clipping ratio that minimizes the group's squared quantization error.

A range is a pair ``lo``/``hi`` (rows, n_groups) in fp32 — rows = out, or 1 per tensor. Formats
with a symmetric grid use max(|lo|, |hi|); integer formats with a zero point use [lo, hi].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.errors import ConfigError
from lowbit.formats.granularity import Granularity, PerGroup, PerTensor, group_index, group_reduce
from lowbit.formats.scaling import group_sum
from lowbit.formats.tensor import WeightFormat


@dataclass(frozen=True)
class MinMax:
    """The full range: the group's min and max (absmax for symmetric grids)."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "minmax"}


@dataclass(frozen=True)
class Percentile:
    """Clip at a percentile of the group's values (of |w| for symmetric grids), e.g. 99.9."""

    percent: float = 99.9

    def __post_init__(self) -> None:
        if not isinstance(self.percent, int | float) or not 50.0 < float(self.percent) <= 100.0:
            raise ConfigError(
                f"clipping percentile must be in (50, 100], got {self.percent!r}; "
                "99.9 or 99.99 are usual"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"type": "percentile", "percent": self.percent}


@dataclass(frozen=True)
class MSEClip:
    """Per group, the shrink ratio of the min-max range (1, 1 - s/steps, …, 1 - max_shrink)
    whose dequantized values have the least squared error; ratio 1 (min-max) is always tried."""

    steps: int = 20
    max_shrink: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ConfigError(f"MSE clipping steps must be a positive integer, got {self.steps!r}")
        if not 0.0 < self.max_shrink < 1.0:
            raise ConfigError(
                f"MSE clipping max_shrink must be in (0, 1), got {self.max_shrink!r}; 0.5 is usual"
            )

    def ratios(self) -> list[float]:
        return [1.0 - self.max_shrink * i / self.steps for i in range(self.steps + 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "mse", "steps": self.steps, "max_shrink": self.max_shrink}


Clipping = MinMax | Percentile | MSEClip
_CLIPPINGS: dict[str, type] = {"minmax": MinMax, "percentile": Percentile, "mse": MSEClip}


def clipping_from_dict(data: dict[str, Any]) -> Clipping:
    kind = data.get("type")
    if kind not in _CLIPPINGS:
        raise ConfigError(f"unknown clipping {kind!r}; known: {', '.join(map(repr, _CLIPPINGS))}")
    try:
        return _CLIPPINGS[kind](**{k: v for k, v in data.items() if k != "type"})
    except TypeError as exc:
        raise ConfigError(f"malformed clipping {data!r}: {exc}") from exc


def minmax_range(W: torch.Tensor, granularity: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """Group min and max of ``W`` (out, in): two (rows, n_groups) fp32 tensors."""
    W = W.float()
    g_idx = group_index(W.shape[1], granularity, W.device)
    n_groups = granularity.groups(W.shape[1])
    per_tensor = isinstance(granularity, PerTensor)
    wmin = group_reduce(W, g_idx, n_groups, "amin", per_tensor)
    wmax = group_reduce(W, g_idx, n_groups, "amax", per_tensor)
    return wmin, wmax


def percentile_range(
    W: torch.Tensor, granularity: Granularity, percent: float, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: ±(the ``percent``-th percentile of |w|) when ``symmetric``, else the
    (100 - percent)-th and ``percent``-th percentiles of w (linear interpolation)."""
    W = W.float()
    q = float(percent) / 100.0
    if symmetric:
        hi = group_quantile(W.abs(), granularity, q)
        return -hi, hi
    return group_quantile(W, granularity, 1.0 - q), group_quantile(W, granularity, q)


def group_quantile(X: torch.Tensor, granularity: Granularity, q: float) -> torch.Tensor:
    """The ``q``-quantile (q ∈ [0, 1]) of each group of ``X`` (out, in): (rows, n_groups)."""
    if isinstance(granularity, PerTensor):
        return _quantile_last(X.reshape(1, -1), q)
    if not isinstance(granularity, PerGroup):
        return _quantile_last(X, q)
    out_f, in_f = X.shape
    size = granularity.size
    full = in_f // size
    parts = [_quantile_last(X[:, : full * size].reshape(out_f, full, size), q)] if full else []
    if in_f % size:
        parts.append(_quantile_last(X[:, full * size :], q))
    return torch.cat(parts, dim=1)


def _quantile_last(X: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile over the last dimension, kept as size 1 for 2-D input: (..., 1) or (out, full)."""
    s = X.sort(dim=-1).values
    pos = q * (s.shape[-1] - 1)
    i0, frac = math.floor(pos), pos - math.floor(pos)
    i1 = min(i0 + 1, s.shape[-1] - 1)
    value = s[..., i0] * (1.0 - frac) + s[..., i1] * frac
    return value.unsqueeze(-1) if X.dim() == 2 else value


def mse_range(
    W: torch.Tensor,
    fmt: WeightFormat,
    granularity: Granularity,
    lo: torch.Tensor,
    hi: torch.Tensor,
    clip: MSEClip,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink each group's [lo, hi] by the ratio that minimizes Σ (w - ŵ)² over the group.

    Every ratio quantizes the whole tensor once with ``fmt.encode``; ties keep the larger ratio.
    """
    W = W.float()
    best_err = torch.full_like(lo, torch.inf)
    best_ratio = torch.ones_like(lo)
    for ratio in clip.ratios():
        qw = fmt.encode(W, lo * ratio, hi * ratio, granularity)
        err = group_sum((W - fmt.decode(qw)) ** 2, granularity)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return lo * best_ratio, hi * best_ratio


def _on_extreme_side(
    plo: torch.Tensor, phi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric grid needs the clipped magnitude and the side of the group's largest weight
    (the extreme scale rule puts that side on the code -2^(b-1)): the other side becomes 0."""
    positive = hi.abs() > lo.abs()
    zero = torch.zeros_like(plo)
    return torch.where(positive, zero, plo), torch.where(positive, phi, zero)


def clipped_range(
    W: torch.Tensor, fmt: WeightFormat, granularity: Granularity, clipping: Clipping
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-group range ``clipping`` chooses for ``W`` (out, in) in ``fmt``."""
    lo, hi = minmax_range(W, granularity)
    if isinstance(clipping, Percentile):
        plo, phi = percentile_range(W, granularity, clipping.percent, fmt.symmetric)
        # a sparse group can have a zero percentile range around non-zero weights: a zero range
        # would give a scale unrelated to the data, so such a group keeps its min-max range
        empty = (plo == 0) & (phi == 0) & ((lo != 0) | (hi != 0))
        plo, phi = torch.where(empty, lo, plo), torch.where(empty, hi, phi)
        return _on_extreme_side(plo, phi, lo, hi) if fmt.symmetric else (plo, phi)
    if isinstance(clipping, MSEClip):
        return mse_range(W, fmt, granularity, lo, hi, clipping)
    return lo, hi
