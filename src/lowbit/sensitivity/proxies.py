"""Cheap sensitivity proxies of one quantized weight, as pure functions on tensors.

``W``, ``Wq``: (out, in) original and dequantized weights.
"""

from __future__ import annotations

import torch


def hessian_error(W: torch.Tensor, Wq: torch.Tensor, h_diag: torch.Tensor) -> float:
    """Σ_j h_j · Σ_i (W_ij − Wq_ij)², with ``h_diag`` (in,) = E[x_j²] over calibration tokens:
    the expected squared output error per token when input columns are uncorrelated (the
    statistic of llama.cpp's importance matrix and the diagonal of GPTQ's Hessian)."""
    dW = (W.double() - Wq.double()).pow(2).sum(0)
    return float((dW * h_diag.double()).sum())


def fisher_error(W: torch.Tensor, Wq: torch.Tensor, fisher: torch.Tensor) -> float:
    """½ · Σ_ij F_ij (W_ij − Wq_ij)², with ``fisher`` (out, in) the diagonal empirical Fisher
    information of the per-token log-likelihood: the second-order estimate of the KL divergence
    the change causes."""
    return float(0.5 * (fisher.double() * (W.double() - Wq.double()).pow(2)).sum())
