"""Round to nearest (RTN): the baseline every other algorithm must beat."""

from __future__ import annotations

import torch

from lowbit.formats import Clipping, Granularity, QuantizedWeight, WeightFormat, quantize_weight


def rtn_quantize(
    W: torch.Tensor,
    fmt: WeightFormat,
    granularity: Granularity,
    clipping: Clipping | None = None,
    name: str = "weight",
) -> QuantizedWeight:
    """Quantize ``W`` (out, in) to the nearest point of ``fmt``'s grid over each group's range
    (min-max unless ``clipping`` says otherwise); any format (INT, FP, NF4, LUT, MX, NVFP4).

    Returns codes (out, in) and the format's parameters (out, n_groups) for ``granularity``;
    ``name`` names the tensor in errors (NaN or infinite weights, a granularity the format
    cannot use).
    """
    return quantize_weight(W, fmt, granularity, clipping, name)
