"""Granularity of quantization parameters: one scale per tensor, per output channel, or per group.

A group is a run of ``size`` consecutive input columns of one output row. ``size`` need not divide
the input dimension: the last group of each row is then shorter (SmolLM2's 576-wide inputs with
groups of 128 give 4 full groups and one of 64). Group membership is a column → group index
vector ``g_idx`` (in,), so it also works on permuted column orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole weight."""

    def groups(self, in_features: int) -> int:
        return 1

    def describe(self) -> str:
        return "per-tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale per output channel (row)."""

    def groups(self, in_features: int) -> int:
        return 1

    def describe(self) -> str:
        return "per-channel"


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive input columns of a row (the last may be shorter)."""

    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size <= 0:
            raise ConfigError(
                f"group size must be a positive integer, got {self.size!r}; "
                "use e.g. 32, 64 or 128, or per-channel granularity"
            )

    def groups(self, in_features: int) -> int:
        return math.ceil(in_features / self.size)

    def describe(self) -> str:
        return f"group {self.size}"


Granularity = PerTensor | PerChannel | PerGroup


def group_index(
    in_features: int, granularity: Granularity, device: torch.device | None = None
) -> torch.Tensor:
    """Column → group index (in,) int64 for columns in storage order, on ``device`` (None: torch's
    default device; pass the device of the weight it indexes)."""
    if isinstance(granularity, PerGroup):
        return torch.arange(in_features, device=device) // granularity.size
    return torch.zeros(in_features, dtype=torch.long, device=device)


def group_reduce(
    W: torch.Tensor, g_idx: torch.Tensor, n_groups: int, op: str, per_tensor: bool = False
) -> torch.Tensor:
    """Reduce ``W`` (out, in) over the columns of each group with ``op`` ('amax' or 'amin').

    Returns (out, n_groups); with ``per_tensor`` the result is reduced over rows too, shape (1, 1).
    """
    out = torch.empty(W.shape[0], n_groups, dtype=W.dtype, device=W.device)
    index = g_idx.to(W.device).expand(W.shape[0], -1)
    out = out.scatter_reduce(1, index, W, op, include_self=False)
    if per_tensor:
        out = (out.amax() if op == "amax" else out.amin()).reshape(1, 1)
    return out
