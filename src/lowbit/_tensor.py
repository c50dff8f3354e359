"""Small tensor checks shared by every layer."""

from __future__ import annotations

import torch


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite: its minimum and maximum are (NaN propagates
    through both, ±inf is one of them). One reduction and no temporary the size of ``t``
    (bench/tensor_ops.py times it against ``isfinite(t).all()``)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))
