"""Streaming per-input-channel statistics of a linear layer's inputs: mean |x| (AWQ) and
max |x| (SmoothQuant).

``ChannelStats.add_batch(X)`` takes inputs X (..., in); ``abs_mean()`` and ``abs_max`` are (in,)
fp32 over every token seen.
"""

from __future__ import annotations

import torch


class ChannelStats:
    """Σ |x| and max |x| per input channel over every token seen, in fp32."""

    def __init__(self, in_features: int) -> None:
        self.in_features = in_features
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64)
        self.abs_max = torch.zeros(in_features, dtype=torch.float32)
        self.count = 0

    def add_batch(self, X: torch.Tensor) -> None:
        A = X.detach().reshape(-1, X.shape[-1]).float().abs()
        if A.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features, got {A.shape[-1]}")
        self.count += A.shape[0]
        self.abs_sum += A.sum(0, dtype=torch.float64)
        self.abs_max = torch.maximum(self.abs_max, A.amax(0))

    def abs_mean(self) -> torch.Tensor:
        """Mean |x| per channel (in,) fp32."""
        if self.count == 0:
            raise ValueError("no inputs were accumulated")
        return (self.abs_sum / self.count).float()
