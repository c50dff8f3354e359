"""Round to nearest (RTN): the baseline every other algorithm must beat."""

from __future__ import annotations

import torch

from lowbit.formats import Granularity, IntFormat, PerTensor, QuantizedWeight, choose_qparams
from lowbit.formats.granularity import group_index
from lowbit.formats.integer import quantize_to_codes


def rtn_quantize(W: torch.Tensor, fmt: IntFormat, granularity: Granularity) -> QuantizedWeight:
    """Quantize ``W`` (out, in) to the nearest point of its min-max grid.

    Returns codes (out, in) and scales/zero points (out, n_groups) for ``granularity``.
    """
    W = W.float()
    in_f = W.shape[1]
    g_idx = group_index(in_f, granularity)
    n_groups = granularity.groups(in_f)
    scale, zero = choose_qparams(W, fmt, g_idx, n_groups, isinstance(granularity, PerTensor))
    zero_cols = None if zero is None else zero[:, g_idx]
    codes = quantize_to_codes(W, scale[:, g_idx], zero_cols, fmt)
    return QuantizedWeight(
        codes=codes.to(fmt.code_dtype),
        scale=scale.to(fmt.torch_scale_dtype),
        zero=None if zero is None else zero.to(fmt.code_dtype),
        fmt=fmt,
        granularity=granularity,
    )
