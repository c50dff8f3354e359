"""SmoothQuant (Xiao et al., 2022) on tensors: per-channel smoothing scales.

Dividing a linear's input channel j by s_j and multiplying its weight column j by s_j leaves
the product unchanged, and moves quantization difficulty from activations (outlier channels)
to weights. The model plumbing (statistics, folding 1/s into the previous norm) is in
``lowbit.models.smoothing``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weight_absmax(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """max |W_j| per input channel over every weight (out_k, in) of a pair: (in,) fp32."""
    return torch.stack([W.detach().float().abs().amax(0) for W in weights]).amax(0)


def smoothquant_scales(
    act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1-α) (in,) for the per-channel absmax of the activations
    and of the weights (in,). As SmoothQuant's reference code: weight maxima are clamped at
    1e-5 and so are the scales (a channel that is always zero gets s = 1e-5)."""
    w = weight_absmax.float().clamp(min=1e-5)
    return (act_absmax.float().pow(alpha) / w.pow(1.0 - alpha)).clamp(min=1e-5)
