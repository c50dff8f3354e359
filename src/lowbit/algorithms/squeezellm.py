"""SqueezeLLM (Kim et al., 2023, "SqueezeLLM: Dense-and-Sparse Quantization") on one weight.

The method: per output channel, a non-uniform lookup table of 2^bits values fitted by k-means
weighted by each weight's sensitivity (the paper: the diagonal of the Fisher information, the
squared gradients; the reference code runs scikit-learn's ``KMeans`` with them as
``sample_weight``), and a dense-and-sparse split that keeps a small fraction of weights (0.45% in
the paper: outliers by magnitude plus the most sensitive) in fp16 in a sparse matrix, so the
table need not stretch over them.

Here:
- the sensitivity of w[r, c] is the Hessian diagonal H_cc = E[x_c²] of the layer's inputs
  (``sensitivity="hessian"``; the block-by-block driver computes no gradients), or 1
  (``"uniform"``);
- the sparse part is the ``outlier_fraction`` largest-magnitude weights, stored as COO (an fp16
  value and an int32 flat index: 48 bits each, counted in bits per weight); they get k-means
  weight 0 and replace the dense value at their place on dequantization;
- k-means starts from the weighted quantiles of each row (deterministic, batched over rows;
  the reference's scikit-learn uses k-means++) and stops at ``tol``; per row the uniform grid
  over the dense range is kept instead when it scores better on the same weighted objective.
"""

from __future__ import annotations

import torch

from lowbit.algorithms.config import SqueezeLLMConfig
from lowbit.errors import ConfigError
from lowbit.formats import Granularity, LUTFormat, PerTensor, QuantizedWeight
from lowbit.formats.codebook import fit_table, nearest_index
from lowbit.formats.scaling import check_finite


def check_squeezellm_format(fmt: object) -> None:
    """SqueezeLLM's dense part is a per-row lookup table: the ``lut`` format."""
    if not isinstance(fmt, LUTFormat):
        name = getattr(fmt, "name", type(fmt).__name__)
        raise ConfigError(
            f"algorithm 'squeezellm' does not support format {name!r}: it fits a lookup table "
            "per output row; use format 'lut' (e.g. LUTFormat(4)) with per-channel granularity"
        )


def squeezellm_quantize(
    W: torch.Tensor,
    sensitivity: torch.Tensor | None,
    fmt: LUTFormat,
    granularity: Granularity,
    cfg: SqueezeLLMConfig,
    name: str = "weight",
) -> QuantizedWeight:
    """Quantize ``W`` (out, in) to per-row tables (rows, 2^bits) plus sparse fp16 outliers.

    ``sensitivity`` (in,) or (out, in), non-negative: the k-means weight of each weight (None
    or ``cfg.sensitivity == "uniform"``: all 1). Returns codes (out, in) uint8, the tables in
    ``scale`` ((out, 2^bits), or (1, 2^bits) per tensor) and ``outliers`` (flat indices int32,
    values fp16) when ``cfg.outlier_fraction`` keeps any.
    """
    check_squeezellm_format(fmt)
    fmt.check_granularity(granularity)
    if W.dim() != 2:
        raise ValueError(f"weight {name!r} must be 2-D (out, in), got shape {tuple(W.shape)}")
    check_finite(W, name)
    W = W.detach().float()
    index = select_outliers(W, cfg.outlier_count(W.numel()))
    weights = torch.ones_like(W)
    if sensitivity is not None and cfg.sensitivity == "hessian":
        weights = sensitivity.detach().float().clamp(min=0).expand_as(W).clone()
    weights.view(-1)[index] = 0.0
    lo, hi = dense_range(W, index)
    X = W
    if isinstance(granularity, PerTensor):
        X, weights = W.reshape(1, -1), weights.reshape(1, -1)
        lo, hi = lo.amin().reshape(1, 1), hi.amax().reshape(1, 1)
    dtype = fmt.torch_table_dtype
    table = fit_table(X, lo, hi, fmt.bits, cfg.iterations, dtype, weights, cfg.tol, "quantile")
    codes = nearest_index(X, table).to(torch.uint8).reshape(W.shape)
    outliers = None
    if index.numel():
        values = W.view(-1)[index].to(torch.float16)
        outliers = (index.to(torch.int32), values)
    return QuantizedWeight(codes, table.to(dtype), None, fmt, granularity, outliers=outliers)


def select_outliers(W: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices (count,) int64, ascending, of the ``count`` largest |w| of ``W`` (ties: the
    lower index)."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=W.device)
    magnitude = W.abs().reshape(-1)
    order = torch.argsort(magnitude, descending=True, stable=True)
    return order[:count].sort().values


def dense_range(W: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the min and max (out, 1) of ``W`` (out, in) without the flat positions
    ``index``; a row with nothing left gets [0, 0]."""
    mask = torch.zeros(W.numel(), dtype=torch.bool, device=W.device)
    mask[index] = True
    mask = mask.view(W.shape)
    lo = W.masked_fill(mask, torch.inf).amin(dim=1, keepdim=True)
    hi = W.masked_fill(mask, -torch.inf).amax(dim=1, keepdim=True)
    empty = ~torch.isfinite(lo)
    return lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)
