"""Streaming second-moment statistics of a linear layer's inputs (the GPTQ Hessian).

``HessianAccumulator.add_batch(X)`` takes inputs X (..., in) and keeps Σ xᵀx over all tokens;
``hessian()`` returns the mean H = Σ xᵀx / n (in, in). Only the upper block triangle is
computed (the matrix is symmetric), which saves about a third of the arithmetic for wide inputs.
Each sequence's product XᵀX (per row of the leading dimension) is computed in fp32 (inputs of
any float dtype are upcast) and added to a running sum kept in fp64 on ``device`` (or, when
none is given, on the device of the first batch); ``hessian()`` divides in fp64 and rounds once
to fp32. Sums of the same sequences in any order or grouping therefore agree up to fp64
rounding, which the final fp32 rounding hides: one process adding chunk after chunk of windows
and torch.distributed ranks adding their partial sums (reduced in fp64) give the same fp32
Hessian from the same windows, however the windows are chunked.
"""

from __future__ import annotations

import torch

_BLOCK = 384  # column block for the upper-triangular product; plain GEMM below 2 blocks


class HessianAccumulator:
    """Σ xᵀx over every token seen: fp32 products per batch (per block of columns) summed in
    fp64."""

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self.device = None if device is None else torch.device(device)
        self._sum: torch.Tensor | None = None
        self.count = 0
        bounds = list(range(0, in_features, _BLOCK)) + [in_features]
        self._blocks = list(zip(bounds[:-1], bounds[1:], strict=True))

    @property
    def sum(self) -> torch.Tensor:
        """Σ xᵀx (in, in) fp64, upper block triangle only when blocked; zeros before any batch
        (on ``device``, or torch's default device when none was given)."""
        if self._sum is None:
            n = self.in_features
            self._sum = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        return self._sum

    def add_batch(self, X: torch.Tensor) -> None:
        """Add the inputs ``X`` (..., in): one fp32 product per sequence (each row of the
        leading dimension when ``X`` has three or more dimensions, else the whole batch), so
        the sum does not depend on how sequences are grouped into batches."""
        if X.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features, got {X.shape[-1]}")
        if self.device is None:
            self.device = X.device
        X = X.detach().to(self.device, torch.float32)
        rows = X.reshape(X.shape[0], -1, X.shape[-1]) if X.dim() >= 3 else X[None]
        for seq in rows:
            self._add(seq)

    def _add(self, X: torch.Tensor) -> None:
        S = self.sum
        self.count += X.shape[0]
        if len(self._blocks) < 2:
            S.add_(X.T @ X)
            return
        for i, (a0, a1) in enumerate(self._blocks):
            Xa = X[:, a0:a1].T
            for b0, b1 in self._blocks[i:]:
                S[a0:a1, b0:b1].add_(Xa @ X[:, b0:b1])

    def hessian(self) -> torch.Tensor:
        """The mean second moment (in, in), symmetric, fp32 on the accumulator's device (the
        fp64 mean rounded once): one new in² matrix, its lower block triangle mirrored from the
        upper one block by block (the same values as ``triu(H) + triu(H, 1).T``, without their
        temporaries)."""
        if self.count == 0:
            raise ValueError("no inputs were accumulated")
        H = (self.sum / self.count).to(torch.float32)
        if len(self._blocks) < 2:
            return H
        for i, (a0, a1) in enumerate(self._blocks):
            diag = H[a0:a1, a0:a1]
            diag.copy_(torch.triu(diag) + torch.triu(diag, diagonal=1).T)
            for b0, b1 in self._blocks[i + 1 :]:
                H[b0:b1, a0:a1] = H[a0:a1, b0:b1].T
        return H
