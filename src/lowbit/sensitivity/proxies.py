"""Cheap sensitivity proxies of one quantized weight, as pure functions on tensors.

``W``, ``Wq``: (out, in) original and dequantized weights.

Every figure of a sensitivity table is a sum over many elements, taken by
:func:`thread_invariant_sum`: torch splits a full reduction of more than 32,768 elements
across its threads and adds the partial sums in an order that depends on how many there are,
so ``tensor.sum()`` of a (576, 576) product differs in its last bits between one thread (a Ray
worker's CPU slot) and two (the driver on a 2-core machine), and a table measured in shards on
Ray would not equal the one measured in one process (issue 17).
"""

from __future__ import annotations

import math

import torch

ROW = 4096  # elements summed by one thread, in a fixed order (below torch's grain of 32,768)


def thread_invariant_sum(x: torch.Tensor) -> float:
    """Σ of every element of ``x`` in float64, the same bits at any torch thread count: the
    elements in rows of :data:`ROW`, each row reduced by one thread (torch splits a reduction
    over the last dimension across rows, never within a row below its grain), the row sums
    and the tail added by ``math.fsum`` (correctly rounded, so independent of order)."""
    flat = x.detach().double().flatten()
    whole = flat.numel() // ROW * ROW
    rows = flat[:whole].view(-1, ROW).sum(-1).tolist() if whole else []
    return math.fsum(rows + flat[whole:].tolist())


def hessian_error(W: torch.Tensor, Wq: torch.Tensor, h_diag: torch.Tensor) -> float:
    """Σ_j h_j · Σ_i (W_ij − Wq_ij)², with ``h_diag`` (in,) = E[x_j²] over calibration tokens:
    the expected squared output error per token when input columns are uncorrelated (the
    statistic of llama.cpp's importance matrix and the diagonal of GPTQ's Hessian)."""
    dW = (W.double() - Wq.double()).pow(2).sum(0)  # per column: split across columns only
    return thread_invariant_sum(dW * h_diag.double())


def fisher_error(W: torch.Tensor, Wq: torch.Tensor, fisher: torch.Tensor) -> float:
    """½ · Σ_ij F_ij (W_ij − Wq_ij)², with ``fisher`` (out, in) the diagonal empirical Fisher
    information of the per-token log-likelihood: the second-order estimate of the KL divergence
    the change causes."""
    return 0.5 * thread_invariant_sum(fisher.double() * (W.double() - Wq.double()).pow(2))
