"""AWQ (Lin et al., 2023) on tensors: the per-channel scale search and the clip search.

Both searches measure the error of a layer's *outputs* over the calibration tokens, computed
exactly from the inputs' second moment H = E[x xᵀ] (in, in) rather than from stored
activations: for a weight error D = W - Ŵ (out, in), E‖x Dᵀ‖² = tr(D H Dᵀ). So every token of
every calibration window counts (llm-awq replays a subsample through the module), at a cost of
out·in² per candidate. Differences from llm-awq (``auto_scale.py``, ``auto_clip.py``), on
purpose:

- the scale objective is the summed output error of the pair's linears, not of the module
  that contains them (attention or MLP output), so it needs no attention replay;
- a clip ratio scales the group's min-max range [lo, hi] (both ends, as lowbit's MSE clipping
  does) instead of clamping at ±ratio·absmax; for symmetric formats the two agree;
- the clip search keeps, per group, the ratio with the least error of that group's partial
  output (llm-awq's objective), then checks the whole weight against no clipping.

The model plumbing (capturing statistics, folding scales) is in ``lowbit.models.smoothing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lowbit.algorithms.config import AWQConfig
from lowbit.formats import Granularity, PerGroup, PerTensor, QuantizedWeight, WeightFormat
from lowbit.formats.clipping import minmax_range
from lowbit.formats.scaling import check_finite


@dataclass(frozen=True)
class ScaleTarget:
    """One linear of a smoothing pair: its weight ``W`` (out, in) and how it is quantized."""

    W: torch.Tensor
    fmt: WeightFormat
    granularity: Granularity


@dataclass(frozen=True)
class ScaleSearch:
    """The chosen scales (in,), their α, and the objective (mean squared output error per
    output element) for every α tried; ``losses[0]`` is α = 0, plain round to nearest."""

    scales: torch.Tensor
    alpha: float
    losses: tuple[float, ...]

    @property
    def loss(self) -> float:
        return min(self.losses)


def awq_scales(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """llm-awq's scales for mean |x| per channel ``x_mean`` (in,): x_mean^α, clamped at 1e-4,
    divided by √(max · min) so they straddle 1. α = 0 gives all ones."""
    s = x_mean.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def output_error(D: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Σ over outputs of E[(x·d)²] for weight errors ``D`` (out, in) and H (in, in): a scalar."""
    return ((D @ H) * D).sum()


def scaled_error(target: ScaleTarget, s: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Output error of W against Q(W·diag(s))·diag(1/s), round to nearest on min-max ranges."""
    W = target.W.float()
    Ws = W * s
    lo, hi = minmax_range(Ws, target.granularity)
    Wq = target.fmt.decode(target.fmt.encode(Ws, lo, hi, target.granularity)) / s
    return output_error(W - Wq, H)


def search_scales(
    x_mean: torch.Tensor, H: torch.Tensor, targets: Sequence[ScaleTarget], grid: int = 20
) -> ScaleSearch:
    """Grid search of α ∈ {0, 1/grid, …, (grid-1)/grid} for the scales of one smoothing pair.

    ``x_mean`` (in,) mean |x| and ``H`` (in, in) E[x xᵀ] of the pair's shared input; ``targets``
    the pair's linears. The objective sums every target's output error; ties keep the smaller
    α, so the result is never worse than α = 0 (all-ones scales, plain RTN) on it.
    """
    if grid < 1:
        raise ValueError(f"the AWQ scale grid needs at least one point, got {grid}")
    H = H.float()
    n_out = sum(int(t.W.shape[0]) for t in targets)
    losses: list[float] = []
    best: tuple[float, float, torch.Tensor] | None = None
    for i in range(grid):
        alpha = i / grid
        s = awq_scales(x_mean, alpha)
        loss = float(sum(scaled_error(t, s, H) for t in targets)) / n_out
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, alpha, s)
    _, alpha, scales = best  # type: ignore[misc]  # grid ≥ 1
    return ScaleSearch(scales=scales, alpha=alpha, losses=tuple(losses))


def group_output_errors(D: torch.Tensor, H: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Per quantization group, the error of its partial output, d_g H_gg d_gᵀ: (rows, n_groups)
    for weight errors ``D`` (out, in) — rows = out, or 1 per tensor (summed over rows)."""
    if not isinstance(granularity, PerGroup):
        per_row = ((D @ H) * D).sum(1, keepdim=True)
        return per_row.sum().reshape(1, 1) if isinstance(granularity, PerTensor) else per_row
    out_f, in_f = D.shape
    size = granularity.size
    n_groups = granularity.groups(in_f)
    pad = n_groups * size - in_f
    Dp = torch.nn.functional.pad(D, (0, pad)).reshape(out_f, n_groups, size)
    Hp = torch.nn.functional.pad(H, (0, pad, 0, pad)).reshape(n_groups, size, n_groups, size)
    blocks = torch.diagonal(Hp, dim1=0, dim2=2).permute(2, 0, 1)  # (n_groups, size, size)
    return torch.einsum("rgi,gij,rgj->rg", Dp, blocks, Dp)


def search_clip(
    W: torch.Tensor,
    H: torch.Tensor,
    fmt: WeightFormat,
    granularity: Granularity,
    ratios: Sequence[float],
) -> torch.Tensor:
    """Per group, the shrink ratio of its min-max range (rows, n_groups) with the least error of
    the group's partial output; ``ratios`` start with 1.0 (no clipping), which ties keep.

    If the groups' choices together give a larger total error than no clipping (groups of
    formats with a shared tensor-level parameter are not independent), all ratios are 1.
    """
    W = W.float()
    H = H.float()
    lo, hi = minmax_range(W, granularity)
    best_err = torch.full_like(lo, torch.inf)
    best_ratio = torch.ones_like(lo)
    for ratio in ratios:
        D = W - fmt.decode(fmt.encode(W, lo * ratio, hi * ratio, granularity))
        err = group_output_errors(D, H, granularity)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    chosen = group_output_errors(_clipped_error(W, fmt, granularity, best_ratio), H, granularity)
    plain = group_output_errors(_clipped_error(W, fmt, granularity, 1.0), H, granularity)
    return best_ratio if float(chosen.sum()) <= float(plain.sum()) else torch.ones_like(lo)


def _clipped_error(
    W: torch.Tensor, fmt: WeightFormat, granularity: Granularity, ratio: torch.Tensor | float
) -> torch.Tensor:
    lo, hi = minmax_range(W, granularity)
    return W - fmt.decode(fmt.encode(W, lo * ratio, hi * ratio, granularity))


def awq_quantize(
    W: torch.Tensor,
    H: torch.Tensor | None,
    fmt: WeightFormat,
    granularity: Granularity,
    cfg: AWQConfig,
    *,
    clip: bool = True,
    name: str = "weight",
) -> QuantizedWeight:
    """Round ``W`` (out, in) — already multiplied by its AWQ scales — to ``fmt`` on min-max
    ranges shrunk by the clip search when ``cfg.clip`` and ``clip`` (False for layers whose
    outputs meet in a product, q and k). ``H`` (in, in) is the second moment of the layer's
    (scaled) inputs; without it no clip search runs."""
    fmt.check_granularity(granularity)
    check_finite(W, name)
    W = W.float()
    lo, hi = minmax_range(W, granularity)
    if cfg.clip and clip and H is not None:
        ratio = search_clip(W, H, fmt, granularity, cfg.clip_ratios())
        lo, hi = lo * ratio, hi * ratio
    return fmt.encode(W, lo, hi, granularity)
