"""Streaming per-input-channel statistics of a linear layer's inputs: mean |x| (AWQ) and
max |x| (SmoothQuant).

``ChannelStats.add_batch(X)`` takes inputs X (..., in); ``abs_mean()`` and ``abs_max`` are (in,)
fp32 over every token seen. Each batch is upcast to fp32; Σ |x| is kept in float64 (many tokens
of similar size), max |x| in fp32, both on ``device`` or, when none is given, on the device of
the first batch.
"""

from __future__ import annotations

import torch


class ChannelStats:
    """Σ |x| and max |x| per input channel over every token seen."""

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self.device = None if device is None else torch.device(device)
        self._abs_sum: torch.Tensor | None = None
        self._abs_max: torch.Tensor | None = None
        self.count = 0

    @property
    def abs_sum(self) -> torch.Tensor:
        """Σ |x| per channel (in,) float64 (zeros before any batch)."""
        if self._abs_sum is None:
            self._abs_sum = self._zeros(torch.float64)
        return self._abs_sum

    @property
    def abs_max(self) -> torch.Tensor:
        """max |x| per channel (in,) fp32 (zeros before any batch)."""
        if self._abs_max is None:
            self._abs_max = self._zeros(torch.float32)
        return self._abs_max

    def add_batch(self, X: torch.Tensor) -> None:
        if X.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features, got {X.shape[-1]}")
        if self.device is None:
            self.device = X.device
        A = X.detach().reshape(-1, X.shape[-1]).to(self.device, torch.float32).abs()
        self.count += A.shape[0]
        self.abs_sum.add_(A.sum(0, dtype=torch.float64))
        self._abs_max = torch.maximum(self.abs_max, A.amax(0))

    def abs_mean(self) -> torch.Tensor:
        """Mean |x| per channel (in,) fp32."""
        if self.count == 0:
            raise ValueError("no inputs were accumulated")
        return (self.abs_sum / self.count).float()

    def _zeros(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(self.in_features, dtype=dtype, device=self.device)
