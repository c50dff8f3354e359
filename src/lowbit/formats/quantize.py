"""Round to nearest in any format: one function for every format value and clipping choice."""

from __future__ import annotations

import torch

from lowbit.formats.clipping import Clipping, MinMax, clipped_range
from lowbit.formats.granularity import Granularity
from lowbit.formats.scaling import check_finite
from lowbit.formats.tensor import QuantizedWeight, WeightFormat


def quantize_weight(
    W: torch.Tensor,
    fmt: WeightFormat,
    granularity: Granularity,
    clipping: Clipping | None = None,
    name: str = "weight",
) -> QuantizedWeight:
    """Quantize ``W`` (out, in) to the nearest values of ``fmt`` with per-group ranges chosen by
    ``clipping`` (min-max by default). ``name`` names the tensor in errors.

    Returns codes (out, in) and the format's parameters per group of ``granularity``.
    """
    if W.dim() != 2:
        raise ValueError(f"weight {name!r} must be 2-D (out, in), got shape {tuple(W.shape)}")
    fmt.check_granularity(granularity)
    check_finite(W, name)
    W = W.float()
    lo, hi = clipped_range(W, fmt, granularity, clipping or MinMax())
    return fmt.encode(W, lo, hi, granularity)
